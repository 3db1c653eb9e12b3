"""Refuse to serve streams from a gunicorn worker class that cannot hold them.

Every viewer keeps its request open until the job ends. Gunicorn's gevent worker holds
thousands of such requests per process; its sync worker holds one, so a single viewer would
stall every other request to that process, silently. The check runs when the app is created
inside a gunicorn worker (and again when its services start at the first request, for ``--preload``).
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)

FIX = ("run gunicorn with the gevent worker: `gunicorn --worker-class gevent ...` "
       "(`-k gevent`), or `worker_class = \"gevent\"` in gunicorn.conf.py")


class UnsuitableWorker(RuntimeError):
    """The process serves requests with a worker class that cannot hold live streams."""


def gunicorn_worker() -> object | None:
    """The gunicorn worker serving this process, found through its SIGTERM handler; else None."""
    owner = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    # A worker class of gunicorn's own, or one made from it (jobcast.StreamWorker).
    if owner is None or not any(cls.__module__.startswith("gunicorn.workers")
                                for cls in type(owner).__mro__):
        return None
    return owner


def check_worker_class(worker: object | None = None) -> str | None:
    """Raise UnsuitableWorker under gunicorn's sync worker (or a one-thread gthread worker).

    Returns the worker class name, or None when not under gunicorn (Flask's dev server and
    tests use threads, one per request, which is enough there). Other worker classes that
    might hold streams get a warning naming the limit.
    """
    worker = worker if worker is not None else gunicorn_worker()
    if worker is None:
        return None
    modules = {cls.__module__ for cls in type(worker).__mro__}
    name = type(worker).__name__
    if "gunicorn.workers.ggevent" in modules:
        return name
    threads = getattr(getattr(worker, "cfg", None), "threads", 1) or 1
    if "gunicorn.workers.gthread" in modules and threads > 1:
        log.warning("Jobcast: gunicorn's gthread worker holds at most %s streams per process "
                    "(--threads); each viewer keeps a thread until its job ends and further "
                    "requests wait. To serve many viewers, %s.", threads, FIX)
        return name
    if "gunicorn.workers.sync" in modules or "gunicorn.workers.gthread" in modules:
        raise UnsuitableWorker(
            f"Jobcast cannot stream from gunicorn's {name}: it serves one request at a time per "
            f"process and every viewer of a job holds its request open until the job ends, so "
            f"one viewer would stall all other requests. Fix: {FIX}.")
    log.warning("Jobcast: untested gunicorn worker class %s; live streams need one that holds "
                "many long requests at once. If streams hang, %s.", name, FIX)
    return name
