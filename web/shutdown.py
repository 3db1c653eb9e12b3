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
_stops: dict[int, Callable[[], None]] = {}
"""What that handler runs, one per owner (each app's State): a process may serve two apps."""


def spawn(func: Callable[[], None]) -> None:
    """Run ``func`` soon, outside the signal handler, which must not block.

    Under gevent the handler runs in an event-loop callback, where even starting a
    (monkey-patched) thread would block, so a greenlet is spawned instead.
    """
    green.spawn(func)


def install(stop: Callable[[], None], owner: object) -> bool:
    """Have the gunicorn worker's SIGTERM handler also run ``stop``
    (:func:`jobcast.web.services.stop`) for ``owner`` (an app's State: once each, however
    often asked); False when not in a gunicorn worker (in its master, with ``--preload``, the
    services' start in the worker installs it), or not in its main thread, where alone a
    signal handler can be set."""
    global _installed_in, _stops
    if _installed_in == os.getpid():
        _stops[id(owner)] = stop
        return True
    previous = signal.getsignal(signal.SIGTERM)
    handler_owner = getattr(previous, "__self__", None)
    if handler_owner is None or not type(handler_owner).__module__.startswith("gunicorn.workers"):
        return False

    def on_sigterm(signum, frame):
        """Let gunicorn stop accepting, and wake every stream to end (off the signal frame)."""
        previous(signum, frame)
        for each in list(_stops.values()):
            spawn(each)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread (gthread serves requests in threads of its own)
        return False
    _installed_in, _stops = os.getpid(), {id(owner): stop}
    log.info("streams end on SIGTERM within gunicorn's graceful timeout")
    return True
