"""What a job prints reaches its viewers: real `rq worker -w jobcast.Worker` and `jobcast worker`
processes capture stdout, stderr (C and subprocesses too) and logging into the job's log, in
order with the values, bounded, and per attempt; watched through the real gunicorn."""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading

import httpx
import pytest
from rq import Queue, Retry

from jobcast.core.joblog import Entry, JobLog
from jobcast.worker import capture, sources
from jobcast.worker.hook import SimpleWorker
from tests.support.jobs import create_job, sse_events, stream_lines
from tests.support.services import ROOT, start_rq_worker, stop_process
from tests.support.wait import wait_for
from tests.rq_jobs import (chatty, flood, long_line, print_around_children, print_then_hang_once,
                           progress, tick_then_wait)
from tests.support.cancel import horse_of
from tests.support.sse import id_seq, parse_events


@pytest.fixture(scope="module")
def rq_workers(redis_server, logs_dir):
    """`rq worker -w jobcast.Worker` processes, one per JOBCAST_CAPTURE mode, started on first
    use: ``get(mode)`` -> (queue name, process, log path)."""
    started: dict[str, tuple] = {}

    def get(mode: str = "all"):
        if mode not in started:
            name = f"capture-{mode}"
            path = logs_dir / f"rq-{name}.log"
            proc = start_rq_worker(redis_server.url, name, log_path=path, JOBCAST_CAPTURE=mode)
            started[mode] = (name, proc, path)
        return started[mode]

    yield get
    for _name, proc, _path in started.values():
        stop_process(proc)


def enqueue(redis, rq_workers, func, *args, mode: str = "all", **kwargs):
    """Put ``func`` on the queue of the worker capturing in ``mode``."""
    name, _proc, _path = rq_workers(mode)
    return Queue(name, connection=redis).enqueue(func, *args, **kwargs)


def summary(events: list[dict]) -> list[tuple]:
    """Each event as (kind, what it says): a value's text, a line's stream, level and text."""
    out = []
    for e in events:
        d = e["data"]
        if e["event"] == "log":
            out.append(("log", d["stream"], d.get("level"), d["text"]))
        elif e["event"] == "value":
            out.append(("value", d["v"]))
        else:
            out.append((e["event"],))
    return out


def entries(redis, job_id: str) -> list[Entry]:
    return list(JobLog(redis, job_id).entries())


CHATTY = {
    "all": [("queued",), ("started",), ("log", "stdout", None, "out 1"), ("value", "1"),
            ("log", "stderr", None, "err 1"), ("log", "logging", "WARNING", "warn 1"),
            ("log", "stdout", None, "sub"), ("value", "2"), ("log", "stdout", None, "from C"),
            ("value", "3"), ("finished",)],
    "logging": [("queued",), ("started",), ("value", "1"), ("log", "logging", "WARNING", "warn 1"),
                ("value", "2"), ("value", "3"), ("finished",)],
    "off": [("queued",), ("started",), ("value", "1"), ("value", "2"), ("value", "3"), ("finished",)],
}


@pytest.mark.parametrize("mode", ["all", "logging", "off"])
def test_plain_rq_job_output_is_sse_log_events_in_order_with_its_values_and_the_text_stream_is_values_only(
        http, redis, rq_workers, mode):
    job = enqueue(redis, rq_workers, chatty, mode=mode)
    assert stream_lines(http, job.id) == ["1", "2", "3"]
    events = sse_events(http, job.id)
    assert summary(events) == CHATTY[mode]   # no DEBUG "hidden", no RQ-internal "internal"
    assert all(e["data"]["attempt"] == 1 for e in events if e["event"] == "log")
    assert [id_seq(e["id"]) for e in events] == list(range(1, len(events) + 1))
    html = httpx.get(http.base_url.join(f"/jobs/{job.id}/frame"), timeout=30).text
    assert re.findall(r"<p>(\d+): (\d+)</p>", html) == [("0", "1"), ("1", "2"), ("2", "3")]
    console = rq_workers(mode)[2].read_text()
    if mode == "all":
        assert f"[{job.id}] out 1" in console and f"[{job.id}] from C" in console
        assert console.count("warn 1") == 1   # echoed once, not also by the console handler
    if mode == "off":
        assert f"[{job.id}]" not in console


