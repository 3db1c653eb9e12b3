"""Graceful shutdown under gunicorn: on SIGTERM, end every stream so clients reconnect.

Gunicorn's worker stops accepting on SIGTERM and then waits up to ``graceful_timeout`` for
open requests; endless streams would hold it there and then be cut. Instead the relay ends
every viewer: SSE streams end with a short ``retry:`` and EventSource resumes elsewhere from
its Last-Event-ID; text and HTML streams end and their readers resume by value count.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Callable

from jobcast.web import green

log = logging.getLogger(__name__)

_installed_in: int | None = None
"""The process whose SIGTERM handler :func:`install` chained onto (once per process)."""


def spawn(func: Callable[[], None]) -> None:
    """Run ``func`` soon, outside the signal handler, which must not block.

    Under gevent the handler runs in an event-loop callback, where even starting a
    (monkey-patched) thread would block, so a greenlet is spawned instead.
    """
    green.spawn(func)


def install(stop: Callable[[], None]) -> bool:
    """Chain ``stop`` (:func:`jobcast.web.services.stop`) onto the gunicorn worker's SIGTERM
    handler, once per process; False when not in a gunicorn worker (in its master, with
    ``--preload``, the services' start in the worker installs it)."""
    global _installed_in
    if _installed_in == os.getpid():
        return True
    previous = signal.getsignal(signal.SIGTERM)
    owner = getattr(previous, "__self__", None)
    if owner is None or not type(owner).__module__.startswith("gunicorn.workers"):
        return False
    _installed_in = os.getpid()

    def on_sigterm(signum, frame):
        """Let gunicorn stop accepting, and wake every stream to end (off the signal frame)."""
        previous(signum, frame)
        spawn(stop)

    signal.signal(signal.SIGTERM, on_sigterm)
    log.info("streams end on SIGTERM within gunicorn's graceful timeout")
    return True
