"""A stream's start (jobcast.web.admission): the request read once, where the stream begins
in the log (whole, resumed, at the tail, in a trimmed log), and what it says before the
first entry. Flask request contexts and the session's redis-server; no web server."""

from __future__ import annotations

import uuid

import pytest
from flask import Flask
from redis import Redis

from jobcast.core.epoch import LogReset
from jobcast.core.joblog import JobLog
from jobcast.core.keys import log_key
from jobcast.web.admission import (RETRY, Admission, Start, StreamRequest, may_be_trimmed,
                                   placed, retry_ms, stream_start)
from jobcast.web.errors import BadParam
from jobcast.web.frames import HTML, SSE, TEXT
from jobcast.web.params import MAX_SEQ
from tests.support.loss import lose
from tests.support.sse import parse_events

JOB = "a" * 32
app = Flask(__name__)


def parse(url: str, transport=SSE, headers: dict | None = None, job_id: str = JOB) -> StreamRequest:
    """StreamRequest.parse for a request to ``url``."""
    with app.test_request_context(url, headers=headers or {}):
        return StreamRequest.parse(job_id, transport)


def bad_param(url: str, transport=SSE, headers: dict | None = None, job_id: str = JOB) -> str:
    """The field a 400 names for this request."""
    with pytest.raises(BadParam) as exc:
        parse(url, transport, headers, job_id)
    assert exc.value.code == 400
    return exc.value.field


# -- StreamRequest.parse -------------------------------------------------------------------------

def test_a_plain_request_streams_the_whole_log():
    assert parse("/") == StreamRequest(JOB, SSE, resume=None, tail=None, start=0)


def test_last_event_id_or_after_resume_and_the_header_wins():
    assert parse("/", headers={"Last-Event-ID": "12"}).resume == 12
    assert parse("/?after=7").resume == 7
    assert parse("/?after=7", headers={"Last-Event-ID": " 12 "}).resume == 12
    assert parse("/?after=").resume is None


def test_tail_and_start_are_read_and_start_only_where_values_are_filtered():
    req = parse("/?tail=5&start=3", TEXT)
    assert (req.tail, req.start, req.resume) == (5, 3, None)
    assert parse("/?tail=0", HTML).tail == 0
    assert parse("/?tail=", HTML).tail is None
    # The SSE view has no ?start=: it is not even read, so a bad one is no error there.
    assert parse("/?start=x", SSE).start == 0


def test_a_resume_and_a_tail_are_both_kept_for_stream_start_to_decide():
    req = parse("/?tail=5", headers={"Last-Event-ID": "9"})
    assert (req.resume, req.tail) == (9, 5)


@pytest.mark.parametrize("url, headers, field", [
    ("/", {"Last-Event-ID": "x"}, "Last-Event-ID"),
    ("/", {"Last-Event-ID": "-1"}, "Last-Event-ID"),
    ("/?after=1.5", None, "after"),
    ("/?after=%EF%BC%91", None, "after"),          # a fullwidth digit one: isdigit(), not ASCII
    ("/?tail=-2", None, "tail"),
    ("/?tail=%D9%A3", None, "tail"),              # an Arabic-Indic digit three
    (f"/?tail={MAX_SEQ + 1}", None, "tail"),
    ("/?tail=" + "9" * 17, None, "tail"),
    ("/?start=abc", None, "start"),
])
def test_bad_values_are_a_400_naming_the_parameter(url, headers, field):
    assert bad_param(url, TEXT, headers) == field


def test_the_largest_position_is_accepted_and_a_malformed_id_is_a_400_naming_the_job_id():
    assert parse(f"/?after={MAX_SEQ}").resume == MAX_SEQ
    assert bad_param("/", job_id="no.pe") == "job_id"
    assert bad_param("/", job_id="x" * 129) == "job_id"


# -- Start -------------------------------------------------------------------------------------