def test_jobcast_task_output_comes_after_started_and_before_finished_with_its_last_partial_line(
        http, workers, logs_dir):
    job_id = create_job(http, "chatty")
    assert stream_lines(http, job_id) == ["1", "2"]
    events = sse_events(http, job_id)
    assert summary(events) == [("queued",), ("started",), ("log", "stdout", None, "out 1"),
                               ("value", "1"), ("log", "stderr", None, "err 1"),
                               ("log", "logging", "WARNING", "warn 1"), ("value", "2"),
                               ("log", "stdout", None, "bye"), ("finished",)]
    assert events[-2]["data"]["partial"] is True
    assert {e["data"]["attempt"] for e in events if e["event"] == "log"} == {1}
    consoles = "".join(p.read_text() for p in logs_dir.glob("worker-*.log"))
    assert f"[{job_id}] out 1" in consoles and consoles.count(f"[{job_id}] WARNING user: warn 1") == 1


def test_lines_printed_around_a_subprocess_come_in_the_order_they_were_printed(
        http, redis, rq_workers):
    """A review's finding: Python's stdout was block-buffered over the pipe, so the lines a
    child wrote to descriptor 1 overtook the ones printed before it."""
    job = enqueue(redis, rq_workers, print_around_children)
    assert stream_lines(http, job.id) == ["1"]
    printed = [e.data["text"] for e in entries(redis, job.id) if e.kind == "log"]
    assert printed == ["1 before child", "2 from child", "3 after child", "4 from os.system",
                       "5 last"]


def test_a_million_lines_in_a_tight_loop_keep_redis_bounded_announce_the_drops_and_keep_every_value(
        http, redis, rq_workers):
    used_before = redis.info("memory")["used_memory"]
    job = enqueue(redis, rq_workers, flood, 1_000_000, 100_000, job_timeout=120)
    assert stream_lines(http, job.id) == [str(k) for k in range(10)]
    log = entries(redis, job.id)
    lines = [e for e in log if e.kind == "log"]
    dropped = sum(e.data.get("dropped", 0) for e in lines)
    printed = [e for e in lines if not e.data.get("dropped")]
    assert dropped > 0 and len(printed) + dropped == 1_000_000
    # Order is kept and no line is doubled. The cap keeps the first lines of each one-second
    # window: the first window's are 0, 1, 2, ...; a machine slow enough to spend more than a
    # second on the loop keeps a later run of lines too (CI once kept 0-199, then 984240 on).
    numbers = [int(e.data["text"]) for e in printed]
    assert numbers == sorted(set(numbers))
    assert numbers[:200] == list(range(min(200, len(numbers))))
    started = next(e for e in log if e.kind == "started").data["ts"]
    seconds = log[-1].data["ts"] - started
    assert len(log) <= 201 * (math.ceil(seconds) + 1) + 12
    assert redis.memory_usage(JobLog(redis, job.id).keys.log) < 2 << 20
    assert redis.info("memory")["used_memory"] - used_before < 20 << 20
    console = rq_workers("all")[2].read_text()
    assert console.count(f"[{job.id}]") <= len(lines)


def test_a_megabyte_line_is_cut_and_marked_and_a_last_line_without_newline_still_arrives(
        http, redis, rq_workers):
    job = enqueue(redis, rq_workers, long_line, 1_000_000)
    events = sse_events(http, job.id)
    assert [e["event"] for e in events] == ["queued", "started", "log", "value", "log", "finished"]
    cut, end = events[2]["data"], events[4]["data"]
    assert len(cut["text"].encode()) <= 8192 and cut["text"] == "x" * len(cut["text"])
    assert cut["cut"] == 1_000_000
    assert (end["text"], end["partial"]) == ("end", True)


