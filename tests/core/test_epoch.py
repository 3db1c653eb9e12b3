"""Epochs (jobcast.core.epoch): a log's incarnation, minted when it is created and whenever a
writer or reader proves entries were lost, so no seq is ever reused within one epoch.

On the session's real Redis. A failover that loses the primary's last writes is played by
:func:`tests.support.loss.lose`: the log as the promoted replica has it.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from typing import Iterator

import pytest
from redis import Redis

from jobcast.core.epoch import (LOST, PAST_END, UNKNOWN, Era, Head, LogReset, parse_eras,
                                parse_position, rebase, resolve, sse_id)
from jobcast.core.feed import Feed
from jobcast.core.joblog import JobLog
from jobcast.launcher.redisserver import RedisServer
from tests.support.services import own_database
from tests.support.wait import wait_for
from tests.support.loss import lose

DB = 10  # this module's own database, for the job feed (one per database)


@pytest.fixture
def replicated(tmp_path) -> Iterator[tuple[Redis, Redis]]:
    """Clients of a primary and of its replica, in sync: a test promotes the replica
    (``REPLICAOF NO ONE``) when the failover it plays comes."""
    with RedisServer(data_dir=tmp_path / "primary") as primary, \
            RedisServer(data_dir=tmp_path / "replica") as replica:
        old, new = Redis.from_url(primary.url), Redis.from_url(replica.url)
        try:
            old.config_set("repl-diskless-sync-delay", 0)  # in sync at once, not in 5 s
            new.replicaof("127.0.0.1", primary.port)
            wait_for(lambda: new.info("replication")["master_link_status"] == "up",
                     what="the replica to be in sync")
            yield old, new
        finally:
            old.close()
            new.close()


def new_log(redis, **options) -> JobLog:
    """A fresh job (queued, seq 1)."""
    log = JobLog(redis, uuid.uuid4().hex, **options)
    log.create("sqrt", {}, None)
    return log


def attempt(log: JobLog, values: int, worker: str = "w", number: int = 1) -> JobLog:
    """A writer that began ``log``, started attempt ``number`` and logged ``values`` values
    (seqs 3 on, in a fresh log)."""
    writer = JobLog(log.redis, log.job_id)
    writer.begin()
    writer.started(worker, number)
    for i in range(values):
        writer.value(i, i)
    return writer


def epochs_of(log: JobLog) -> list[str | None]:
    """The epoch of each entry, in order."""
    return [e.ep for e in log.entries()]


def test_a_new_log_has_an_epoch_and_every_entry_carries_it(redis):
    log = new_log(redis)
    log.started("w", 1)
    log.value(0, "a")
    head = log.head()
    assert head.exists and head.seq == 3 and head.values == 1 and len(head.epoch) == 8
    assert head.eras == (Era(head.epoch, 1, 0),)
    assert epochs_of(log) == [head.epoch] * 3
    assert log.position() == (False, 3, head.epoch)


def test_a_writer_that_finds_the_log_behind_what_it_wrote_begins_a_new_epoch_and_stops(redis):
    log = new_log(redis)
    first = log.head().epoch
    writer = JobLog(redis, log.job_id)
    assert writer.begin() == (True, 0, 1)
    writer.started("w", 1)
    for i in range(5):
        writer.value(i, i)           # seqs 3..7
    lose(log, keep=4)                # values 0 and 1 survived
    with pytest.raises(LogReset):
        writer.value(5, 5)
    head = log.head()
    assert head.epoch != first and head.seq == 4
    assert head.eras == (Era(first, 1, 0), Era(head.epoch, 5, 2))
    # RQ's failure path writes "retrying" with no expectations: its writer cannot prove the
    # log is what the attempt left, so the entry begins an epoch of its own, after seq 4.
    assert JobLog(redis, log.job_id).retrying("reset") == 5
    ending = log.head().epoch
    # The retry begins the new incarnation and resumes at the values that survived; a value
    # it repeats is refused by its index, as always.
    retry = JobLog(redis, log.job_id)
    assert retry.begin() == (True, 2, 2)
    retry.started("w2", 2)
    assert retry.value(1, 1) == -3
    assert [retry.value(i, i) for i in range(2, 5)] == [7, 8, 9]
    retry.finished()
    entries = list(log.entries())
    assert [e.seq for e in entries] == list(range(1, 11))
    # The retry's start begins an epoch of its own (nothing proves the log is what the last
    # attempt left); the "retrying" entry's epoch holds just that entry, and the reset's none.
    third = log.head().epoch
    assert [e.ep for e in entries] == [first] * 4 + [ending] + [third] * 5
    assert [e.i for e in entries if e.kind == "value"] == [0, 1, 2, 3, 4]
    assert [era.first_seq for era in log.head().eras] == [1, 5, 5, 6]
    assert [era.epoch for era in log.head().eras] == [first, head.epoch, ending, third]


@pytest.mark.parametrize("ending", ["retrying", "failed", "a refused value, then retrying"])
def test_an_attempts_end_written_after_a_loss_begins_one_new_epoch_and_reuses_no_seq(
        redis, ending):
    """A review's finding: an attempt whose first write after a lossy failover was its end
    (``retrying`` or ``failed``, which a writer writes whatever the epoch) wrote it at a lost
    entry's seq in the same epoch. A viewer that had that entry was never told it was lost,
    and never got the end."""
    log = new_log(redis)
    first = log.head().epoch
    writer = attempt(log, 3)         # seqs 3..5
    lose(log, keep=4)                # value 2, seq 5, is gone: a viewer may have had it
    if ending.startswith("a refused value"):
        with pytest.raises(LogReset):
            writer.value(3, 3)       # checked: refused, and the new epoch begins
        ending = "retrying"          # then the runner logs the attempt's end
    assert getattr(writer, ending)("the attempt failed") == 5
    head = log.head()
    # One new epoch, from seq 5: the refused value's and the end's are the same one.
    assert head.epoch != first and head.eras == (Era(first, 1, 0), Era(head.epoch, 5, 2))
    assert epochs_of(log) == [first] * 4 + [head.epoch]
    # The viewer that had seq 5 of the first epoch is reset to seq 4, where the loss began.
    reset = resolve(head, first, seq=5)
    assert reset is not None and (reset.reason, reset.after) == (LOST, 4)


@pytest.mark.parametrize("ending", ["retrying", "failed", "cancelled", "finished"])
def test_an_end_written_by_a_writer_that_did_not_begin_the_log_begins_an_epoch(redis, ending):
    """A review's finding: after a failover that lost the log's last entries, an end written
    by a writer that did not begin the log (a cancel, the watchdog, RQ's failure callback for a
    killed work-horse) took a lost entry's seq in the same epoch. A viewer that had that entry
    just went on: it never got the end, and, after a ``retrying``, got a value twice."""
    log = new_log(redis)
    first = log.head().epoch
    attempt(log, 5)                  # seqs 3..7 = values 0..4
    lose(log, keep=5)                # seqs 6 and 7 are gone: a viewer may have had them
    seq = getattr(JobLog(redis, log.job_id), ending)(*(() if ending == "finished" else ("x",)))
    assert seq == 6
    head = log.head()
    assert head.epoch != first and head.eras[-1] == Era(head.epoch, 6, 3)
    end = list(log.entries())[-1]
    assert (end.seq, end.ep, end.data["pe"]) == (6, head.epoch, first)
    # The viewer that had seq 6 or 7 of the first epoch is reset to seq 5, where the loss
    # began; one whose position survived just goes on.
    for had in (6, 7):
        reset = resolve(head, first, seq=had)
        assert reset is not None and (reset.reason, reset.after, reset.values) == (LOST, 5, 3)
    assert resolve(head, first, seq=5) is None


def test_a_writer_that_began_the_log_finds_a_cancel_ended_it_not_a_failover(redis):
    """A cancel begins an epoch (its writer did not begin the log): the attempt's next value
    was refused as of another incarnation (LogReset, "Redis lost entries"), not as ended."""
    log = new_log(redis)
    writer = attempt(log, 2)
    JobLog(redis, log.job_id).cancelled("someone")
    assert writer.value(2, 2) == -1
    assert writer.finished() == -1


def test_only_the_entry_that_begins_an_epoch_names_the_one_before_it(redis):
    log = new_log(redis)
    first = log.head().epoch
    writer = attempt(log, 1)                       # seqs 2 and 3: started, value 0
    writer.started("w2", 2)                        # a retry's start begins an epoch
    writer.value(1, 1)
    entries = list(log.entries())
    assert [e.data.get("pe") for e in entries] == [None, None, None, first, None]
    assert len(log.values_before(100, 10)) == 2


def test_a_writer_that_minted_an_epoch_goes_on_in_it_and_mints_no_second(redis):
    """A review's finding: a writer whose unchecked write found the log two entries behind it
    minted a new epoch, but kept the highest seq it had written before the loss: its next
    write found the log behind again and minted a second epoch, and a checked one was
    refused as of another epoch."""
    log = new_log(redis)
    first = log.head().epoch
    writer = attempt(log, 3)         # seqs 3..5
    lose(log, keep=3)                # values 1 and 2, seqs 4 and 5, are gone
    assert writer.retrying("the attempt failed") == 4
    second = log.head().epoch
    assert second != first and writer.epoch == second
    assert writer.value(1, 1) == 5   # checked: in the epoch it minted
    assert writer.failed("boom") == 6
    head = log.head()
    assert head.epoch == second and head.eras == (Era(first, 1, 0), Era(second, 4, 1))
    assert epochs_of(log) == [first] * 3 + [second] * 3


def test_a_writer_of_another_epoch_is_refused_before_its_value_is_checked(redis):
    log = new_log(redis)
    writer = JobLog(redis, log.job_id)
    writer.begin()
    writer.started("w", 1)
    writer.value(0, "a")
    rebase(redis, log.keys.meta, log.head())  # a reader minted a new epoch meanwhile
    with pytest.raises(LogReset):
        writer.value(0, "a")                  # would be -3 (a repeat), silently skipped
    with pytest.raises(LogReset):
        writer.finished()
    assert JobLog(redis, log.job_id).cancelled("cli") > 0  # one-shot writers: any epoch


def test_a_log_lost_with_its_store_fails_the_writer_that_began_it(redis):
    log = new_log(redis)
    writer = JobLog(redis, log.job_id)
    writer.begin()
    redis.delete(log.keys.meta, log.keys.log)
    with pytest.raises(LogReset):
        writer.started("w", 1)
    assert JobLog(redis, log.job_id).failed("gone") == -2  # a one-shot writer is just told


def test_a_restart_begins_an_epoch_in_which_a_lost_tail_is_never_reused_silently(redis):
    # The worker died with the primary: nobody can tell the retry what was lost.
    log = new_log(redis)
    first = log.head().epoch
    attempt(log, 5, "w1")                     # seqs 3..7, seen by some viewer
    lose(log, keep=5)
    retry = JobLog(redis, log.job_id)
    assert retry.begin() == (True, 3, 2)
    retry.started("w2", 2)                    # seq 6, in a new epoch beginning there
    head = log.head()
    assert head.epoch != first and head.eras[-1] == Era(head.epoch, 6, 3)
    # The viewer that had seq 7 of the first epoch is told; one that had seq 5 goes on.
    assert resolve(head, first, seq=7).reason == LOST and resolve(head, first, seq=5) is None
    assert retry.value(3, "again") == 7       # the retry writes on, in its own epoch
    assert retry.epoch == head.epoch


def test_a_first_attempt_run_again_after_a_failover_lost_its_start_reuses_no_seq_silently(
        replicated):
    """A review's finding: a failover that lost an attempt's ``started`` and values (the
    promoted replica had only ``queued``) lost the count of attempts with them, so the job run
    again was attempt 1 once more, which began no epoch: its entries took the lost ones' seqs
    in the epoch viewers had seen those in, and a viewer resuming from one went on in silence.
    A real failover: the replica has ``queued`` and is promoted, then the old primary takes
    the first attempt (its viewers see it), and the job runs again on the new primary."""
    old, new = replicated
    log = new_log(old)
    wait_for(lambda: JobLog(new, log.job_id).position() is not None,
             what="the replica to have the queued entry")
    new.replicaof("NO", "ONE")
    lost = attempt(log, 5, "w1")              # seqs 2..7, seen by some viewer
    seen = lost.epoch
    assert seen == log.head().epoch and [e.seq for e in log.entries()] == list(range(1, 8))
    # The job runs again on the promoted replica: nothing there says it ever ran.
    again = JobLog(new, log.job_id)
    assert again.begin() == (True, 0, 1)
    again.started("w2", 1)
    assert [again.value(i, i * 10) for i in range(5)] == [3, 4, 5, 6, 7]
    head = JobLog(new, log.job_id).head()
    assert again.epoch == head.epoch != seen
    assert [e.ep for e in JobLog(new, log.job_id).entries()] == [seen] + [head.epoch] * 6
    # The viewer that had seq 7 (or 2) of the lost attempt is reset to where the two
    # agree: after ``queued``.
    for had in (2, 7):
        reset = resolve(head, seen, seq=had)
        assert reset is not None and (reset.reason, reset.after) == (LOST, 1), (had, reset)
    # On a Redis that did not fail over, a first attempt's start begins no epoch (above:
    # the first attempt on the old primary wrote in the queued entry's).


def test_a_log_from_before_epochs_gets_one_at_its_next_append(redis):
    log = new_log(redis)
    log.started("w", 1)
    log.value(0, "a")
    redis.hdel(log.keys.meta, "epoch", "epochs")
    writer = JobLog(redis, log.job_id)
    writer.begin()
    assert writer.epoch is None
    assert writer.value(1, "b") == 4
    head = log.head()
    assert head.eras == (Era(head.epoch, 4, 1),) and epochs_of(log)[-1] == head.epoch
    assert writer.value(2, "c") == 5  # the writer began a log without one: no epoch check


def test_readers_that_find_a_log_behind_them_at_once_mint_one_epoch(redis):
    log = new_log(redis)
    seen = log.head()
    minted = rebase(redis, log.keys.meta, seen)
    again = rebase(redis, log.keys.meta, seen)  # the compare fails: the first one's epoch
    assert minted.epoch != seen.epoch and again.epoch == minted.epoch
    assert [e.epoch for e in again.eras] == [seen.epoch, minted.epoch]
    gone = JobLog(redis, uuid.uuid4().hex)
    assert not rebase(redis, gone.keys.meta, gone.head()).exists  # never re-creates a log
    assert not redis.exists(gone.keys.meta)


def test_the_history_keeps_the_last_sixteen_eras(redis):
    # Sixteen: a retry's start and an unproven end each begin one (a job retried five times
    # after killed work-horses, then cancelled, has twelve).
    log = new_log(redis)
    for _ in range(20):
        rebase(redis, log.keys.meta, log.head())
    head = log.head()
    assert len(head.eras) == 16 and head.eras[-1].epoch == head.epoch


def test_the_feed_begins_a_new_epoch_when_its_writer_finds_it_behind(redis_server):
    # A database of its own: the session's has one feed, which other tests read.
    with own_database(redis_server, DB) as (_, redis):
        feed = Feed(redis)
        for n in range(3):
            feed.append("job", "progress", n, {"values": n})
        first = feed.head().epoch
        kept = redis.xrange(feed.log, count=1)
        redis.delete(feed.log)            # the items after the first were lost
        redis.xadd(feed.log, kept[0][1], id=kept[0][0])
        redis.hset(feed.meta, "seq", 1)
        assert feed.append("job", "progress", 3, {"values": 3}) == 2
        items, head = feed.read(0, 10)
        assert head.epoch != first and [e.ep for e in items] == [first, head.epoch]
        assert head.eras[-1] == Era(head.epoch, 2, 0) and feed.position() == (False, 2, head.epoch)


def test_a_feed_writer_that_wrote_none_of_the_lost_items_still_never_reuses_their_seqs(
        replicated):
    # A real failover: a replica in step with the primary is promoted, then the primary takes
    # two items the replica never gets. A writer whose own items all survived writes on.
    old, new = replicated
    quiet = Feed(old)
    for n in range(3):
        quiet.append("quiet", "progress", n, {"values": n})
    first = quiet.head().epoch
    wait_for(lambda: Feed(new).position().seq == 3, what="the replica to have item 3")
    new.replicaof("NO", "ONE")
    busy = Feed(old)
    assert [busy.append("busy", "progress", n, {"values": n}) for n in (0, 1)] == [4, 5]
    # The quiet writer, reconnected to the promoted replica: what it wrote all survived.
    moved = Feed(new)
    moved.high = quiet.high
    assert [moved.append("quiet", "progress", n, {"values": n}) for n in (3, 4, 5)] == [4, 5, 6]
    items, head = moved.read(0, 10)
    assert head.epoch != first and [e.ep for e in items] == [first] * 3 + [head.epoch] * 3
    # A page that had item 5 of the lost epoch is told, not left to skip items 4 and 5.
    reset = resolve(head, first, seq=5)
    assert reset is not None and reset.reason == LOST and reset.after == 3
    assert resolve(head, first, seq=3) is None  # one that had only surviving items goes on


def test_a_terminal_entry_waits_for_replicas_only_as_long_as_told(redis, caplog):
    log = new_log(redis, terminal_replicas=1, terminal_wait_ms=50)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="jobcast.core.joblog"):
        assert log.finished() == 2  # the session's Redis has no replica: WAIT times out
    assert time.monotonic() - started >= 0.045
    assert "reached 0 of 1 replica(s)" in caplog.text
    assert log.value(0, "late") == -1


def test_a_new_runs_queued_entry_that_replaces_an_ended_log_waits_for_replicas_as_an_end_does(
        redis, caplog):
    """A review's finding: lost in a failover, the replacing entry would leave the old end to
    refuse the new run's values; it is as durable as the end it replaces."""
    log = new_log(redis, terminal_replicas=1, terminal_wait_ms=50)
    log.finished()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jobcast.core.joblog"):
        assert log.reopen("sqrt", {}, None)
    assert "its queued entry reached 0 of 1 replica(s)" in caplog.text


