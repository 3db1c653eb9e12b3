"""Greenlet or thread: the one place that asks whether this process runs under gevent.

Under gunicorn's gevent workers (Jobcast's own, :mod:`jobcast.web.handover`, among them)
gevent has patched ``threading``, and work started beside the caller is a greenlet. Under a
threaded server (Flask's dev server), it is a daemon thread.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import gevent
from gevent import monkey


def is_green() -> bool:
    """True under gevent's monkey-patching (gunicorn's gevent workers). Asked at each call:
    the worker patches when it starts, which may come after this module is imported."""
    return bool(monkey.is_module_patched("threading"))


def spawn(func: Callable[..., Any], *args: Any, green: bool | None = None) -> Any:
    """Run ``func(*args)`` in a new greenlet when ``green`` (default: :func:`is_green`), else
    in a daemon thread; returns that greenlet or thread, started."""
    if is_green() if green is None else green:
        return gevent.spawn(func, *args)
    thread = threading.Thread(target=func, args=args, daemon=True)
    thread.start()
    return thread