def test_a_single_jobs_tail_event_has_the_id_of_where_it_begins_and_trimmed_none():
    """A review's finding: ``?tail=0`` on a quiet job sent only the tail event, with no id, so
    an EventSource cut off then reconnected with no Last-Event-ID, asked for a new tail at the
    log's new end, and skipped the values logged meanwhile, in silence."""
    begin = Start(after=10, tail=5, skipped=95, first_seq=8, first_value=5, lost=3)
    events = list(parse_events(begin.sse_prelude("Ab3kQ9xZ")))
    assert [(e.event, e.id) for e in events] == [("tail", "10:Ab3kQ9xZ"), ("trimmed", None)]
    assert events[1].last_id == "10:Ab3kQ9xZ", "trimmed moves the id no further"
    live = Start(after=22, tail=0, skipped=20)
    assert [(e.event, e.id) for e in parse_events(live.sse_prelude("Ab3kQ9xZ"))] == [
        ("tail", "22:Ab3kQ9xZ")]
    # The single-job stream gives its epoch (a stream of several jobs calls it without one).
    admitted = Admission(StreamRequest(JOB, SSE, tail=0), live, None, "Ab3kQ9xZ", False, 22)
    assert b"id: 22:Ab3kQ9xZ\nevent: tail\n" in admitted.preamble(1000)


def test_a_start_with_no_tail_and_nothing_lost_says_nothing():
    begin = Start(after=4)
    assert not begin.trimmed
    assert begin.sse_prelude() == b""
    assert begin.headers() == {} and begin.notice() == "" and begin.lost_values() == 0


def test_a_prelude_without_an_epoch_announces_tail_then_trimmed_without_ids():
    begin = Start(after=10, tail=5, skipped=95, first_seq=8, first_value=5, lost=3)
    events = list(parse_events(begin.sse_prelude()))
    assert [e.event for e in events] == ["tail", "trimmed"]
    assert events[0].json() == {"tail": 5, "skipped": 95, "after": 10}
    assert events[1].json() == {"after": 10, "first_seq": 8, "lost": 3, "first_value": 5}
    # No id: they never move the browser's Last-Event-ID.
    assert [(e.id, e.last_id) for e in events] == [(None, ""), (None, "")]


def test_values_lost_count_from_the_first_value_the_viewer_wanted():
    begin = Start(after=5, first_seq=23, first_value=20, lost=17)
    assert begin.trimmed
    assert begin.lost_values() == 20 and begin.lost_values(start=12) == 8
    assert begin.lost_values(start=25) == 0  # the viewer did not want those anyway
    assert Start(after=5, first_seq=23, first_value=None, lost=17).lost_values() == 0
    assert Start(after=5, first_value=20, lost=0).lost_values() == 0


def test_headers_and_notice_of_a_trimmed_log():
    begin = Start(after=0, first_seq=1_240, first_value=1_234, lost=1_239)
    assert begin.headers() == {"Jobcast-First-Value": "1234", "Jobcast-Values-Lost": "1234"}
    assert begin.headers(start=1_000) == {"Jobcast-First-Value": "1234", "Jobcast-Values-Lost": "234"}
    assert begin.notice() == "1,234 earlier values are no longer kept"
    assert begin.headers(start=2_000) == {} and begin.notice(start=2_000) == ""


def test_a_tail_names_its_first_value_in_a_header_and_says_how_many_it_skipped():
    begin = Start(after=1_097, tail=5, skipped=1_095)
    assert begin.headers() == {"Jobcast-First-Value": "1095"}
    assert begin.headers(start=1_200) == {"Jobcast-First-Value": "1200"}
    assert begin.notice() == "1,095 earlier values skipped (tail=5)"
    assert begin.notice(start=1_000) == "95 earlier values skipped (tail=5)"
    assert begin.notice(start=1_095) == ""


def test_a_tail_in_a_trimmed_log_begins_at_the_first_value_still_kept():
    begin = Start(after=0, tail=50, skipped=0, first_seq=23, first_value=20, lost=22)
    assert begin.headers() == {"Jobcast-First-Value": "20", "Jobcast-Values-Lost": "20"}
    assert begin.notice() == "20 earlier values are no longer kept"


def admission(transport, begin: Start) -> Admission:
    """An admission of a running job's stream that begins at ``begin``."""
    return Admission(StreamRequest(JOB, transport, tail=2), begin, None, None, False, 10)


def test_sse_begins_with_its_retry_text_with_nothing_and_html_with_its_page_and_notice():
    begin = Start(after=0, tail=2, skipped=8)
    sse = admission(SSE, begin).preamble(1234)
    assert sse == b"retry: 1234\n\n" + begin.sse_prelude()
    assert [e.retry for e in parse_events(sse, all_blocks=True)][0] == 1234
    assert admission(TEXT, begin).preamble(1234) == b""
    html = admission(HTML, begin).preamble(1234, "/static/frame.css")
    assert html.startswith(b"<!doctype html>") and b"8 earlier values skipped (tail=2)" in html
    assert b'href="/static/frame.css"' in html


