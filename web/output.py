"""``GET /api/jobs/<id>/output``: everything a job printed, as one plain-text download.

The body is streamed page by page from the job's log (never built in memory), up to the entry
that was last when the request came, so the download of a running job ends. ``?attempt=K``
keeps one attempt's lines; without it a marker line says where each retry's output begins.
A log that may have been trimmed says first where the output it still holds begins.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Iterator

from flask import Blueprint, Response, request, stream_with_context

from jobcast.core.output import OutputText
from jobcast.web.admission import bound_writes, load_job, may_be_trimmed, parts
from jobcast.web.limits import client_address
from jobcast.web.services import state
from jobcast.web.surface import IntArg, job_scoped, returns

log = logging.getLogger(__name__)

bp = Blueprint("output", __name__)

DOWNLOAD_TIME = 600.0
"""Seconds one download may last: the write timeout only asks a reader for a little progress
every so often, so a few clients reading slowly enough could otherwise hold every download."""

ATTEMPT = IntArg("attempt", "only this attempt's output (1 is the first)", low=1)


@bp.get("/api/jobs/<job_id>/output")
@job_scoped
@returns(media="text/plain", args=(ATTEMPT,), errors=(429, 503),
         description="The job's output as text (an attachment), streamed",
         headers={"Content-Disposition": "attachment; filename=<id>-output.txt"})
def job_output(job_id: str):
    """The job's output as text (``?attempt=K``: that attempt's only)."""
    info = load_job(job_id)
    attempt = ATTEMPT.read() if ATTEMPT.given() else None
    client = client_address(state().config)
    downloads = state().downloads
    downloads.acquire(client)
    # A client that stops reading must not keep one of the few downloads forever.
    bound_writes(request.environ, state().config.write_timeout)
    jlog = state().logs.log(job_id)
    upto = info.last_seq
    trimmed = may_be_trimmed(upto, state().config.log_maxlen)

    def body() -> Iterator[bytes]:
        """The text, one chunk per page of the log; cut (no last chunk, so the client sees an
        incomplete download, and a line says why) once it has taken DOWNLOAD_TIME."""
        deadline = time.monotonic() + DOWNLOAD_TIME
        if trimmed:
            first_seq, _ = jlog.first_kept()
            if first_seq and first_seq > 1:
                yield (f"[jobcast] the log was trimmed: output before entry {first_seq} is no "
                       f"longer kept\n").encode()
        text = OutputText(attempt)
        for page in jlog.output(upto):
            if time.monotonic() > deadline:
                log.info("job %s: an output download to %s took over %g s and was cut",
                         job_id, client, DOWNLOAD_TIME)
                yield (f"\n[jobcast] this download took over {DOWNLOAD_TIME:g} s and was cut "
                       f"here: it is incomplete\n").encode()
                # As a client gone: the server closes the connection quietly, with no last chunk.
                raise BrokenPipeError(errno.EPIPE, "the download took too long")
            chunk = text.text(page)
            if chunk:
                yield from parts(chunk.encode())

    response = Response(stream_with_context(body()), mimetype="text/plain",
                        headers={"Cache-Control": "no-cache",
                                 "Content-Disposition": f'attachment; filename="{job_id}-output.txt"'})
    response.call_on_close(lambda: downloads.release(client))
    return response
