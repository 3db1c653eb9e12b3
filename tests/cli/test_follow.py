"""`jobcast follow` and `jobcast enqueue --follow`: values as they arrive, resumed by seq
after a cut connection, exit codes, JSON output and the progress bar on a terminal."""

from __future__ import annotations

import io
import json
import math
import os
import pty
import select
import ssl
import subprocess
import time
import uuid

import pytest

import httpx
from rq import Queue

from jobcast.cli.display import Display, Rate
from jobcast.cli.follow import Follower
from jobcast.cli.sse import parse_sse, sse_lines
from jobcast.launcher.redisserver import free_port
from tests.support.jobs import create_job
from tests.support.services import JOBCAST, ROOT, service_env
from tests.support.wait import wait_for
from tests.support.cli import Run, sqrt_lines


def test_follow_resumes_after_cut_connections_and_prints_every_value_once_in_order(
        http, web, workers, redis_server, proxy):
    # 9 s of values: each reconnection waits up to twice the server's retry (0.5-2.5 s)
    n = 90
    job_id = create_job(http, "sqrt", n=n, interval=0.1)
    run = Run(redis_server.url, "follow", job_id, "--url", proxy.url)
    wait_for(lambda: len(run.lines) >= 5, 30, what="the first values")
    shown, connections = len(run.lines), proxy.accepted
    assert proxy.cut() >= 1
    # A new connection, and values flowing through it.
    wait_for(lambda: proxy.accepted > connections and len(run.lines) >= shown + 3, 30,
             what="values after the first cut")
    assert len(run.lines) < n, "the job ended before the second cut: make it longer"
    # Cut again and refuse new connections for a moment: the client keeps trying.
    proxy.refusing = True
    assert proxy.cut() >= 1
    wait_for(lambda: proxy.refused >= 1, 15, what="a refused reconnection")
    proxy.refusing = False
    assert run.wait(60) == 0, run.err
    assert run.lines == sqrt_lines(n)
    assert proxy.accepted >= 3 and run.err.count("reconnecting") >= 2, run.err
    assert "reconnecting" in run.err and run.err.rstrip().endswith("Done")


def test_enqueue_follow_prints_the_values_then_exits_0(web, workers, redis_server):
    run = Run(redis_server.url, "enqueue", "sqrt", "--n", "6", "--interval", "0.01", "--follow",
              JOBCAST_URL=web.url)
    assert run.wait(60) == 0, run.err
    assert run.lines == sqrt_lines(6)
    job_id, page = run.err.split()[:2]
    assert page == f"{web.url}/jobs/{job_id}"


def test_follow_of_a_failed_job_exits_1_with_the_reason(http, web, workers, redis_server):
    job_id = create_job(http, "boom", after=2)
    run = Run(redis_server.url, "follow", job_id, "--url", web.url)
    assert run.wait(60) == 1
    assert run.lines == ["0", "1"]
    assert run.err.rstrip().endswith("Failed: RuntimeError: boom after 2 values")