def test_each_sse_connection_is_told_its_own_retry_within_the_range(redis):
    # Issue 21: EventSource does not jitter, so the server spreads reconnections itself.
    values = [retry_ms() for _ in range(100)]
    assert len(set(values)) > 1 and all(RETRY[0] <= v <= RETRY[1] for v in values)


# -- stream_start ------------------------------------------------------------------------------

def job_log(r: Redis, values: int, *, finished: bool = False,
            keep: int | None = None) -> JobLog:
    """A log on ``r`` with ``values`` values (value i has seq i + 3), trimmed to its last
    ``keep`` entries, exactly, as Redis trims a capped log."""
    log = JobLog(r, uuid.uuid4().hex)
    log.create("sqrt", {}, values)
    log.started("w", 1)
    for i in range(values):
        log.value(i, i)
    if finished:
        log.finished()
    if keep is not None:
        r.xtrim(log_key(log.job_id), maxlen=keep, approximate=False)
    return log


def start_of(log: JobLog, req: StreamRequest, maxlen: int) -> Start:
    """stream_start with the log's own last seq."""
    return stream_start(req, log, log.position()[1], maxlen)


def test_a_whole_log_starts_at_the_beginning_and_a_resume_after_the_given_seq(redis):
    log = job_log(redis, 20)
    assert start_of(log, StreamRequest(log.job_id, SSE), 100) == Start(after=0)
    assert start_of(log, StreamRequest(log.job_id, SSE, resume=7), 100) == Start(after=7)


def test_a_tail_starts_just_before_the_nth_last_value(redis):
    log = job_log(redis, 20)
    assert start_of(log, StreamRequest(log.job_id, SSE, tail=5), 100) == Start(
        after=17, tail=5, skipped=15)  # value 15 has seq 18
    assert start_of(log, StreamRequest(log.job_id, SSE, tail=0), 100) == Start(
        after=22, tail=0, skipped=20)
    # More than the log holds: the whole log, from queued on.
    assert start_of(log, StreamRequest(log.job_id, SSE, tail=50), 100) == Start(
        after=0, tail=50, skipped=0)


def test_a_tail_of_none_skips_the_values_up_to_its_position_not_those_logged_since(redis):
    """A review's finding: ``?tail=0`` counted the values logged by the time it asked, which
    could be past the position it starts from (read from memory, or a moment before): its
    first value's index (Jobcast-First-Value) was then too high, and a resume by ``?start=``
    from it skipped the values in between."""
    log = job_log(redis, 20)   # value i has seq i + 3
    assert stream_start(StreamRequest(log.job_id, TEXT, tail=0), log, 12, 100) == Start(
        after=12, tail=0, skipped=10)   # values 0..9 are up to seq 12
    log.append_many([("log", {"stream": "stdout", "text": "x", "attempt": 1}, 1.0)] * 20)
    assert stream_start(StreamRequest(log.job_id, TEXT, tail=0), log, 42, 100) == Start(
        after=42, tail=0, skipped=20)   # past 20 output lines, its newest value is 19
    assert stream_start(StreamRequest(log.job_id, TEXT, tail=0), log, 2, 100) == Start(
        after=2, tail=0, skipped=0)     # queued, started: no value yet


def test_a_resume_wins_over_a_tail_so_a_reconnect_stays_exact(redis):
    log = job_log(redis, 20)
    assert start_of(log, StreamRequest(log.job_id, SSE, resume=9, tail=5), 100) == Start(after=9)


def test_a_resume_into_a_trimmed_log_says_what_was_lost(redis):
    log = job_log(redis, 30, keep=10)  # seqs 23..32 kept: values 20..29
    assert may_be_trimmed(32, 10) and not may_be_trimmed(10, 10)
    begin = start_of(log, StreamRequest(log.job_id, SSE, resume=5), 10)
    assert begin == Start(after=5, first_seq=23, first_value=20, lost=17)
    assert begin.cursor == 22  # its catch-up reads on past what it was told is lost, once
    assert begin.lost_values() == 20
    (trimmed,) = parse_events(begin.sse_prelude())
    assert trimmed.event == "trimmed" and trimmed.id is None
    assert trimmed.json() == {"after": 5, "first_seq": 23, "lost": 17, "first_value": 20}


