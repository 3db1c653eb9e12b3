"""One stream, many jobs (``GET /events?job=a&job=b``), through a real gunicorn and Redis.

Jobs are written straight to their logs (no worker needed); the stream is read with the tests'
own SSE parser (tests/support/sse.py).
"""

from __future__ import annotations

import threading
import uuid

import httpx
import pytest

from jobcast.core.epoch import LogReset
from jobcast.core.joblog import JobLog
from jobcast.web.events import MAX_JOBS, digest
from tests.support.jobs import running_job
from tests.support.wait import wait_for
from tests.support.loss import lose
from tests.support.sse import parse_events

TOKEN = "events-test-token-0123456789"  # the private gunicorn's (tests/web/conftest.py)


class Reader:
    """A client reading one multi-job stream in a thread, until it ends or is cut."""

    def __init__(self, base: str, query: str, headers: dict | None = None):
        """Open ``/events?query`` and read it in the background."""
        self.events = []
        self.status = None
        self.done = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(base, query, headers or {}),
                                       daemon=True)
        self.thread.start()

    def _read(self, base: str, query: str, headers: dict) -> None:
        try:
            with httpx.stream("GET", f"{base}/events?{query}", headers=headers,
                              timeout=60) as r:
                self.status = r.status_code
                if r.status_code == 200:
                    # Every block: the cursor ids come in blocks of their own, with no data.
                    for event in parse_events(r, all_blocks=True):
                        self.events.append(event)
                        if self.stop.is_set():
                            break
        except httpx.HTTPError:
            pass
        finally:
            self.done.set()

    def close(self) -> None:
        """Leave (at the next block: heartbeats come every second)."""
        self.stop.set()
        self.done.wait(10)

    def seqs(self, job_id: str) -> list[int]:
        """The seqs received of one job's entries."""
        return [e.json()["seq"] for e in self.events
                if e.data and e.event not in ("hello", "tail", "trimmed", "missing", "ended")
                and e.json().get("job") == job_id]


def test_one_stream_carries_several_jobs_each_entry_once_and_ends_with_the_last(web, redis):
    a, b = running_job(redis), running_job(redis)
    reader = Reader(web.url, f"job={a.job_id}&job={b.job_id}")
    wait_for(lambda: any(e.event == "hello" for e in reader.events), what="the stream's start")
    for i in range(5):
        a.value(i, i)
        b.value(i, -i)
    a.finished()
    b.finished()
    assert reader.done.wait(20)
    assert reader.seqs(a.job_id) == list(range(1, 9))
    assert reader.seqs(b.job_id) == list(range(1, 9))
    ids = [e.id for e in reader.events if e.id]
    assert ids[-1] == (f"{digest([a.job_id, b.job_id]).decode()}:8~{a.head().epoch}"
                       f".8~{b.head().epoch}")


def test_last_event_id_resumes_every_job_exactly(web, redis):
    a, b = running_job(redis), running_job(redis)
    for i in range(4):
        a.value(i, i)
    for i in range(2):
        b.value(i, i)
    cursor = f"{digest([a.job_id, b.job_id]).decode()}:4.3"  # a: up to value 1; b: value 0
    a.finished()
    b.finished()
    with httpx.stream("GET", f"{web.url}/events?job={a.job_id}&job={b.job_id}",
                      headers={"Last-Event-ID": cursor}, timeout=30) as r:
        events = [e for e in parse_events(r) if e.event == "value"]
    got = [(e.json()["job"], e.json()["i"]) for e in events]
    assert got.count((a.job_id, 2)) == 1 and (a.job_id, 1) not in got
    assert [i for j, i in got if j == a.job_id] == [2, 3]
    assert [i for j, i in got if j == b.job_id] == [1]


def test_the_set_of_jobs_changes_by_reconnecting_with_each_jobs_cursor(web, redis):
    a, b = running_job(redis), running_job(redis)
    first = Reader(web.url, f"job={a.job_id}")
    a.value(0, "a0")
    wait_for(lambda: first.seqs(a.job_id)[-1:] == [3], what="a's first value")
    # Add b: reconnect with a's cursor inline, b from its start.
    second = Reader(web.url, f"job={a.job_id}:3&job={b.job_id}")
    wait_for(lambda: any(e.event == "hello" for e in second.events), what="the new stream")
    a.value(1, "a1")
    b.value(0, "b0")
    wait_for(lambda: second.seqs(a.job_id) == [4] and second.seqs(b.job_id) == [1, 2, 3],
             what="a's next value and b's log")
    # Remove a: b goes on from its cursor.
    third = Reader(web.url, f"job={b.job_id}:3")
    b.value(1, "b1")
    b.finished()
    assert third.done.wait(20)
    assert third.seqs(b.job_id) == [4, 5]
    a.finished()