def test_an_unfinished_line_is_sent_while_the_job_still_runs(http, redis, rq_workers):
    job = enqueue(redis, rq_workers, tick_then_wait)
    with httpx.stream("GET", http.base_url.join(f"/jobs/{job.id}/events"), timeout=30) as r:
        events = parse_events(r)
        tick = next(e for e in events if e.event == "log")
        assert tick.json()["text"] == "tick" and tick.json()["partial"] is True
        assert JobLog(redis, job.id).status() == "running"   # the job is waiting for us
        redis.rpush(f"test:go:{job.id}", 1)
        rest = [e.event for e in events]
    assert rest == ["value", "finished"]


def test_an_unfinished_line_printed_before_a_value_comes_before_it_and_the_download_joins_it(
        http, redis, rq_workers):
    """A second reading's finding: the unfinished line waited for its newline or its 200 ms,
    and so was logged after the value that followed it."""
    job = enqueue(redis, rq_workers, progress)
    events = sse_events(http, job.id)
    assert summary(events)[2:] == [
        ("log", "stdout", None, "step 1..."), ("value", "1"), ("log", "stdout", None, " ok"),
        ("log", "stderr", None, "step 2..."), ("value", "2"), ("log", "stderr", None, " ok"),
        ("finished",)]
    assert [e["data"].get("partial", False) for e in events if e["event"] == "log"] == [
        True, False, True, False]
    download = httpx.get(http.base_url.join(f"/api/jobs/{job.id}/output"), timeout=30)
    assert download.text.splitlines() == ["step 1... ok", "step 2... ok"]


def test_a_retry_after_the_horse_was_sigkilled_keeps_both_attempts_output_and_each_value_once(
        http, redis, rq_workers):
    job = enqueue(redis, rq_workers, print_then_hang_once, retry=Retry(max=1))
    _name, proc, _path = rq_workers("all")

    def ready() -> Entry | None:
        return next((e for e in entries(redis, job.id) if e.data.get("text") == "ready"), None)

    wait_for(ready, 30, what="the first attempt to say ready")
    started = next(e for e in entries(redis, job.id) if e.kind == "started")
    horse_of(proc.pid, started).send_signal(signal.SIGKILL)
    assert stream_lines(http, job.id) == ["0", "1", "2"]
    log = entries(redis, job.id)
    seq = {(e.kind, e.data.get("text"), e.data.get("attempt")): e.seq for e in log}
    assert seq[("log", "a1", 1)] < seq[("log", "ready", 1)] < seq[("retrying", None, None)]
    assert seq[("retrying", None, None)] < seq[("started", None, 2)] < seq[("log", "a2", 2)]
    assert [e.i for e in log if e.kind == "value"] == [0, 1, 2]
    assert log[-1].kind == "finished"
    assert http.get(f"/api/jobs/{job.id}/output").text == "a1\nready\n── attempt 2 ──\na2\n"
    assert http.get(f"/api/jobs/{job.id}/output?attempt=1").text == "a1\nready\n"


# -- the non-forking worker: Python's streams only, put back after every job -----------------------

def raise_after_print() -> None:
    """Print, then fail."""
    print("about to fail")
    raise ValueError("on purpose")


def print_and_emit() -> int:
    """Print a line and emit a value."""
    from jobcast import emit

    print("in process")
    emit(1)
    return 1


def test_the_simple_worker_captures_prints_only_and_puts_its_streams_back(redis, in_process):
    queue = Queue(f"capture-simple-{os.getpid()}", connection=redis)
    ok = queue.enqueue(print_and_emit)
    failing = queue.enqueue(raise_after_print)
    fds = [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)]
    streams = (sys.stdout, sys.stderr)
    worker = SimpleWorker([queue], connection=redis)
    worker.work(burst=True)
    assert [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)] == fds and (sys.stdout, sys.stderr) == streams
    assert capture.current() is None
    assert [(e.kind, e.data.get("text")) for e in entries(redis, ok.id)][1:] == [
        ("started", None), ("log", "in process"), ("value", None), ("finished", None)]
    failed = [(e.kind, e.data.get("text")) for e in entries(redis, failing.id)]
    assert failed[-2:] == [("log", "about to fail"), ("failed", None)]
    # The worker's own logging (RQ's "Job OK", redis') is never taken for the job's.
    assert all(e.data.get("stream") != "logging" for e in entries(redis, ok.id))