# -- resolve: where a resuming viewer stands ----------------------------------------------------

E1, E2, E3 = "AAAAAAAA", "BBBBBBBB", "CCCCCCCC"
# E1 from seq 1; 20 entries survived a failover (16 values); E2 from 21; E3 from 31 (24 values).
HEAD = Head(True, "running", seq=35, values=28, epoch=E3,
            eras=(Era(E1, 1, 0), Era(E2, 21, 16), Era(E3, 31, 24)))


@pytest.mark.parametrize("epoch, seq, values, expected", [
    (E3, 35, None, None),                                 # current, at the end
    (E3, 12, None, None),                                 # current, earlier
    (None, 30, None, None),                               # no epoch: trusted ...
    (None, 36, None, (E3, 35, 28, PAST_END)),             # ... unless past the end
    (E3, 40, None, (E3, 35, 28, PAST_END)),
    (E1, 20, None, None),                                 # E1's entries up to 20 survived
    (E1, 21, None, (E3, 20, 16, LOST)),                   # its seq 21 did not
    (E2, 30, None, None),
    (E2, 33, None, (E3, 30, 24, LOST)),
    ("ZZZZZZZZ", 3, None, (E3, 0, 0, UNKNOWN)),           # not in the history: re-created
    (E1, None, 16, None),                                 # a text viewer with 16 values
    (E1, None, 17, (E3, 20, 16, LOST)),
    (E3, None, 29, (E3, 35, 28, PAST_END)),
    (None, None, 28, None),
])
def test_a_resume_continues_when_its_position_survived_and_is_reset_otherwise(
        epoch, seq, values, expected):
    reset = resolve(HEAD, epoch, seq=seq, values=values)
    if expected is None:
        assert reset is None
    else:
        assert (reset.epoch, reset.after, reset.values, reset.reason) == expected
        assert reset.data(job="j")["was"] == ({"seq": seq} if seq is not None
                                              else {"values": values}) | {"epoch": epoch}


