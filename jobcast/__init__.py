"""Jobcast's public Python API. Everything of Jobcast imports as ``jobcast.…``.

In any RQ job::

    from jobcast import emit
    emit(value)                       # or emit(value, total=n)

On the workers (the one line that logs each job's start and end)::

    rq worker -w jobcast.Worker

In your Flask app::

    jobcast.init_app(app, url_prefix="/jobcast")

The package is layered (``lint-imports`` checks it, see ``pyproject.toml``):

- ``jobcast.core``: the foundation (settings, the log store, ``JobLog``, the task registry
  and the built-in tasks), which imports no service;
- ``jobcast.producer`` and ``jobcast.worker`` (the folders ``producer/`` and ``worker/``);
- ``jobcast.web`` (the folder ``web/``) and ``jobcast.launcher`` (``jobcast up``);
- ``jobcast.cli``: the ``jobcast`` command and its terminal client.

The public names below are imported on first use (PEP 562), so ``from jobcast import emit``
in a job module loads neither Flask nor the web app.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobcast.core.task import task
    from jobcast.producer.enqueue import enqueue
    from jobcast.web.handover import StreamWorker
    from jobcast.web.mount import UnsuitableWorker, init_app
    from jobcast.worker.emit import NotInJob, emit, resume
    from jobcast.worker.hook import LifecycleMixin, SimpleWorker, Worker

# Public name -> the module that defines it.
_LAZY = {
    "emit": "jobcast.worker.emit",
    "resume": "jobcast.worker.emit",
    "NotInJob": "jobcast.worker.emit",
    "Worker": "jobcast.worker.hook",
    "SimpleWorker": "jobcast.worker.hook",
    "LifecycleMixin": "jobcast.worker.hook",
    "enqueue": "jobcast.producer.enqueue",
    "task": "jobcast.core.task",
    "init_app": "jobcast.web.mount",
    "UnsuitableWorker": "jobcast.web.mount",
    # gunicorn's gevent worker whose streams hand their socket to the relay: `-k jobcast.StreamWorker`
    "StreamWorker": "jobcast.web.handover",
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