def test_printing_never_waits_for_a_slow_redis_and_the_lines_arrive_in_order_once_it_answers():
    answer = threading.Event()
    sent: list[str] = []

    def slow_sink(entries):
        """Redis that takes its time (until the test lets it answer)."""
        answer.wait(10)
        sent.extend(body["text"] for _kind, body, _ts in entries)
        return list(range(len(entries)))

    cap = capture.Capture("j", slow_sink, rate=1000, level=logging.INFO, echo=False, attempt=1,
                          mode="sys")
    cap.start()
    try:
        print("first")
        wait_for(lambda: not cap.pending, 5, what="the flush thread to take the first line")
        # Printed while the flush thread is stuck in the sink (until `answer` is set): were
        # print() to wait for the sink, the printer would still be stuck at the deadline.
        printer = threading.Thread(target=lambda: [print(f"line {k}") for k in range(50)])
        printer.start()
        wait_for(lambda: not printer.is_alive(), 5, what="50 prints, the sink stuck")
        assert len(cap.pending) == 50
    finally:
        answer.set()
        cap.close()
    assert sent == ["first"] + [f"line {k}" for k in range(50)]
    assert sys.stdout is not None and not isinstance(sys.stdout, sources.StreamProxy)


def sys_capture() -> tuple[capture.Capture, list[tuple[str, str]]]:
    """A started sys-mode capture whose sink takes every line, and the (stream, text) of the
    lines it took."""
    sent: list[tuple[str, str]] = []

    def sink(entries):
        """Redis, taking every line."""
        sent.extend((body["stream"], body["text"]) for _kind, body, _ts in entries)
        return list(range(len(entries)))

    cap = capture.Capture("j", sink, rate=1000, level=logging.INFO, echo=False, attempt=1,
                          mode="sys")
    cap.start()
    return cap, sent


def test_bytes_written_to_the_standard_streams_buffers_are_captured_as_text():
    """A code review's finding: a captured job's ``sys.stdout`` had no ``buffer`` (nor
    ``reconfigure``), so code that writes bytes, or sets its stream's line buffering, failed
    inside a job and nowhere else."""
    cap, sent = sys_capture()
    try:
        sys.stdout.reconfigure(line_buffering=True)
        sys.stdout.buffer.write("bytes é\n".encode())
        snowman = "☃\n".encode()
        sys.stderr.buffer.write(snowman[:2])  # a character split between two writes
        sys.stderr.buffer.write(snowman[2:])
        sys.stdout.buffer.flush()
    finally:
        cap.close()
    assert sent == [("stdout", "bytes é"), ("stderr", "☃")]


def test_what_a_job_prints_keeps_lone_surrogates_as_escapes_and_an_unfinished_character_as_ufffd():
    """A job author's findings: a file name ``os.fsdecode`` could not decode was printed as
    ``caf?_?.txt`` (where a value shows ``caf\\xe9_\\xff.txt``), and the first bytes of a
    character left in ``sys.stdout.buffer`` at the job's end were dropped."""
    cap, sent = sys_capture()
    try:
        name = os.fsdecode(b"caf\xe9_\xff.txt")
        print(name)
        print(name, file=sys.stderr)
        sys.stdout.buffer.write(b"X\xe4\xb8")  # a character's first two bytes, and no more
    finally:
        cap.close()
    assert sent == [("stdout", "caf\\xe9_\\xff.txt"), ("stderr", "caf\\xe9_\\xff.txt"),
                    ("stdout", "X\ufffd")]