def test_nothing_is_lost_from_a_position_the_trimmed_log_still_holds_or_has_passed(redis):
    log = job_log(redis, 30, keep=10, finished=True)  # seqs 24..33
    for after in (23, 25, 33):
        begin = start_of(log, StreamRequest(log.job_id, SSE, resume=after), 10)
        assert not begin.trimmed and begin.lost == 0, after


def test_a_text_resume_into_a_log_trimmed_down_to_output_lines_is_told_which_values_are_gone(
        redis):
    """A review's finding: a text or HTML reader that had 2 values, resuming into a log now
    holding only lines (more than the lookahead of them), got no Jobcast-Values-Lost nor a
    notice, and took value 5 for value 2."""
    log = job_log(redis, 5)
    log.append_many([("log", {"stream": "stdout", "text": str(k), "attempt": 1}, 1.0)
                     for k in range(6_000)])
    redis.xtrim(log_key(log.job_id), maxlen=100, approximate=False)
    begin = start_of(log, StreamRequest(log.job_id, TEXT, start=2), 100)
    assert begin.trimmed and begin.first_value == 5
    assert begin.headers(start=2) == {"Jobcast-First-Value": "5", "Jobcast-Values-Lost": "3"}
    assert begin.notice(start=2) == "3 earlier values are no longer kept"


def test_tail_0_of_an_ended_job_still_gets_its_end(redis):
    """A newcomer's finding: ``?tail=0`` of a job that had ended started after its last entry,
    its end: the HTML stream said values were skipped and never "Done", and SSE answered 204.
    Live from there is only the end, which every stream ends with."""
    log = job_log(redis, 5, finished=True)
    ended, last_seq, _ = log.position()
    assert ended
    begin = stream_start(StreamRequest(log.job_id, HTML, tail=0), log, last_seq, 100, ended)
    assert (begin.after, begin.skipped) == (last_seq - 1, 5)
    running = job_log(redis, 5)
    begin = stream_start(StreamRequest(running.job_id, HTML, tail=0), running,
                         running.position()[1], 100, False)
    assert begin.after == running.position()[1], "a running job's live values only"


def test_a_log_that_never_held_more_than_the_cap_is_not_checked_for_trimming(redis):
    log = job_log(redis, 30, keep=10)
    # With a cap above the last seq the log cannot have lost anything: not even read.
    assert start_of(log, StreamRequest(log.job_id, SSE, resume=5), 100) == Start(after=5)


def test_a_tail_longer_than_a_trimmed_log_begins_with_the_first_value_kept(redis):
    log = job_log(redis, 30, keep=10)
    begin = start_of(log, StreamRequest(log.job_id, TEXT, tail=50), 10)
    assert begin == Start(after=0, tail=50, skipped=0, first_seq=23, first_value=20, lost=22)
    assert begin.headers() == {"Jobcast-First-Value": "20", "Jobcast-Values-Lost": "20"}
    # A tail the trimmed log still holds loses nothing.
    begin = start_of(log, StreamRequest(log.job_id, TEXT, tail=5), 10)
    assert (begin.after, begin.tail, begin.skipped, begin.lost) == (27, 5, 25, 0)
    assert begin.headers() == {"Jobcast-First-Value": "25"}


# -- a resume in another incarnation of the log (jobcast.core.epoch) ----------------------------

def test_a_resume_names_its_epoch_and_an_old_numeric_one_is_still_read(redis):
    assert (parse("/", headers={"Last-Event-ID": "12:Ab3kQ9xZ"}).resume,
            parse("/", headers={"Last-Event-ID": "12:Ab3kQ9xZ"}).epoch) == (12, "Ab3kQ9xZ")
    assert parse("/?after=7:E-_1").epoch == "E-_1" and parse("/?after=7").epoch is None
    text = parse("/?start=3&epoch=Ab3kQ9xZ", TEXT)
    assert (text.start, text.epoch) == (3, "Ab3kQ9xZ")
    assert parse("/?epoch=Ab3kQ9xZ", SSE).epoch is None  # SSE carries it in its id
    assert bad_param("/", headers={"Last-Event-ID": "12:"}) == "Last-Event-ID"
    assert bad_param("/?after=1:a.b") == "after"
    assert bad_param("/?start=3&epoch=a:b", HTML) == "epoch"