def test_follow_into_a_pipe_its_reader_closed_stops_quietly_with_sigpipes_status(
        http, web, redis_server, workers):
    """A review's finding: `jobcast follow ID | head` ended in a traceback and exit 1, the
    status that says the job failed."""
    job_id = create_job(http, "sqrt", n=100, interval=0.05)
    proc = subprocess.Popen([*JOBCAST, "follow", job_id, "--url", web.url], cwd=ROOT,
                            env=service_env(redis_server.url), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "0.0\n"
    proc.stdout.close()  # as `head -1` does once it has its line
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141 and "Traceback" not in err, err


def test_follow_json_output_is_every_entry_once_in_seq_order(http, web, workers, redis_server):
    job_id = create_job(http, "sqrt", n=5, interval=0.01)
    run = Run(redis_server.url, "follow", job_id, "--output", "json", JOBCAST_URL=web.url)
    assert run.wait(60) == 0, run.err
    entries = [json.loads(line) for line in run.lines]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert [e["kind"] for e in entries] == ["queued", "started"] + ["value"] * 5 + ["finished"]
    assert [e["j"] for e in entries if e["kind"] == "value"] == [math.sqrt(i) for i in range(5)]
    assert run.err == ""


def test_enqueue_follow_json_starts_with_the_job_id_and_urls(web, workers, redis_server):
    run = Run(redis_server.url, "enqueue", "sqrt", "--n", "2", "--interval", "0", "--follow",
              "--output", "json", "--url", web.url)
    assert run.wait(60) == 0, run.err
    head, *entries = [json.loads(line) for line in run.lines]
    assert set(head) == {"id", "urls"} and head["urls"]["page"] == f"{web.url}/jobs/{head['id']}"
    assert entries[-1]["kind"] == "finished"


@pytest.mark.parametrize("job_id, url, message", [
    ("not:a:job", None, "letters, digits"),
    ("0" * 32, None, "no job"),
    ("0" * 32, "localhost:8000", "--url must start with http"),
])
def test_follow_bad_input_exits_2(web, redis_server, job_id, url, message):
    run = Run(redis_server.url, "follow", job_id, "--url", url or web.url)
    assert run.wait(30) == 2
    assert message in run.err and run.lines == []


@pytest.mark.slow  # runs `jobcast` in a process of its own
def test_enqueue_follow_with_bad_params_exits_2_before_following(redis_server):
    run = Run(redis_server.url, "enqueue", "sqrt", "--n", "-1", "--follow")
    assert run.wait(30) == 2 and "params.n" in run.err


@pytest.mark.slow  # runs `jobcast` in a process of its own
def test_follow_gives_up_with_exit_3_when_the_server_stays_unreachable(redis_server):
    start = time.monotonic()
    run = Run(redis_server.url, "follow", "a" * 32, "--url", f"http://127.0.0.1:{free_port()}",
              "--reconnect-for", "1")
    assert run.wait(30) == 3
    assert "no answer" in run.err and time.monotonic() - start < 20


def test_follow_in_a_terminal_shows_a_progress_bar_with_rate_and_eta(http, web, workers, redis_server):
    job_id = create_job(http, "sqrt", n=30, interval=0.05)
    master, slave = pty.openpty()
    env = service_env(redis_server.url, TERM="xterm-256color", COLUMNS="120", LINES="30")
    proc = subprocess.Popen([*JOBCAST, "follow", job_id, "--url", web.url], cwd=ROOT, env=env,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:      # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(10) == 0
    text = screen.decode(errors="replace")
    assert "values/s" in text and "ETA" in text and "30/30" in text
    assert all(v in text for v in sqrt_lines(30))


def test_follow_prints_values_on_stdout_and_the_jobs_output_on_stderr_unless_told_not_to(
        http, web, workers, redis_server):
    job_id = create_job(http, "chatty")
    run = Run(redis_server.url, "follow", job_id, "--url", web.url)
    assert run.wait(60) == 0, run.err
    assert run.lines == ["1", "2"]
    assert run.err.splitlines() == ["out 1", "err 1", "WARNING user: warn 1", "bye", "Done"]
    quiet = Run(redis_server.url, "follow", job_id, "--url", web.url, "--no-output")
    assert quiet.wait(60) == 0 and quiet.lines == ["1", "2"] and quiet.err.splitlines() == ["Done"]


# ---- pure parts -------------------------------------------------------------------------------

def test_output_lines_lose_their_escape_sequences_and_are_dimmed_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    line = {"kind": "log", "stream": "stdout", "text": "\x1b[31mred\x1b[0m \x1b]0;pwned\x07ok\r", "attempt": 1}
    err = io.StringIO()
    display = Display("plain", False, io.StringIO(), err)
    display.printed(line)
    display.printed(dict(line, attempt=2, stream="logging", level="ERROR", logger="app", text="bad"))
    assert err.getvalue() == "red ok\n(attempt 2)\nERROR app: bad\n"
    tty = Tty()
    Display("plain", False, io.StringIO(), tty).printed(line)
    assert tty.getvalue() == "\x1b[2mred ok\x1b[22m\n"

def test_a_logging_records_own_lines_print_as_indented_lines_not_as_replacement_characters():
    """A review's finding: ``logger.exception`` printed its traceback on one line, each newline a
    U+FFFD. Its lines stay lines, indented, so none passes for a line or a note of its own."""
    err = io.StringIO()
    Display("plain", False, io.StringIO(), err).printed({
        "kind": "log", "stream": "logging", "level": "ERROR", "logger": "app", "attempt": 1,
        "text": "failed\nTraceback (most recent call last):\n  File \"x.py\"\x07\nValueError: no"})
    assert err.getvalue().splitlines() == [
        "ERROR app: failed", "    Traceback (most recent call last):", "      File \"x.py\"",
        "    ValueError: no"]


def test_sse_parser_reads_ids_events_and_data_and_skips_heartbeats():
    lines = ["retry: 2000", "", ": heartbeat", "", "id: 7", "event: value",
             'data: {"seq":7}', "", "id: 8", "event: finished", "data: a", "data: b", ""]
    assert list(parse_sse(iter(lines))) == [("7", "value", '{"seq":7}'), ("8", "finished", "a\nb")]


def test_sse_parser_hands_over_the_servers_retry_and_ignores_one_not_all_digits():
    said = []
    lines = ["retry: 2000", "", "retry: 15x", "", "retry: -1", "", "id: 7", "event: value",
             'data: {"seq":7}', "", "retry:900", ""]
    assert list(parse_sse(iter(lines), said.append)) == [("7", "value", '{"seq":7}')]
    assert said == [2000, 900]


def test_rate_uses_the_jobs_own_timestamps():
    rate = Rate(window=10)
    for k in range(21):
        rate.add(100.0 + k * 0.5, k)       # two values a second, whenever they were received
    assert rate.per_second() == pytest.approx(2.0)


def test_plain_output_to_a_pipe_has_no_progress_bar():
    out, err = io.StringIO(), io.StringIO()
    display = Display("plain", None, out, err)
    display.start("sqrt", 10, 0)
    display.value("1.0")
    display.progress(1, 1.0)
    display.stop("done")
    assert display.want_bar is False and out.getvalue() == "1.0\n" and err.getvalue() == ""


def replayed(entries: list[dict]) -> httpx.Client:
    """A client of a fake server whose job logged ``entries`` (its status says it failed)."""

    def answer(request: httpx.Request) -> httpx.Response:
        """The job's events, or its status."""
        if request.url.path.endswith("/events"):
            body = "".join(f"id: {e['seq']}\nevent: {e['kind']}\ndata: {json.dumps(e)}\n\n"
                           for e in entries)
            return httpx.Response(200, text=body, headers={"Content-Type": "text/event-stream"})
        return httpx.Response(200, json={"task": "sqrt\x1b[8m", "progress": {"i": 0, "n": 1},
                                         "status": "failed"})

    return httpx.Client(transport=httpx.MockTransport(answer))


def test_values_and_reasons_printed_lose_their_control_characters_and_json_stays_exact():
    """Finding 11 of issue 23: `jobcast follow` printed escape sequences from values straight
    to the terminal (a value could retitle it, clear it, or rewrite lines already shown)."""
    evil = "\x1b]0;owned\x07\x1b[2Jok\u202e\r\n\tend"
    entries = [{"seq": 1, "kind": "queued", "ts": 1.0},
               {"seq": 2, "kind": "value", "ts": 2.0, "i": 0, "v": evil, "j": evil},
               {"seq": 3, "kind": "failed", "ts": 3.0, "reason": "Boom: \x1b[31mred"}]
    out, err = io.StringIO(), io.StringIO()
    follower = Follower("a" * 32, "http://jobcast.test", Display("plain", False, out, err),
                        client=replayed(entries))
    assert follower.run() == 1
    assert out.getvalue() == "\ufffd]0;owned\ufffd\ufffd[2Jok\ufffd\ufffd\ufffd\tend\n"
    assert err.getvalue() == "Failed: Boom: \ufffd[31mred\n"
    out = io.StringIO()
    follower = Follower("a" * 32, "http://jobcast.test", Display("json", False, out, io.StringIO()),
                        client=replayed(entries))
    assert follower.run() == 1
    assert [json.loads(line) for line in out.getvalue().splitlines()] == entries


def scripted_server(connections: list[str]):
    """An httpx transport playing a job's events: each stream request gets the next body (a
    body that does not end with a terminal event is a cut connection); the requests are kept."""
    import httpx

    requests = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            requests.append(request)
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=connections[len(requests) - 1].encode())
        return httpx.Response(200, json={"task": "sqrt", "status": "running",
                                         "progress": {"i": 0, "n": None}})

    return httpx.MockTransport(handle), requests


def entry(seq: int, epoch: str, kind: str = "value", i: int | None = None) -> str:
    """One entry event as the server sends it."""
    body = {"seq": seq, "ep": epoch, "kind": kind, "ts": 1.0}
    if i is not None:
        body.update(i=i, v=f"v{i}", j=i)
    return f"id: {seq}:{epoch}\nevent: {kind}\ndata: {json.dumps(body)}\n\n"


def test_follow_resumes_with_the_epoch_and_says_when_a_failover_replaced_what_it_printed(
        monkeypatch):
    import httpx

    from jobcast.cli.follow import EXIT_REPLACED, Follower

    first = entry(1, "E1", "queued") + "".join(entry(3 + i, "E1", i=i) for i in range(4))
    reset = {"epoch": "E2", "after": 4, "values": 2, "reason": "lost",
             "was": {"seq": 6, "epoch": "E1"}}
    second = (f"id: 4:E2\nevent: reset\ndata: {json.dumps(reset)}\n\n"
              + "".join(entry(5 + k, "E2", i=2 + k) for k in range(3))
              + entry(8, "E2", "finished"))
    transport, requests = scripted_server([first, second])
    out, err = io.StringIO(), io.StringIO()
    follower = Follower("a" * 32, "http://jobcast", Display("plain", False, out, err),
                        client=httpx.Client(transport=transport))
    monkeypatch.setattr("jobcast.cli.sse.time.sleep", lambda seconds: None)
    assert follower.run() == EXIT_REPLACED
    assert requests[1].headers["Last-Event-ID"] == "6:E1"
    assert out.getvalue().split() == ["v0", "v1", "v2", "v3", "v2", "v3", "v4"]
    assert "log was reset after a Redis failover (lost): values from #2 on were replaced" in \
        err.getvalue()
    assert (follower.last_seq, follower.stream.epoch) == (8, "E2")


def test_the_progress_bar_shows_a_task_name_as_text_not_as_rich_markup():
    """A review's finding: the bar's task name went through rich's markup, so an adopted RQ
    job's label could add a terminal hyperlink ("[link=…]"), or stop the follow with a
    MarkupError ("[/x]") before it printed anything."""
    out = io.StringIO()
    out.isatty = lambda: True
    display = Display("plain", True, out, io.StringIO())
    display.start("[/x] [link=https://evil.test]job[/link]", 10, 0)
    display.stop()
    shown = out.getvalue()
    assert "\x1b]8;" not in shown                       # no OSC 8 hyperlink
    assert "[/x] [link=https://evil.test]job[/link]" in shown


def test_an_error_message_from_the_server_loses_its_control_characters():
    """A review's finding: the one message that skipped ``printable()`` was the server's own
    (a 4xx's JSON ``message``), written to stderr as it came."""
    from jobcast.cli.follow import run_reporting
    from jobcast.cli.sse import BadInput

    def run():
        raise BadInput("refused: \x1b]0;owned\x07")

    err = io.StringIO()
    assert run_reporting(run, err, lambda: "") == 2
    assert err.getvalue() == "jobcast: refused: \ufffd]0;owned\ufffd\n"


def test_follow_in_json_prints_a_trimmed_log_as_a_line_and_says_so_on_stderr(monkeypatch):
    """As a reset, a trimmed log is a line of its own in ``--output json`` (a script reading
    the lines sees the gap), and a note on stderr."""
    import httpx

    from jobcast.cli.follow import Follower

    trimmed = {"after": 0, "first_seq": 10, "lost": 9, "first_value": 7}
    body = (f"event: trimmed\ndata: {json.dumps(trimmed)}\n\n" + entry(10, "E1", i=7)
            + entry(11, "E1", "finished"))
    transport, _ = scripted_server([body])
    out, err = io.StringIO(), io.StringIO()
    follower = Follower("a" * 32, "http://jobcast", Display("json", False, out, err),
                        client=httpx.Client(transport=transport))
    monkeypatch.setattr("jobcast.cli.sse.time.sleep", lambda seconds: None)
    assert follower.run() == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"kind": "trimmed", **trimmed}
    assert [line.get("seq") for line in lines[1:]] == [10, 11]
    assert "7 earlier values are no longer kept" in err.getvalue()