def test_an_unfinished_line_goes_before_a_logging_record_or_the_other_streams_line_printed_after_it():
    """A review's finding: ``print("A", end=""); log.warning("B")`` was logged B, then A (after
    its 200 ms), against the order it was printed in."""
    sent: list[tuple[str, str, bool]] = []

    def sink(entries):
        """Redis, as a list."""
        sent.extend((body["stream"], body["text"], body.get("partial", False))
                    for _kind, body, _ts in entries)
        return list(range(len(entries)))

    cap = capture.Capture("j", sink, rate=1000, level=logging.INFO, echo=False, attempt=1,
                          mode="sys")
    cap.start()
    try:
        print("A", end="")
        logging.getLogger("user").warning("B")
        print("C", end="")
        sys.stderr.write("D\n")
        print("E")
    finally:
        cap.close()
    assert sent == [("stdout", "A", True), ("logging", "B", False), ("stdout", "C", True),
                    ("stderr", "D", False), ("stdout", "E", False)]


def test_a_dot_printed_before_each_of_many_values_makes_a_partial_line_per_200_ms_not_per_value():
    """A second reading's finding: sending an unfinished line before every value made a job
    that prints a dot per value log one entry per value (201 entries, and 301 lines dropped
    by the rate cap, for 500 values in 0.5 s)."""
    sent: list[tuple[str, bool]] = []
    now = [1000.0]

    def sink(entries):
        """Redis, as a list."""
        sent.extend((body["text"], body.get("partial", False)) for _kind, body, _ts in entries)
        return list(range(len(entries)))

    cap = capture.Capture("j", sink, rate=200, level=logging.INFO, echo=False, attempt=1,
                          mode="sys", clock=lambda: now[0])
    cap.start()
    try:
        for _ in range(500):
            print(".", end="")
            cap.before_value()
            now[0] += 0.001
        print("!")
    finally:
        cap.close()
    assert "".join(text for text, _partial in sent) == "." * 500 + "!"
    assert len(sent) <= 6, sent   # one early cut per 200 ms, the 200 ms expiry, the end
    assert all(partial for _text, partial in sent[:-1]) and not sent[-1][1]


@pytest.mark.parametrize("failing", ["os.pipe", "threading.Thread.start"])
def test_a_capture_that_cannot_start_leaves_the_job_uncaptured_and_puts_everything_back(
        monkeypatch, failing):
    """A review's finding: a pipe that could not be made (too many open files) left the saved
    copy of descriptor 1 open, and the cleanup's KeyError failed the job; a thread that could
    not start left sys.stdout and sys.stderr swapped for good."""
    def refuse(*args, **kwargs):
        """Out of descriptors, or of threads."""
        raise OSError(24, "Too many open files") if failing == "os.pipe" else \
            RuntimeError("can't start new thread")

    streams = (sys.stdout, sys.stderr)
    fds = [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)]
    opened = len(os.listdir("/proc/self/fd"))
    jlog = JobLog.__new__(JobLog)  # never written to: the capture does not start
    jlog.append_many = lambda entries: []
    settings = type("S", (), {"capture": "all", "capture_rate": 100, "capture_level": "INFO",
                              "capture_echo": False})()
    with monkeypatch.context() as patch:
        patch.setattr(failing, refuse)
        assert capture.start("j", jlog, settings, attempt=1, fds=True) is None
    assert (sys.stdout, sys.stderr) == streams and capture.current() is None
    assert [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)] == fds
    assert len(os.listdir("/proc/self/fd")) == opened


