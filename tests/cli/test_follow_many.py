"""`jobcast follow a b c`: several jobs over one connection, resumed exactly after cut
connections, each line prefixed by its job; the worst outcome's exit code; and the Python API
(``jobcast.cli.follow_many.watch_many``)."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pytest

from jobcast.cli.follow_many import watch_many
from jobcast.cli.sse import JitterBackoff, Unreachable, parse_blocks
from tests.support.jobs import create_job
from tests.support.wait import wait_for
from tests.support.cli import Run, sqrt_lines


def by_job(lines: list[str]) -> dict[str, list[str]]:
    """Plain output lines ("<8-char id> <value>") grouped by job, in order."""
    out = defaultdict(list)
    for line in lines:
        short, _, value = line.partition(" ")
        out[short].append(value)
    return out


def test_three_jobs_over_one_connection_print_every_value_once_across_cut_connections(
        http, web, workers, redis_server, proxy):
    # 9 s of values: each reconnection waits up to twice the server's retry (0.5-2.5 s)
    n = 90
    ids = [create_job(http, "sqrt", n=n, interval=0.1) for _ in range(3)]
    run = Run(redis_server.url, "follow", *ids, "--url", proxy.url)
    wait_for(lambda: len(run.lines) >= 10, 30, what="the first values")
    assert proxy.accepted == 1, "one connection for the three jobs"
    for cut in (1, 2):
        shown = len(run.lines)
        assert shown < 3 * n, f"everything came before cut {cut}: make the jobs longer"
        assert proxy.cut() == 1
        wait_for(lambda: proxy.accepted == cut + 1 and len(run.lines) >= shown + 6, 30,
                 what=f"values after cut {cut}")
    assert run.wait(60) == 0, run.err
    assert by_job(run.lines) == {job_id[:8]: sqrt_lines(n) for job_id in ids}
    assert proxy.accepted == 3 and run.err.count("reconnecting") == 2, run.err
    assert sorted(run.err.splitlines()[-3:]) == sorted(f"{job_id[:8]} Done" for job_id in ids)


def test_several_jobs_exit_with_the_worst_outcome_and_json_lines_name_their_job(
        http, web, workers, redis_server):
    done = create_job(http, "sqrt", n=4, interval=0.01)
    failed = create_job(http, "boom", after=2)
    run = Run(redis_server.url, "follow", done, failed, "--output", "json", "--url", web.url)
    assert run.wait(60) == 1, run.err             # failed > finished
    entries = [json.loads(line) for line in run.lines]
    seqs = defaultdict(list)
    for e in entries:
        seqs[e["job"]].append(e["seq"])
    assert set(seqs) == {done, failed}
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values()), "each job's entries once, in order"
    assert [e["kind"] for e in entries if e["job"] == done][-1] == "finished"
    assert [e["kind"] for e in entries if e["job"] == failed][-1] == "failed"

    cancelled = create_job(http, "sleepy", n=3, interval=60)
    assert http.post(f"/api/jobs/{cancelled}/cancel").status_code == 200
    run = Run(redis_server.url, "follow", done, cancelled, "--url", web.url)
    assert run.wait(60) == 4, run.err             # cancelled > finished
    assert f"{cancelled[:8]} Cancelled" in run.err and by_job(run.lines)[done[:8]] == sqrt_lines(4)

    run = Run(redis_server.url, "follow", done, "0" * 32, "--url", web.url)
    assert run.wait(60) == 2, run.err             # a job that does not exist: bad input
    assert f"no job with id {'0' * 32}" in run.err


def test_watch_many_yields_each_jobs_entries_once_in_order_until_all_have_ended(http, web, workers):
    ids = [create_job(http, "sqrt", n=5, interval=0.01) for _ in range(2)]
    got = defaultdict(list)
    for ev in watch_many(ids, web.url):
        got[ev.job].append(ev)
    for job_id in ids:
        entries = [ev.data for ev in got[job_id]]
        assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
        assert [e["j"] for e in entries if e["kind"] == "value"] == [math.sqrt(i) for i in range(5)]
        assert entries[-1]["kind"] == "finished"


# ---- pure parts -------------------------------------------------------------------------------

def test_sse_blocks_keep_the_id_of_a_block_without_data():
    lines = ["retry: 2000", "", "event: value", 'data: {"seq":7}', "", "id: ab12cd34:7.3", "",
             ": heartbeat", "", "id: ab12cd34:7.4", ""]
    assert list(parse_blocks(iter(lines))) == [(None, "value", '{"seq":7}'),
                                               ("ab12cd34:7.3", "message", None),
                                               ("ab12cd34:7.4", "message", None)]


def test_backoff_is_full_jitter_above_the_servers_retry_capped_and_gives_up():
    backoff = JitterBackoff(60, floor=1.0, cap=8.0)
    backoff.retry(2000)                            # the server's retry: 2 s
    waits = [backoff.next_delay() for _ in range(6)]
    for n, w in enumerate(waits):
        assert 2.0 <= w <= min(8.0, 2.0 + 2.0 * 2 ** n)
    assert len(set(waits)) > 1, "jittered"
    backoff.reset()
    assert backoff.attempt == 0
    quick = JitterBackoff(-1.0, floor=0.001)       # any outage is too long
    quick.wait("here")                             # an outage begins: one more try
    with pytest.raises(Unreachable):
        quick.wait("here")


def multi_entry(job: str, seq: int, epoch: str, kind: str = "value", i: int | None = None) -> str:
    """One job's entry on ``/events``: its event, then the write's id block (cursor elided)."""
    body = {"job": job, "seq": seq, "ep": epoch, "kind": kind, "ts": 1.0}
    if i is not None:
        body.update(i=i, v=f"v{i}", j=i)
    return f"event: {kind}\ndata: {json.dumps(body)}\n\n"


def test_a_reset_moves_one_jobs_position_back_says_so_and_a_replaced_finish_exits_5():
    import io

    import httpx

    from jobcast.cli.display import Display
    from jobcast.cli.follow import EXIT_REPLACED
    from jobcast.cli.follow_many import MultiFollower

    a, b = "a" * 32, "b" * 32
    first = ("".join(multi_entry(a, 3 + i, "A1", i=i) for i in range(4))
             + multi_entry(b, 3, "B1", i=0))       # no id yet: the reconnect names positions
    reset = {"job": a, "epoch": "A2", "after": 4, "values": 2, "reason": "lost",
             "was": {"seq": 6, "epoch": "A1"}}
    second = (f"event: reset\ndata: {json.dumps(reset)}\n\n"
              + "".join(multi_entry(a, 5 + k, "A2", i=2 + k) for k in range(2))
              + multi_entry(a, 7, "A2", "finished") + multi_entry(b, 4, "B1", "finished"))
    requests = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=[first, second][len(requests) - 1].encode())

    out, err = io.StringIO(), io.StringIO()
    follower = MultiFollower([a, b], "http://jobcast", Display("plain", False, out, err, True),
                             client=httpx.Client(transport=httpx.MockTransport(handle)))
    follower.backoff.floor, follower.backoff.cap = 0.0, 0.0
    assert follower.run() == EXIT_REPLACED, err.getvalue()
    assert requests[1].url.params.get_list("job") == [f"{a}:6~A1", f"{b}:3~B1"]
    assert by_job(out.getvalue().splitlines()) == {a[:8]: ["v0", "v1", "v2", "v3", "v2", "v3"],
                                                   b[:8]: ["v0"]}
    assert (f"{a[:8]} the job's log was reset after a Redis failover (lost): values from #2 on"
            " were replaced") in err.getvalue()
    assert (follower.stream.last_seq[a], follower.stream.epoch[a]) == (7, "A2")


def test_a_connection_cut_within_a_write_resumes_from_each_jobs_own_position_not_the_older_id():
    """A review's finding: a connection cut after a write's entries but before its id resumed
    from the id before them. A failover that lost those entries and wrote others at their
    seqs went unjudged (the older position was in the log), and the others were dropped here
    as ones already had, in silence. Such a resume now names each job's own position, whose
    reset the server sends; a write ended by its id still resumes from the id."""
    import io

    import httpx

    from jobcast.cli.display import Display
    from jobcast.cli.follow_many import MultiFollower

    a = "a" * 32
    first = (multi_entry(a, 3, "A1", i=0) + "id: cursor-1\n\n"
             + multi_entry(a, 4, "A1", i=1) + "id: cursor-2\n\n"
             + multi_entry(a, 5, "A1", i=2))          # cut here: no id for seq 5
    second = (multi_entry(a, 6, "A1", i=3) + "id: cursor-3\n\n")   # closed by the server
    reset = {"job": a, "epoch": "A2", "after": 4, "values": 2, "reason": "lost",
             "was": {"seq": 6, "epoch": "A1"}}
    third = (f"event: reset\ndata: {json.dumps(reset)}\n\n" + multi_entry(a, 5, "A2", i=2)
             + multi_entry(a, 6, "A2", "finished") + "id: cursor-4\n\n")
    requests = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=[first, second, third][len(requests) - 1].encode())

    out, err = io.StringIO(), io.StringIO()
    follower = MultiFollower([a], "http://jobcast", Display("plain", False, out, err, True),
                             client=httpx.Client(transport=httpx.MockTransport(handle)))
    follower.backoff.floor, follower.backoff.cap = 0.0, 0.0
    follower.run()
    # Cut within a write: its own position, not cursor-2.
    assert "last-event-id" not in requests[1].headers
    assert requests[1].url.params.get_list("job") == [f"{a}:5~A1"]
    # Ended by its id: the id.
    assert requests[2].headers["last-event-id"] == "cursor-3"
    assert by_job(out.getvalue().splitlines()) == {a[:8]: ["v0", "v1", "v2", "v3", "v2"]}
    assert "values from #2 on were replaced" in err.getvalue()


@pytest.mark.parametrize("output", ["plain", "json"])
def test_a_trimmed_job_of_several_is_told_on_stderr_and_in_json_as_a_line(output):
    """A review's finding: with several jobs and ``--output json``, a ``trimmed`` event was
    neither printed nor noted: values jumped in silence."""
    import io

    import httpx

    from jobcast.cli.display import Display
    from jobcast.cli.follow_many import MultiFollower

    a = "a" * 32
    trimmed = {"job": a, "after": 0, "first_seq": 10, "lost": 9, "first_value": 7}
    body = (f"event: trimmed\ndata: {json.dumps(trimmed)}\n\n" + multi_entry(a, 10, "A1", i=7)
            + multi_entry(a, 11, "A1", "finished") + "id: cursor-1\n\n")

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=body.encode())

    out, err = io.StringIO(), io.StringIO()
    follower = MultiFollower([a], "http://jobcast", Display(output, False, out, err, True),
                             client=httpx.Client(transport=httpx.MockTransport(handle)))
    follower.backoff.floor, follower.backoff.cap = 0.0, 0.0
    assert follower.run() == 0
    assert f"{a[:8]} 7 earlier values are no longer kept" in err.getvalue()
    if output == "json":
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert lines[0] == {"kind": "trimmed", **trimmed}
        assert [line.get("seq") for line in lines[1:]] == [10, 11]


def test_a_jobs_status_that_fails_for_a_moment_is_asked_again_not_taken_for_a_failure():
    """A review's finding: a job whose stream ended without its terminal entry (it had ended
    where the stream resumed) was reported "Failed: unknown reason", exit 1, when the status
    asked then met a passing error (a 503 here); one job's follow asks again."""
    import io

    import httpx

    from jobcast.cli.display import Display
    from jobcast.cli.follow_many import MultiFollower

    a = "a" * 32
    body = f'event: ended\ndata: {json.dumps({"job": a, "after": 7})}\n\nid: cursor-1\n\n'
    statuses = [503, 200]

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/events":
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=body.encode())
        code = statuses.pop(0)
        return httpx.Response(code, json={"status": "finished", "reason": None} if code == 200
                              else {"error": "service_unavailable", "message": "busy"})

    out, err = io.StringIO(), io.StringIO()
    follower = MultiFollower([a], "http://jobcast", Display("plain", False, out, err, True),
                             client=httpx.Client(transport=httpx.MockTransport(handle)))
    follower.backoff.floor, follower.backoff.cap = 0.0, 0.0
    assert follower.run() == 0, err.getvalue()
    assert statuses == [] and f"{a[:8]} Done" in err.getvalue()