def test_positions_and_histories_are_read_strictly():
    assert parse_position("12") == (12, None)
    assert parse_position(" 12:Ab3-_9xZ ") == (12, "Ab3-_9xZ")
    for bad in ["", "x", "-1", "1:", "1:a.b", "1:a~b", "1:2:3", "1" * 17]:
        assert parse_position(bad) is None, bad
    assert parse_eras(b"A@1@0 junk B@5@3") == (Era("A", 1, 0), Era("B", 5, 3))
    assert sse_id(7, "Ab3kQ9xZ") == b"7:Ab3kQ9xZ" and sse_id(7, None) == b"7"


def test_each_loss_under_a_writer_mints_an_epoch_of_its_own(redis):
    # A writer offers the script the same spare epoch until a write may have minted it: one
    # kept after a mint would name a second incarnation after the first.
    log = new_log(redis)
    writer = attempt(log, 3)                    # seqs 3..5
    lose(log, keep=3)
    assert writer.retrying("the attempt failed") == 4   # minted, behind: a new epoch
    second = log.head().epoch
    assert writer.value(1, 1) == 5 and writer.value(2, 2) == 6   # values offer a spare
    lose(log, keep=5)
    assert writer.failed("boom") == 6           # behind again: another
    head = log.head()
    assert len({era.epoch for era in head.eras}) == 3 and head.epoch != second


def test_a_forked_child_writes_with_a_lock_of_its_own(redis):
    # The parent's lock may be held by one of its threads at the fork, and would never be
    # released in the child.
    log = new_log(redis)
    writer = attempt(log, 1)
    with writer._lock:
        pid = os.fork()
        if pid == 0:  # the child: write, and say how it went
            try:
                os._exit(0 if writer.value(1, "from the child") > 0 else 1)
            except BaseException:
                os._exit(2)
    exited = []

    def child_exited() -> bool:
        """The child has exited (its status kept)."""
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            exited.append(status)
        return bool(done)

    try:
        wait_for(child_exited, timeout=10, what="the child's write")
    finally:
        if not exited:  # hung on the parent's lock
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(exited[0]) == 0
    assert [e.data["v"] for e in log.entries() if e.kind == "value"][-1] == "from the child"
