"""Jobcast's web side: a Flask app that relays job logs to any number of viewers.

The app is in :mod:`web.app` (``create_app``, and ``state()`` for the views). This package
only names it, and loads it when first asked (PEP 562): gunicorn's arbiter imports
:mod:`web.handover` to find Jobcast's worker class, and must not load Flask, redis-py and the
rest of the app before each worker has patched the standard library with gevent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and readers; at run time see __getattr__
    from web.app import State, create_app, state

__all__ = ["State", "create_app", "state"]


def __getattr__(name: str):
    """Load :mod:`web.app` on first use of one of its names."""
    if name in __all__:
        from web import app

        return getattr(app, name)
    raise AttributeError(f"module 'web' has no attribute {name!r}")