@pytest.mark.parametrize("status", [401, 403])
def test_follow_told_it_needs_a_token_or_another_says_so_and_exits_2_not_3(status):
    """A review's finding: `jobcast follow` took a 401 for an unreachable server (exit 3, which
    a script would retry for ever), where following several jobs said so and exited 2."""
    import httpx

    from jobcast.cli.follow import EXIT_BAD_INPUT, Follower, run_reporting

    def answer(request):
        """A private server, and no good token."""
        return httpx.Response(status, json={"error": "unauthorized", "message": "a token is needed"})

    out, err = io.StringIO(), io.StringIO()
    follower = Follower("a" * 32, "http://jobcast.test", Display("plain", False, out, err),
                        client=httpx.Client(transport=httpx.MockTransport(answer)), reconnect_for=1)
    assert run_reporting(follower.run, err, lambda: "interrupted") == EXIT_BAD_INPUT
    assert err.getvalue() == "jobcast: a token is needed\n"



def test_follow_waits_the_servers_retry_with_jitter_before_it_reconnects(monkeypatch):
    """A review's finding: a single job's follower came back 0.25 s after a drop whatever the
    server's ``retry:`` said, and every follower of a restarted server at the same instant."""
    import httpx

    from jobcast.cli.follow import EXIT_FINISHED, Follower

    first = "retry: 1500\n\n" + entry(1, "E1", "queued") + entry(2, "E1", i=0)
    second = "retry: 700\n\n" + entry(3, "E1", i=1) + entry(4, "E1", "finished")
    slept = []
    monkeypatch.setattr("jobcast.cli.sse.time.sleep", slept.append)
    waits = []
    for _ in range(8):
        transport, requests = scripted_server([first, second])
        follower = Follower("a" * 32, "http://jobcast",
                            Display("plain", False, io.StringIO(), io.StringIO()),
                            client=httpx.Client(transport=transport))
        slept.clear()
        assert follower.run() == EXIT_FINISHED
        assert requests[-1].headers["Last-Event-ID"] == "2:E1"
        assert len(slept) == 1, slept            # one drop, one wait
        waits.append(slept[0])
    assert all(1.5 <= w <= 3.0 for w in waits), waits   # the server's 1.5 s, plus up to 1.5
    assert len(set(waits)) > 1, "the same wait for every follower: no jitter"


