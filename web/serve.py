"""`jobcast web`: run the Flask app under gunicorn with Jobcast's gunicorn.conf.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONF = Path(__file__).with_name("gunicorn.conf.py")


def gunicorn_argv(bind: str, workers: int | None = None, extra: list[str] | None = None) -> list[str]:
    """The gunicorn command line for ``bind`` ("host:port")."""
    argv = [sys.executable, "-m", "gunicorn", "--config", str(CONF), "--bind", bind]
    if workers:
        argv += ["--workers", str(workers)]
    return argv + list(extra or [])


def serve(bind: str, workers: int | None = None) -> None:
    """Replace this process with gunicorn, so signals reach it directly."""
    argv = gunicorn_argv(bind, workers)
    os.execv(argv[0], argv)
