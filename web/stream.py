"""The streams: one job's log as plain text lines, as SSE, and as streamed HTML.

Each view names its transport; everything else, the request's checks, where the stream
starts, the subscription, the slot and the handing over to the relay, is the one prologue in
:mod:`jobcast.web.admission`. All three frame entries with :mod:`jobcast.web.frames`.
"""

from __future__ import annotations

from flask import Blueprint

from jobcast.core.urls import JOB_PATHS
from jobcast.web.admission import StreamRequest, admit
from jobcast.web.frames import HTML, SSE, TEXT
from jobcast.web.models import SseEvent
from jobcast.web.surface import (AFTER, EPOCH, EPOCH_HEADERS, LAST_EVENT_ID, START, TAIL,
                                 VALUE_HEADERS, Answer, frameable, job_scoped, stream)

bp = Blueprint("stream", __name__)


@bp.route(JOB_PATHS["stream"], methods=["GET", "HEAD"])
@job_scoped
@stream(TEXT, START, EPOCH, TAIL, AFTER, LAST_EVENT_ID, headers=VALUE_HEADERS)
def text_stream(job_id: str):
    """``text/plain``: one ``"{}\\n".format(value)`` line per value; ends with the job.

    ``?start=K`` skips the first K values, so a reader that counted lines can resume (with
    ``&epoch=`` the ``Jobcast-Epoch`` it was told: a resume into another epoch, or past the
    end, starts where ``Jobcast-Reset`` says); ``?tail=N`` begins with the last N values.
    ``?after=`` (or ``Last-Event-ID``) resumes after an entry's ``<seq>:<epoch>``, as SSE does.
    """
    return admit(StreamRequest.parse(job_id, TEXT))


@bp.route(JOB_PATHS["events"], methods=["GET", "HEAD"])
@job_scoped
@stream(SSE, AFTER, TAIL, LAST_EVENT_ID, model=SseEvent, headers=EPOCH_HEADERS, more={
    204: Answer("The job has ended and nothing is left after the given seq", media=None)})
def sse_stream(job_id: str):
    """Server-sent events: ``id:`` is the entry's ``<seq>:<epoch>``, the event type its kind.

    Resumes after ``Last-Event-ID`` (or ``?after=``) with no gap and no duplicate;
    ``?tail=N`` begins with the last N values. ``reset`` (when the position is not in the log
    as it is), ``tail`` and ``trimmed`` events come first.
    """
    return admit(StreamRequest.parse(job_id, SSE))


@bp.route(JOB_PATHS["frame"], methods=["GET", "HEAD"])
@job_scoped
@frameable
@stream(HTML, START, EPOCH, TAIL, AFTER, LAST_EVENT_ID, headers=VALUE_HEADERS)
def html_stream(job_id: str):
    """Streamed HTML for an ``<iframe>``: a stylesheet first, then ``<p>i: value</p>`` each.

    Every value is escaped (:mod:`jobcast.web.frames`), so a value cannot inject markup. It
    resumes as the text stream does.
    """
    return admit(StreamRequest.parse(job_id, HTML))