def html_page(request):
    """Not Jobcast: a proxy's login page, 200 to everything."""
    return httpx.Response(200, text="<html>log in</html>", headers={"Content-Type": "text/html"})


@pytest.mark.parametrize("jobs", [1, 2])
def test_follow_of_a_url_that_answers_200_but_no_event_stream_says_so_and_exits_2(jobs):
    """A review's finding: a 200 that was not an event stream (a login page) reset the backoff
    on every try, so the follower retried for ever; with one job, the status's HTML was a
    JSONDecodeError traceback (exit 1: "the job failed")."""
    from jobcast.cli.follow import EXIT_BAD_INPUT, Follower, run_reporting
    from jobcast.cli.follow_many import MultiFollower

    err = io.StringIO()
    client = httpx.Client(transport=httpx.MockTransport(html_page))
    display = Display("plain", False, io.StringIO(), err)
    ids = [c * 32 for c in "ab"[:jobs]]
    follower = (Follower(ids[0], "http://jobcast.test", display, client=client, reconnect_for=2)
                if jobs == 1 else
                MultiFollower(ids, "http://jobcast.test", display, client=client, reconnect_for=2))
    assert run_reporting(follower.run, err, lambda: "interrupted") == EXIT_BAD_INPUT
    assert "is --url a Jobcast server?" in err.getvalue()