def test_lines_redis_did_not_take_are_announced_once_it_takes_lines_again_and_echoed_once(
        capsys):
    """A review's finding: lines lost to a Redis outage (a failed send, then its retry) were
    counted and logged on the worker only: viewers were never told, as they are of the lines
    the rate cap drops. And a batch sent again was printed on the console twice."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    failures, sent = [2], []

    def sink(entries):
        """Redis away for two sends, then back."""
        if failures[0]:
            failures[0] -= 1
            raise RedisConnectionError("Redis went away")
        sent.extend(body for _kind, body, _ts in entries)
        return list(range(1, len(entries) + 1))

    cap = capture.Capture("j", sink, rate=200, level=logging.INFO, echo=True, attempt=1,
                          mode="logging")
    cap.write("stdout", "line A\n")
    cap.send()                      # fails: kept for one more try
    cap.send()                      # fails again: lost
    cap.write("stdout", "line B\n")
    cap.send()
    cap.close()
    assert [(b["text"], b.get("lost")) for b in sent] == [
        ("[jobcast] 1 lines lost: Redis did not take them", 1), ("line B", None)]
    assert capsys.readouterr().err.count("line A") == 1


def test_a_long_outage_announces_every_line_it_lost_not_only_the_last_batch(caplog):
    """A reliability review's finding: over a 10 s outage 20 lines were lost and viewers were
    told 2: a notice that failed to go was counted as one line lost, not as those it counted."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    down, sent = [True], []

    def sink(entries):
        """Redis away until told otherwise."""
        if down[0]:
            raise RedisConnectionError("Redis went away")
        sent.extend(body for _kind, body, _ts in entries)
        return list(range(1, len(entries) + 1))

    cap = capture.Capture("j", sink, rate=200, level=logging.INFO, echo=False, attempt=1,
                          mode="logging")
    for tick in range(10):          # a line a tick, each batch failing twice
        cap.write("stdout", f"line {tick}\n")
        cap.send()
    down[0] = False
    cap.write("stdout", "back\n")
    cap.send()
    cap.close()
    notices = [b for b in sent if b.get("lost")]
    assert [b["text"] for b in sent if not b.get("lost")] == ["back"]
    assert sum(b["lost"] for b in notices) == 10 == cap.lost, notices
    assert notices[-1]["text"] == "[jobcast] 10 lines lost: Redis did not take them"


def test_lines_of_a_run_that_ended_before_its_attempt_was_known_reach_the_console_counted(
        capsys, caplog):
    """A review's finding: a runner job that failed to start (an unknown task, a reset met by
    its ``started``) ended with its attempt unknown, and the final send dropped what it had
    printed: not in the log, not on the worker's console, not counted."""
    sent = []

    def sink(entries):
        """The log (never reached: no attempt)."""
        sent.extend(entries)
        return list(range(1, len(entries) + 1))

    cap = capture.Capture("j", sink, rate=200, level=logging.INFO, echo=True, attempt=None,
                          mode="logging")
    cap.write("stdout", "importing the task failed\n")
    cap.close()
    assert sent == [] and cap.lost == 1
    assert capsys.readouterr().err.count("importing the task failed") == 1
    assert "ended before its attempt began: 1 line(s)" in caplog.text


HIGH_FDS = r"""
import os, resource, sys, threading
from jobcast.core.settings import Settings
from jobcast.worker import capture

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]  # the pipes come after these
report = os.dup(2)
lines = []

class Log:
    def append_many(self, entries):
        lines.extend(body for _kind, body, _ts in entries)
        return list(range(1, len(entries) + 1))

cap = capture.start("j", Log(), Settings(capture_echo=False, capture_rate=100000), attempt=1,
                    fds=True)
assert min(cap.source.reads) >= 1024
done = threading.Event()
def job():
    for i in range(40000):          # 3 MB, past the pipe's 1 MiB: someone must read it
                                    # (most are over the rate cap: dropped, and counted)
        print(f"{i:08d}" + "x" * 64)
    sys.stdout.flush()
    done.set()
threading.Thread(target=job, daemon=True).start()
finished = done.wait(20)
capture.seal()
counted = sum(body.get("dropped", 0) or (not body["text"].startswith("[jobcast]")) for body in lines)
os.write(report, f"{finished} {counted}\n".encode())
"""


def test_output_is_read_when_the_pipes_descriptors_are_past_1024(tmp_path):
    """A review's finding: the reader thread waited with select(), which refuses descriptors
    from 1024 on: it ended at once, and a job that printed more than a pipe holds, with no
    value to drain it, blocked for good."""
    script = tmp_path / "high_fds.py"
    script.write_text(HIGH_FDS)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.stderr.strip().splitlines()[-1] == "True 40000", out.stderr[-2000:]
