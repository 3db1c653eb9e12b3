"""`jobcast web`: run the Flask app under gunicorn with Jobcast's gunicorn.conf.py."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from jobcast.core.process import pid_alive
from jobcast.core.settings import Settings, get_settings

CONF = Path(__file__).with_name("gunicorn.conf.py")


def gunicorn_argv(bind: str, workers: int | None = None, extra: list[str] | None = None) -> list[str]:
    """The gunicorn command line for ``bind`` ("host:port")."""
    argv = [sys.executable, "-m", "gunicorn", "--config", str(CONF), "--bind", bind]
    if workers:
        argv += ["--workers", str(workers)]
    return argv + list(extra or [])


def metrics_env(settings: Settings) -> dict[str, str]:
    """gunicorn's environment: PROMETHEUS_MULTIPROC_DIR at a fresh directory unless set.

    Every gunicorn worker then records its metrics there and ``GET /metrics`` merges them.
    It must be set before any worker imports prometheus_client, hence here, before gunicorn.
    """
    environ = dict(os.environ)
    if not settings.prometheus_multiproc_dir:
        environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir()
    return environ


METRICS_PREFIX = "jobcast-metrics-"


def metrics_dir() -> str:
    """A new directory for this server's metrics, named for this process (gunicorn's master
    once this process becomes it). gunicorn replaces this process, so nothing removes the
    directory when the server ends: the directories of servers that have ended are removed
    here, at the next start."""
    tmp = Path(tempfile.gettempdir())
    for old in tmp.glob(f"{METRICS_PREFIX}*-*"):
        pid = old.name[len(METRICS_PREFIX):].partition("-")[0]
        try:
            if pid.isdigit() and old.stat().st_uid == os.getuid() and not pid_alive(int(pid)):
                shutil.rmtree(old)
        except OSError:
            pass  # another user's, or being removed by another start: not ours to mind
    return tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-")


def raise_fd_limit() -> int:
    """Lift the soft limit on open files to the hard limit: every viewer holds a socket.

    gunicorn and its workers inherit it. Returns the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


BIND_TRIES = 5
"""Tries of a busy port, a second apart (gunicorn's own: five)."""


def cannot_listen(host: str, port: int) -> str | None:
    """Why gunicorn could not listen on ``host``:``port`` (a busy port, an address that is not
    this machine's, a name that does not resolve), or None. Asked before gunicorn starts, which
    would retry for 5 s, print a line of its own each time, and exit 1 with no word of why.
    Not asked when the socket is handed over (systemd's ``LISTEN_FDS``)."""
    if os.environ.get("LISTEN_FDS"):
        return None
    for attempt in range(BIND_TRIES):
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port,
                                                                 type=socket.SOCK_STREAM)[0]
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
                probe.bind(address)
            return None
        except OSError as exc:
            # A busy port may be a server just killed whose workers have not let go yet (a
            # supervisor's restart): waited for as gunicorn would. Nothing else mends itself.
            if exc.errno != errno.EADDRINUSE or attempt == BIND_TRIES - 1:
                return exc.strerror or str(exc)
            time.sleep(1.0)
    return None


def serve(bind: str, workers: int | None = None, settings: Settings | None = None) -> None:
    """Replace this process with gunicorn, so signals reach it directly."""
    environ = metrics_env(settings or get_settings())
    raise_fd_limit()
    argv = gunicorn_argv(bind, workers)
    os.execve(argv[0], argv, environ)