def test_following_several_jobs_at_a_url_that_answers_404_says_so_at_once_and_exits_2():
    """A review's finding: a wrong prefix (404) was taken for an outage: `--reconnect-for`
    seconds of retries, then exit 3, where one job exits 2 at once."""
    from jobcast.cli.follow import EXIT_BAD_INPUT, run_reporting
    from jobcast.cli.follow_many import MultiFollower

    err = io.StringIO()
    asked = []

    def not_here(request):
        """No Jobcast at this prefix."""
        asked.append(request.url.path)
        return httpx.Response(404)

    client = httpx.Client(transport=httpx.MockTransport(not_here))
    follower = MultiFollower(["a" * 32, "b" * 32], "http://jobcast.test/wrong",
                            Display("plain", False, io.StringIO(), err), client=client,
                            reconnect_for=60)
    assert run_reporting(follower.run, err, lambda: "interrupted") == EXIT_BAD_INPUT
    assert "answered 404: is --url a Jobcast server?" in err.getvalue()
    assert asked == ["/wrong/events"]  # no retry: nothing mends a 404


def test_following_one_job_at_a_url_that_answers_a_bare_404_asks_whether_it_is_jobcast():
    """A CLI user's review: `follow ID --url` at a server that is not Jobcast said there was
    no job with that id (one job; several were told the URL was wrong)."""
    from jobcast.cli.follow import EXIT_BAD_INPUT, Follower, run_reporting

    err = io.StringIO()
    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(404)))
    follower = Follower("a" * 32, "http://jobcast.test/wrong",
                        Display("plain", False, io.StringIO(), err), client=client,
                        reconnect_for=60)
    assert run_reporting(follower.run, err, lambda: "interrupted") == EXIT_BAD_INPUT
    assert "is --url a Jobcast server?" in err.getvalue()


