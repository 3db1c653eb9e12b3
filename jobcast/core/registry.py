"""The task registry: the tasks every service knows, by name.

The built-in tasks (:mod:`jobcast.core.tasks`) are imported here, and the modules named in
``JOBCAST_TASKS`` on first use, so the web form, the API, the CLI and the worker all see the
same tasks and check the same rules before anything is enqueued. Tasks are declared with
:func:`jobcast.core.task.task` (also ``jobcast.task``).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

# Imported for what it does: it declares the built-in tasks.
from jobcast.core import tasks  # noqa: F401
from jobcast.core.settings import get_settings
from jobcast.core.task import TASKS, ParamError, Task, task

__all__ = ["ParamError", "Task", "UnknownTask", "task", "get_task", "all_tasks",
           "load_user_tasks", "RUNNER", "ON_FAILURE", "LEGACY_PATHS"]

log = logging.getLogger(__name__)

# What RQ runs for a task's job, and its failure callback, by dotted path: the producer that
# enqueues the job and the worker that recognises it import neither from the other.
RUNNER = "jobcast.worker.runner.run_task"
ON_FAILURE = "jobcast.worker.runner.on_failure"

LEGACY_PATHS = {
    "worker.runner.run_task": RUNNER,
    "worker.runner.on_failure": ON_FAILURE,
}
"""Dotted paths that jobs enqueued before Jobcast lived under one ``jobcast`` namespace carry
in RQ, and where those functions live now (:class:`jobcast.core.workers.JobcastJob` maps them)."""


class UnknownTask(LookupError):
    """No task is registered under this name."""


_loaded = False


def load_user_tasks() -> None:
    """Import the modules named in ``JOBCAST_TASKS`` (comma-separated), once per process."""
    global _loaded
    if _loaded:
        return
    for module in get_settings().task_modules():
        log.info("loading tasks from %s", module)
        importlib.import_module(module)
    # Only now: a module that failed to import is tried (and its error raised) again, not
    # hidden behind "unknown task" for every job that follows.
    _loaded = True


def get_task(name: Any) -> Task:
    """The task registered as ``name``, or raise UnknownTask."""
    load_user_tasks()
    if not isinstance(name, str) or name not in TASKS:
        raise UnknownTask(name)
    return TASKS[name]


def all_tasks() -> dict[str, Task]:
    """Every registered task, by name."""
    load_user_tasks()
    return dict(TASKS)