def test_a_jobs_multi_line_log_record_prints_as_when_one_job_is_followed_each_line_prefixed():
    """A CLI user's review: following several jobs printed a logging record of two lines as
    "disk low\ufffdsecond line", where following one job prints the second line indented on
    a line of its own."""
    import io

    import httpx

    from jobcast.cli.display import Display
    from jobcast.cli.follow import Follower
    from jobcast.cli.follow_many import MultiFollower

    a = "a" * 32
    record = {"kind": "log", "stream": "logging", "level": "WARNING", "logger": "app",
              "text": "disk low\nsecond line", "attempt": 1}

    def answer(request: httpx.Request) -> httpx.Response:
        """The job's record and end, on one job's stream or on several's."""
        if request.url.path.endswith("/events"):
            entries = [dict(record, seq=1), {"kind": "finished", "seq": 2, "ts": 1.0}]
            several = request.url.path == "/events"
            body = "".join(f"id: {e['seq']}\nevent: {e['kind']}\n"
                           f"data: {json.dumps(dict(e, job=a) if several else e)}\n\n"
                           for e in entries)
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=body.encode())
        return httpx.Response(200, json={"task": "sqrt", "status": "running",
                                         "progress": {"i": 0, "n": None}})

    one, several = io.StringIO(), io.StringIO()
    client = httpx.Client(transport=httpx.MockTransport(answer))
    assert Follower(a, "http://jobcast", Display("plain", False, io.StringIO(), one),
                    client=client).run() == 0
    assert MultiFollower([a], "http://jobcast", Display("plain", False, io.StringIO(), several),
                         client=client).run() == 0
    assert one.getvalue().splitlines() == ["WARNING app: disk low", "    second line", "Done"]
    assert several.getvalue().splitlines() == [f"{a[:8]} {line}" for line in
                                               one.getvalue().splitlines()]