@pytest.mark.parametrize("url, message", [
    ("http://[::1", "--url is not a URL"),
    ("http://", "--url names no host"),
    ("http://127.0.0.1:99999", "--url's port must be 1 to 65535"),
])
def test_a_malformed_url_is_bad_input_not_a_traceback_or_an_outage(url, message):
    from jobcast.cli.follow import bad_input

    assert message in bad_input(["a" * 32], url, None)


@pytest.mark.slow  # runs `jobcast` in a process of its own
@pytest.mark.parametrize("args", [["--tail", "-1"], ["--url", "ftp://x"],
                                  ["--reconnect-for", "nan"]])
def test_enqueue_follow_with_bad_follow_options_queues_nothing(redis_server, redis, args):
    """A review's finding: these were checked once the job was queued: exit 2, and a stray
    job. (`nan` would never give up.)"""
    # A queue of the test's own, counted: the job index is capped (1,000 jobs), so its size
    # would not change once full, stray job or not.
    queue = f"bad-follow-{uuid.uuid4().hex[:8]}"
    run = Run(redis_server.url, "enqueue", "sqrt", "--n", "1", "--follow", *args,
              JOBCAST_QUEUE=queue)
    assert run.wait(30) == 2, run.err
    assert Queue(queue, connection=redis).count == 0


def test_an_event_stream_s_lines_end_at_cr_lf_or_crlf_only_however_it_is_cut():
    """A review's finding: httpx's ``iter_lines`` (``str.splitlines``) also ends a line at
    U+2028, U+2029 and U+0085, which a value's text may hold: its ``data:`` line, cut there, no
    longer parsed as JSON, and every reconnect met the same entry."""
    text = 'id: 3\r\ndata: {"v":"a\u2028b\u0085c"}\r\n\r\nid: 4\rdata: x\r\rid: 5\ndata: y\n\n'
    want = ["id: 3", 'data: {"v":"a\u2028b\u0085c"}', "", "id: 4", "data: x", "", "id: 5",
            "data: y", ""]
    for cut in range(len(text) + 1):  # (a CRLF split between two reads among them)
        assert list(sse_lines([text[:cut], text[cut:]])) == want, cut
    assert list(sse_lines(["data: last\r"])) == ["data: last"]
    events = list(parse_sse(sse_lines([text])))
    assert [e.data for e in events] == ['{"v":"a\u2028b\u0085c"}', "x", "y"]


def test_output_lines_lose_bidi_overrides_and_line_separators():
    """A review's finding: values were cleaned of them, the job's printed lines were not (a
    line could reorder what the terminal shows after it)."""
    err = io.StringIO()
    Display("plain", False, io.StringIO(), err).printed(
        {"kind": "log", "stream": "stdout", "text": "ok \u202egnp.exe\u2028fake", "attempt": 1})
    assert err.getvalue() == "ok \ufffdgnp.exe\ufffdfake\n"


def test_a_follower_waiting_for_a_server_down_from_the_start_says_so():
    """A review's finding: a mistyped port looked like a hang for two minutes."""
    from jobcast.cli.follow import Follower, run_reporting

    def down(request):
        raise httpx.ConnectError("refused", request=request)

    err = io.StringIO()
    follower = Follower("a" * 32, "http://127.0.0.1:9", Display("plain", False, io.StringIO(), err),
                        client=httpx.Client(transport=httpx.MockTransport(down)), reconnect_for=0.2)
    run_reporting(follower.run, err, lambda: "interrupted")
    assert err.getvalue().startswith("waiting for http://127.0.0.1:9…\n")


def test_a_password_in_the_url_is_never_printed():
    """A review's finding: ``--url https://user:pass@host`` (basic auth, which httpx takes
    from the URL) was printed whole by the notes and errors of an outage."""
    from jobcast.cli.follow import Follower, run_reporting
    from jobcast.cli.follow_many import MultiFollower

    def down(request):
        raise httpx.ConnectError("refused", request=request)

    url = "http://ops:s3cret@127.0.0.1:9"
    for make in (lambda d, c: Follower("a" * 32, url, d, client=c, reconnect_for=0.2),
                 lambda d, c: MultiFollower(["a" * 32, "b" * 32], url, d, client=c,
                                            reconnect_for=0.2)):
        err = io.StringIO()
        follower = make(Display("plain", False, io.StringIO(), err),
                        httpx.Client(transport=httpx.MockTransport(down)))
        assert run_reporting(follower.run, err, lambda: "interrupted") == 3
        assert "s3cret" not in err.getvalue() and "ops:***@127.0.0.1:9" in err.getvalue()