def test_a_job_that_does_not_exist_is_said_missing_and_the_others_go_on(web, redis):
    a = running_job(redis)
    gone = uuid.uuid4().hex
    reader = Reader(web.url, f"job={gone}&job={a.job_id}")
    wait_for(lambda: any(e.event == "hello" for e in reader.events), what="the stream's start")
    missing = [e.json() for e in reader.events if e.event == "missing" and e.data]
    assert missing == [{"job": gone}]
    a.value(0, 1)
    a.finished()
    assert reader.done.wait(20) and reader.seqs(a.job_id) == [1, 2, 3, 4]


def test_each_job_keeps_its_tail(web, redis):
    a = running_job(redis)
    for i in range(20):
        a.value(i, i)
    a.finished()
    with httpx.stream("GET", f"{web.url}/events?job={a.job_id}~3", timeout=30) as r:
        events = list(parse_events(r))
    tail = [e.json() for e in events if e.event == "tail"]
    assert tail == [{"job": a.job_id, "tail": 3, "skipped": 17, "after": 19}]
    assert [e.json()["i"] for e in events if e.event == "value"] == [17, 18, 19]


@pytest.mark.parametrize("query, headers, field", [
    ("", {}, "job"),
    ("job=*", {}, "job"),
    ("job=abc:x", {}, "job"),
    ("job=abc&job=abc", {}, "job"),
    ("&".join(f"job={i:032x}" for i in range(MAX_JOBS + 1)), {}, "job"),
    ("job=abc&job=def", {"Last-Event-ID": "00000000:1.2"}, "Last-Event-ID"),
    ("job=abc", {"Last-Event-ID": "17"}, "Last-Event-ID"),
    # Seqs past 2**53 are no position (and JavaScript could not hold them), as in the header.
    ("job=abc:9999999999999999", {}, "job"),
    ("job=abc~9999999999999999", {}, "job"),
    ("list=5:9999999999999999", {}, "list"),
    # A single job's stream's parameters: a README review found ?tail= quietly ignored here.
    ("job=abc&tail=2", {}, "tail"),
    ("job=abc&after=3", {}, "after"),
])
def test_bad_requests_get_400_naming_the_field(web, query, headers, field):
    r = httpx.get(f"{web.url}/events?{query}", headers=headers, timeout=10)
    assert r.status_code == 400 and r.json()["field"] == field, r.text


def test_a_request_whose_jobs_have_all_ended_where_it_resumes_gets_204(web, redis):
    a = running_job(redis)
    a.finished()
    cursor = f"{digest([a.job_id]).decode()}:3"
    r = httpx.get(f"{web.url}/events?job={a.job_id}", headers={"Last-Event-ID": cursor},
                  timeout=10)
    assert r.status_code == 204
    assert "Content-Type" not in r.headers, "no body: no media type (a review's finding)"


def test_a_link_for_one_job_does_not_open_another_in_a_multi_job_stream(private, redis):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    a, b = running_job(redis), running_job(redis)
    sig_a = httpx.get(f"{private.url}/api/jobs/{a.job_id}/link", headers=auth).json()["urls"]
    sig_a = sig_a["events"].split("sig=")[1]
    sig_b = httpx.get(f"{private.url}/api/jobs/{b.job_id}/link", headers=auth).json()["urls"]
    sig_b = sig_b["events"].split("sig=")[1]
    both = f"job={a.job_id}&job={b.job_id}"
    assert httpx.get(f"{private.url}/events?{both}").status_code == 401
    r = httpx.get(f"{private.url}/events?{both}&sig={sig_a}")
    assert r.status_code == 403 and b.job_id in r.json()["message"]
    a.finished()
    b.finished()
    with httpx.stream("GET", f"{private.url}/events?{both}&sig={sig_a}&sig={sig_b}",
                      timeout=30) as r:
        assert r.status_code == 200
        kinds = [e.event for e in parse_events(r)]
    assert kinds.count("finished") == 2


