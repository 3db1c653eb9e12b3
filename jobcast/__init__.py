"""Jobcast's public Python API, and the foundation every service stands on.

In any RQ job::

    from jobcast import emit
    emit(value)                       # or emit(value, total=n)

On the workers (the one line that logs each job's start and end)::

    rq worker -w jobcast.Worker

In your Flask app::

    jobcast.init_app(app, url_prefix="/jobcast")

The package's modules are the foundation (``jobcast.settings``, ``jobcast.joblog``,
``jobcast.registry``, ``jobcast.urls``), which import nothing else of Jobcast's. The public
names below live in the services (``worker``, ``producer``, ``web``) and are imported on first
use (PEP 562), so importing the foundation, or ``from jobcast import emit`` in a job module,
loads neither Flask nor the web app.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from producer.enqueue import enqueue
    from web.handover import StreamWorker
    from web.mount import UnsuitableWorker, init_app
    from worker.emit import NotInJob, emit, resume
    from worker.hook import LifecycleMixin, SimpleWorker, Worker

# Public name -> the module that defines it.
_LAZY = {
    "emit": "worker.emit",
    "resume": "worker.emit",
    "NotInJob": "worker.emit",
    "Worker": "worker.hook",
    "SimpleWorker": "worker.hook",
    "LifecycleMixin": "worker.hook",
    "enqueue": "producer.enqueue",
    "init_app": "web.mount",
    "UnsuitableWorker": "web.mount",
    # gunicorn's gevent worker whose streams hand their socket to the relay: `-k jobcast.StreamWorker`
    "StreamWorker": "web.handover",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    """Import a public name from its service on first use (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'jobcast' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's attributes, the lazy public names included."""
    return sorted(set(globals()) | set(__all__))