def test_following_a_queued_job_says_it_waits_for_a_worker():
    """A newcomer's finding: `jobcast follow` of a queued job printed nothing until a worker
    took it, minutes on a busy queue, with no sign of why."""
    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        """A queued job's status, then its events once it has run."""
        if request.url.path.endswith("/events"):
            body = entry(1, "E1", "queued") + entry(2, "E1", i=0) + entry(3, "E1", "finished")
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=body.encode())
        return httpx.Response(200, json={"task": "sqrt", "status": "queued",
                                         "progress": {"i": 0, "n": 1}})

    out, err = io.StringIO(), io.StringIO()
    follower = Follower("a" * 32, "http://jobcast.test", Display("plain", False, out, err),
                        client=httpx.Client(transport=httpx.MockTransport(answer)))
    assert follower.run() == 0
    assert err.getvalue().splitlines() == ["queued: waiting for a worker", "Done"]
    assert out.getvalue() == "v0\n"


def test_a_tail_cut_off_before_any_entry_resumes_at_its_position_in_its_epoch(monkeypatch):
    """A second reading's finding: a `follow --tail` cut off right after the tail event resumed
    with its seq only; after a failover in that window the server took it for the current
    epoch, and the values between were skipped in silence. The tail event's id names both."""
    import httpx

    from jobcast.cli.follow import Follower

    tail = {"tail": 0, "skipped": 4, "after": 6}
    first = f"id: 6:E1\nevent: tail\ndata: {json.dumps(tail)}\n\n"
    second = entry(7, "E1", i=4) + entry(8, "E1", "finished")
    transport, requests = scripted_server([first, second])
    out = io.StringIO()
    follower = Follower("a" * 32, "http://jobcast", Display("plain", False, out, io.StringIO()),
                        client=httpx.Client(transport=transport), tail=0)
    monkeypatch.setattr("jobcast.cli.sse.time.sleep", lambda seconds: None)
    assert follower.run() == 0
    assert requests[1].headers["Last-Event-ID"] == "6:E1"
    assert out.getvalue() == "v4\n"


def answering(status: int, **body) -> httpx.Client:
    """A client whose server answers every request with ``status`` and ``body`` (JSON when
    given as ``json=``, else text)."""
    def handler(request):
        """Answer as the server would, whatever was asked."""
        return httpx.Response(status, **body)
    return httpx.Client(transport=httpx.MockTransport(handler))


def failing(exc: Exception) -> httpx.Client:
    """A client whose every request raises ``exc``."""
    def handler(request):
        """Fail as the network would."""
        raise exc
    return httpx.Client(transport=httpx.MockTransport(handler))


def cert_error() -> httpx.ConnectError:
    """What httpx raises for a certificate it cannot verify."""
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed")
        except ssl.SSLError as inner:
            raise httpx.ConnectError(str(inner)) from inner
    except httpx.ConnectError as exc:
        return exc


@pytest.mark.parametrize("client, token, said", [
    (lambda: answering(404, json={"error": "not_found", "message": "no such job"}), "", None),
    (lambda: answering(503, text="busy"), "", None),
    (lambda: answering(429, json={"error": "too_many"}), "", None),
    (lambda: failing(httpx.ConnectError("refused")), "", None),
    (lambda: failing(httpx.ReadTimeout("slow")), "", None),
    (lambda: answering(401, json={"error": "unauthorized"}), "", "the server needs a token"),
    (lambda: answering(401, text="log in"), "tok", "though JOBCAST_TOKEN was sent"),
    (lambda: answering(403, json={"error": "forbidden"}), "tok", "refused the token"),
    (lambda: answering(400, json={"error": "bad_request", "message": "Host 'x' is not served"}),
     "", "Host 'x' is not served"),
    (lambda: answering(404, text="<html>not found</html>"), "", "did not answer as a Jobcast"),
    (lambda: answering(200, text="<html>log in</html>"), "", "did not answer as a Jobcast"),
    (lambda: answering(200, json=[1, 2]), "", "did not answer as a Jobcast"),
    (lambda: failing(cert_error()), "", "cannot verify the certificate"),
])
def test_a_follow_that_any_job_would_be_refused_is_told_before_its_job_is_queued(client, token,
                                                                                 said):
    """`enqueue --follow` asks first (a review's findings): a refusal that no job would
    escape is said, and the job is not queued; a missing job (the answer expected) or a
    server that cannot be asked now (a follow waits for it) lets it go on."""
    from jobcast.cli.follow import read_refused

    problem = read_refused("https://jobcast.test", token, client=client())
    assert problem is None if said is None else said in problem, problem