def test_the_job_list_streams_a_snapshot_then_every_change_of_every_job(web, redis):
    reader = Reader(web.url, "list=5")
    wait_for(lambda: any(e.event == "hello" for e in reader.events), what="the stream's start")
    snapshot = next(e.json() for e in reader.events if e.event == "snapshot")
    assert len(snapshot["jobs"]) <= 5 and isinstance(snapshot["seq"], int)
    log = JobLog(redis, uuid.uuid4().hex)
    log.create("sqrt", {"n": 30}, 30)
    log.started("w1", 1)
    for i in range(30):
        log.value(i, i)  # a burst: its progress is throttled, its last count always follows
    log.finished()

    def changes():
        return [e.json() for e in reader.events if e.event == "job" and e.data
                and e.json()["job"] == log.job_id]

    wait_for(lambda: any(c["change"] == "finished" for c in changes()), what="the job's end")
    got = changes()
    assert [c["change"] for c in got if c["change"] != "progress"] == [
        "queued", "started", "finished"]
    assert got[0]["task"] == "sqrt" and got[-1]["values"] == 30
    assert 1 <= sum(c["change"] == "progress" for c in got) <= 3
    seqs = [c["seq"] for c in got]
    assert seqs == sorted(set(seqs))
    reader_ids = [e.id for e in reader.events if e.id]
    # Resuming from the last id: no snapshot again, and nothing of this job twice.
    with httpx.stream("GET", f"{web.url}/events?list=5", timeout=5,
                      headers={"Last-Event-ID": reader_ids[-1]}) as r:
        first = []
        for event in parse_events(r, all_blocks=True):
            first.append(event)
            if event.event == "hello":
                break
    assert not any(e.event == "snapshot" for e in first)
    reader.close()


def stream_until(web, query: str, headers: dict, stop) -> list:
    """The events (every block) of ``/events?query`` until ``stop(event)``."""
    got = []
    with httpx.stream("GET", f"{web.url}/events?{query}", headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for event in parse_events(r, all_blocks=True):
            got.append(event)
            if stop(event):
                break
    return got


def test_a_job_whose_log_lost_entries_gets_one_reset_and_the_others_resume_exactly(web, redis):
    a, b = running_job(redis), running_job(redis)
    writer = JobLog(redis, a.job_id)
    writer.begin()
    for i in range(5):
        writer.value(i, i)                  # a: seqs 3..7
    b.value(0, "b0")                        # b: seq 3
    a_first, b_epoch = a.head().epoch, b.head().epoch
    cursor = f"{digest([a.job_id, b.job_id]).decode()}:7~{a_first}.3~{b_epoch}"
    lose(a, keep=5)                         # a failover lost a's values 3 and 4
    with pytest.raises(LogReset):
        writer.value(5, 5)
    a.retrying("the job's log was reset")   # seq 6, a's second epoch
    a.finished()
    b.value(1, "b1")
    b.finished()
    events = stream_until(web, f"job={a.job_id}&job={b.job_id}", {"Last-Event-ID": cursor},
                          lambda e: False)
    resets = [e.json() for e in events if e.event == "reset"]
    a_second = a.head().epoch
    assert resets == [{"job": a.job_id, "epoch": a_second, "after": 5, "values": 3,
                       "reason": "lost", "was": {"seq": 7, "epoch": a_first}}]
    assert [e for e in events if e.data][0].event == "reset"  # before anything else
    assert reader_seqs(events, a.job_id) == [6, 7] and reader_seqs(events, b.job_id) == [4, 5]
    ids = [e.id for e in events if e.id]
    # (b's end was written by a writer that did not begin its log: it begins b's next epoch)
    assert ids[-1].split(":")[1] == f"7~{a_second}.5~{b.head().epoch}"
    # That last cursor resumes with nothing more: no second reset.
    r = httpx.get(f"{web.url}/events?job={a.job_id}&job={b.job_id}",
                  headers={"Last-Event-ID": ids[-1]}, timeout=10)
    assert r.status_code == 204


def reader_seqs(events, job_id: str) -> list[int]:
    """The seqs of one job's entries among ``events``."""
    return [e.json()["seq"] for e in events if e.data and e.event not in (
        "hello", "tail", "trimmed", "missing", "ended", "reset") and e.json().get("job") == job_id]


def test_the_job_list_snapshots_again_past_its_end_or_in_another_of_its_epochs(web, redis):
    checkpoint = lambda e: e.id is not None  # noqa: E731  (the first write's end)
    first = stream_until(web, "list=3", {}, checkpoint)
    snapshot = next(e.json() for e in first if e.event == "snapshot")
    seq, epoch = snapshot["seq"], snapshot["epoch"]
    ours = first[-1].id.split(":")[1]
    assert ours == f"{seq}~{epoch}"
    for cursor, again in [(f"{seq}~{epoch}", False), (f"{seq + 10**6}~{epoch}", True),
                          (f"{seq}~not{epoch[:5]}", True), (f"{seq + 10**6}", True),
                          (f"{seq}", False)]:
        got = stream_until(web, f"list=3:{cursor}", {}, checkpoint)
        assert any(e.event == "snapshot" for e in got) is again, cursor