def lossy_log(r: Redis) -> tuple[JobLog, str, str]:
    """A log whose first epoch lost seqs 6..7 (values 3..4) in a failover: the second began at
    seq 6 with 3 values, and has 2 entries; (log, first epoch, second epoch)."""
    log = job_log(r, 5)                # seqs 1..7
    first = log.head().epoch
    writer = JobLog(log.redis, log.job_id)
    writer.begin()
    lose(log, keep=5)
    with pytest.raises(LogReset):
        writer.value(5, 5)
    log.retrying("reset")              # seq 6
    log.started("w", 2)                # seq 7
    return log, first, log.head().epoch


def test_a_resume_in_the_current_epoch_costs_no_read_and_one_in_a_survived_prefix_goes_on(redis):
    log, first, second = lossy_log(redis)
    position = log.position()
    req = StreamRequest(log.job_id, SSE, resume=7, epoch=second)
    log.redis = None  # no Redis read may happen for the common resume
    assert placed(req, position, log) == (req, None, second)
    log, first, second = lossy_log(redis)
    req = StreamRequest(log.job_id, SSE, resume=5, epoch=first)
    assert placed(req, log.position(), log) == (req, None, second)


def test_a_resume_past_what_survived_is_moved_back_and_told_once(redis):
    log, first, second = lossy_log(redis)
    req, reset, epoch = placed(StreamRequest(log.job_id, SSE, resume=7, epoch=first),
                               log.position(), log)
    assert (req.resume, epoch, reset.after, reset.values, reset.reason) == (5, second, 5, 3, "lost")
    text, reset, _ = placed(StreamRequest(log.job_id, TEXT, start=5, epoch=first),
                            log.position(), log)
    assert (text.start, text.resume, reset.values) == (3, None, 3)
    assert reset.header() == f"epoch={second}; after=5; values=3; reason=lost"


def test_a_claim_past_the_end_resets_that_client_only_and_mints_nothing(redis):
    log, first, second = lossy_log(redis)
    req, reset, epoch = placed(StreamRequest(log.job_id, SSE, resume=99, epoch=second),
                               log.position(), log)
    assert (req.resume, reset.reason, epoch) == (7, "past_end", second)
    assert log.head().epoch == second
    assert placed(StreamRequest(log.job_id, TEXT, start=3), log.position(), log)[1] is None
    assert placed(StreamRequest(log.job_id, TEXT, start=9), log.position(), log)[1].values == 3


def test_a_reset_comes_before_anything_else_of_the_stream(redis):
    log, first, second = lossy_log(redis)
    _, reset, _ = placed(StreamRequest(log.job_id, SSE, resume=7, epoch=first), log.position(),
                         log)
    begin = Start(after=5, tail=None)
    sse = Admission(StreamRequest(JOB, SSE), begin, reset, second, False, 10).preamble(1000)
    events = list(parse_events(sse))
    assert [(e.event, e.id) for e in events] == [("reset", f"5:{second}")]
    html = Admission(StreamRequest(JOB, HTML), begin, reset, second, False, 10).preamble(
        1000, "/static/frame.css")
    assert html.split(b"\n")[1].startswith(b'<p class="note reset">')  # right after the head


def test_a_tail_begins_its_viewer_with_its_count_of_values_and_a_resume_knows_none():
    """The count a text or HTML viewer starts from (how many values its position covers),
    so that a trim while it catches up is said only when values were lost."""
    tail = Admission(StreamRequest(JOB, TEXT, tail=2), Start(after=17, tail=2, skipped=15),
                     None, None, False, 30).viewer(())
    assert (tail.cursor, tail.values) == (17, 15)
    resume = Admission(StreamRequest(JOB, TEXT, resume=17), Start(after=17), None, None, False,
                       30).viewer(())
    assert (resume.cursor, resume.values) == (17, None)    # not known: told of any trim
    trimmed = Admission(StreamRequest(JOB, TEXT, tail=2),
                        Start(after=17, tail=2, skipped=15, lost=4, first_seq=22), None, None,
                        False, 30).viewer(())
    assert trimmed.values is None
    fresh = Admission(StreamRequest(JOB, TEXT), Start(after=0), None, None, False, 30).viewer(())
    assert fresh.values == 0