REDIS_DOWN = {"error": "service_unavailable", "message": "Redis is unreachable; retry shortly"}
"""What the web answers while its Redis is down (web/errors.py)."""


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_server_whose_redis_is_down_is_quoted_not_blamed_and_the_deadline_is_kept(jobs):
    """A CLI user's review: with the web up and its Redis down (503), `jobcast follow` said
    "status: no answer from http://… for 3 s", blaming the web server; and `--reconnect-for 2`
    gave up after 4.5 s (the last jittered wait ran past the deadline)."""
    from jobcast.cli.follow import EXIT_UNREACHABLE, run_reporting
    from jobcast.cli.follow_many import MultiFollower
    from tests.support.clock import FakeClock

    clock = FakeClock()

    def redis_down(request: httpx.Request) -> httpx.Response:
        """Every request answered 503, as the web does while its Redis is down."""
        clock.advance(0.01)  # (an answer takes a moment)
        return httpx.Response(503, json=REDIS_DOWN, headers={"Retry-After": "2"})

    for _ in range(5):  # (the waits are jittered)
        err = io.StringIO()
        display = Display("plain", False, io.StringIO(), err)
        client = httpx.Client(transport=httpx.MockTransport(redis_down))
        ids = [c * 32 for c in "ab"[:jobs]]
        follower = (Follower(ids[0], "http://jobcast.test", display, client=client,
                             reconnect_for=2) if jobs == 1 else
                    MultiFollower(ids, "http://jobcast.test", display, client=client,
                                  reconnect_for=2))
        follower.backoff.clock, follower.backoff.sleep = clock, clock.advance
        start = clock()
        assert run_reporting(follower.run, err, lambda: "interrupted") == EXIT_UNREACHABLE
        assert 2 <= clock() - start <= 2.02, "the deadline is --reconnect-for's"
        assert err.getvalue().splitlines() == [
            "waiting for http://jobcast.test… (it answers HTTP 503: Redis is unreachable; "
            "retry shortly)",
            "jobcast: gave up after 2 s: http://jobcast.test answers HTTP 503: Redis is "
            "unreachable; retry shortly"]


def test_ctrl_c_on_follow_says_how_many_values_it_printed_and_where_the_stream_goes_on():
    """A CLI user's review: Ctrl-C said "interrupted after entry 11" once 9 values were
    printed: the entry's seq, which nothing on screen counts."""
    from jobcast.cli.follow import EXIT_INTERRUPTED, run_reporting

    def events():
        """Queued, started and 9 values (seqs 3 to 11); then the user presses Ctrl-C."""
        yield (entry(1, "E1", "queued") + entry(2, "E1", "started")).encode()
        for i in range(9):
            yield entry(3 + i, "E1", i=i).encode()
        raise KeyboardInterrupt

    def answer(request: httpx.Request) -> httpx.Response:
        """A running job's status, and its events."""
        if request.url.path.endswith("/events"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=events())
        return httpx.Response(200, json={"task": "sqrt", "status": "running",
                                         "progress": {"i": 0, "n": 100}})

    out, err = io.StringIO(), io.StringIO()
    follower = Follower("a" * 32, "http://jobcast.test", Display("plain", False, out, err),
                        client=httpx.Client(transport=httpx.MockTransport(answer)))
    assert run_reporting(follower.run, err, follower.interrupted) == EXIT_INTERRUPTED
    assert len(out.getvalue().splitlines()) == 9
    assert err.getvalue() == ("jobcast: interrupted after 9 values printed (its event stream "
                              "goes on after id 11:E1)\n")


@pytest.mark.parametrize("jobs", [1, 2])
def test_follow_into_output_that_cannot_be_written_is_one_line_and_exit_1(
        http, web, workers, redis_server, jobs):
    """A CLI user's review: `jobcast follow ID > /dev/full` ended in a traceback, "OSError:
    [Errno 28] No space left on device"."""
    ids = [create_job(http, "sqrt", n=3, interval=0.01) for _ in range(jobs)]
    with open("/dev/full", "w") as full:
        out = subprocess.run([*JOBCAST, "follow", *ids, "--url", web.url], cwd=ROOT,
                             env=service_env(redis_server.url), stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1] == (
        "jobcast: cannot write to standard output: No space left on device")
