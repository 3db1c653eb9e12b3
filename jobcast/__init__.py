"""Jobcast's public Python API.

In any RQ job::

    from jobcast import emit
    emit(value)                       # or emit(value, total=n)

On the workers (the one line that logs each job's start and end)::

    rq worker -w jobcast.Worker

In your Flask app::

    jobcast.init_app(app, url_prefix="/jobcast")

This package only re-exports; the code lives in ``worker`` and ``web``. Names that need
Flask or the task registry are imported on first use, so ``from jobcast import emit`` in a job
module stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker.emit import NotInJob, emit, resume
from worker.hook import LifecycleMixin, SimpleWorker, Worker

if TYPE_CHECKING:
    from producer.enqueue import enqueue
    from web.handover import StreamWorker
    from web.mount import UnsuitableWorker, init_app

__all__ = ["emit", "resume", "NotInJob", "Worker", "SimpleWorker", "LifecycleMixin",
           "init_app", "UnsuitableWorker", "StreamWorker", "enqueue"]

_LAZY = {
    "init_app": ("web.mount", "init_app"),
    "UnsuitableWorker": ("web.mount", "UnsuitableWorker"),
    "enqueue": ("producer.enqueue", "enqueue"),
    # gunicorn's gevent worker whose streams hand their socket to the relay: `-k jobcast.StreamWorker`
    "StreamWorker": ("web.handover", "StreamWorker"),
}


def __getattr__(name: str) -> Any:
    """Import the web and producer names on first use (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'jobcast' has no attribute {name!r}")
    from importlib import import_module

    module, attr = _LAZY[name]
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value
