"""`jobcast up`: Redis, the web server, N workers and a demo job, supervised; `jobcast status`.

A service that exits unexpectedly is restarted with backoff while the others run on; one that
keeps crashing is given up on, and then `jobcast up` stops everything and exits 1
(jobcast/launcher/supervisor.py has the policy, and why it is our own rather than honcho, circus or
supervisor). Ctrl-C stops everything. While it runs, `up.json` next to the Redis data tells
`jobcast status` which services run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, MutableMapping
from urllib.parse import quote

from redis.exceptions import RedisError
from rq import Queue, Worker

from jobcast.core.logstore import LogStore
from jobcast.core.process import pid_alive, process_start
from jobcast.core.settings import Settings, get_settings
from jobcast.core.store import (connect, error_text, is_masked, masked_url, redis_client,
                                 separate, stream_url)
from jobcast.core.task import ParamError
from jobcast.core.urls import host_port
from jobcast.producer.enqueue import enqueue
from jobcast.launcher.redisserver import RedisServer, free_port, write_private
from jobcast.launcher.supervisor import (STOP_SIGNALS, Printer, RestartPolicy, Service,
                                         ServiceFailed, Supervisor)
from jobcast.core.wait import wait_until

log = logging.getLogger(__name__)

# RQ's periodic housekeeping, every 15 s from every worker: hidden unless --verbose.
HOUSEKEEPING = re.compile(r"cleaning registries for queue|cleaning group registries")

# The kinds of service `jobcast up` runs; `--env KIND:NAME=VALUE` targets one of them.
SERVICE_KINDS = ("redis", "web", "worker")


def data_dir() -> Path:
    """Where `jobcast up` keeps its Redis data, so jobs survive a restart."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "jobcast" / "redis"


def state_path() -> Path:
    """Where a running `jobcast up` describes its services, for `jobcast status`."""
    return data_dir().parent / "up.json"



def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if missing, and make it its owner's only (0700): the
    embedded Redis writes every job, and the key that signs view links, into its files with
    the default umask."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


MIN_PASSWORD = 16
"""Fewer characters in the password file: it was not written whole, and a new one is made."""


def password_path() -> Path:
    """Where the embedded Redis's password is kept (mode 0600), for `jobcast status`."""
    return data_dir() / "password"


def embedded_password() -> str:
    """The embedded Redis's password: generated on the first `jobcast up`, then kept with its
    data, so the data's Redis keeps its password from one run to the next."""
    path = password_path()
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = ""
    if len(password) < MIN_PASSWORD:
        # Missing, or left empty by a first run that died while writing it: an empty one
        # would run Redis with no password at all. (The password lives in redis.conf, written
        # at each start, not in the data: a new one takes effect at once.)
        private_dir(path.parent)
        password = secrets.token_urlsafe(32)
        tmp = write_private(path.with_name(path.name + ".tmp"), password + "\n")
        os.replace(tmp, path)  # whole or not at all
    return password


def web_ready(base_url: str) -> Callable[[Service], bool]:
    """A readiness check: the web server's /readyz answers 200."""

    def check(service: Service) -> bool:
        """True once /readyz answers 200."""
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    return check


def worker_ready(redis_url: str) -> Callable[[Service], bool]:
    """A readiness check: the worker process has registered with RQ."""
    conn = redis_client(redis_url, socket_connect_timeout=1, socket_timeout=2)
    host = socket.gethostname()

    def check(service: Service) -> bool:
        """True once RQ knows a worker named after this process (worker.main.worker_name)."""
        return bool(conn.exists(f"{Worker.redis_worker_namespace_prefix}{host}.{service.pid}"))

    return check


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace ``path`` with ``state`` as JSON, atomically (status may read it any time), for
    its owner's eyes only (mode 0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    write_private(tmp, json.dumps(state, indent=1))
    os.replace(tmp, path)


def up(port: int = 8000, host: str = "127.0.0.1", workers: int = 2, web_workers: int = 1,
       demo: bool = True, verbose: bool = False, env: dict[str, dict[str, str]] | None = None,
       policy: RestartPolicy | None = None) -> int:
    """Run and supervise everything until Ctrl-C; return the exit status.

    ``env`` adds environment variables to one kind of service ({"worker": {...}}).
    """
    printer = Printer(quiet=HOUSEKEEPING, verbose=verbose)
    jobcast = [sys.executable, "-m", "jobcast"]
    state_file = state_path()
    state: dict[str, Any] = {"pid": os.getpid(), "pid_start": process_start(os.getpid()),
                             "started": time.time(), "workers": workers,
                             "web_workers": web_workers}

    state_written = claimed = False

    def save() -> None:
        """Record the services' state for `jobcast status`."""
        nonlocal state_written
        if not claimed:
            return  # another `jobcast up` may own the file
        state["services"] = [{"name": s.name, "pid": s.pid, "state": s.state,
                              "restarts": s.restarts, "since": s.started_at,
                              "last_exit": s.last_exit} for s in sup.services]
        try:
            write_state(state_file, state)
            state_written = True
        except OSError as exc:
            log.warning("cannot write %s: %s", state_file, exc)

    sup = Supervisor(printer, policy, on_change=save)

    def interrupt(signum, frame):
        """Turn a signal to stop into KeyboardInterrupt, even where SIGINT was ignored; the
        ones that follow (a second Ctrl-C, the second SIGHUP of a shell that closes) must not
        cut the orderly stop short."""
        ignore_stop_signals()
        raise KeyboardInterrupt

    # SIGHUP too: a closed terminal or a lost ssh session would otherwise end this process at
    # once, and leave Redis, the web and the workers running (each in a session of its own).
    for signum in STOP_SIGNALS:
        signal.signal(signum, interrupt)

    def service_env(kind: str, base: dict[str, str]) -> dict[str, str]:
        """``base`` plus the --env variables given for ``kind``."""
        return {**base, **(env or {}).get(kind, {})}

    redis_services: list[Service] = []
    try:
        private_dir(state_file.parent)
        running = read_state(state_file)
        if running:
            # A second one would start a second Redis on the same data directory.
            raise RuntimeError(f"jobcast up is already running here (pid {running['pid']}, "
                               f"{running.get('url', '?')}); `jobcast status` shows it")
        claimed = True
        if free_port(port) != port:
            raise RuntimeError(f"port {port} is in use; choose another with --port")
        cfg = get_settings()
        # Only a REDIS_URL that is set names an existing Redis; its default does not.
        redis_url = cfg.redis_url if "redis_url" in cfg.model_fields_set else None
        server = None
        if not redis_url:
            # Its own password: any local process could otherwise read and write every job.
            directory = private_dir(data_dir())
            lock = lock_data_dir(directory)
            server = RedisServer(port=free_port(6379), data_dir=directory,
                                 appendonly=True,
                                 loglevel="notice" if verbose else "warning",
                                 password=embedded_password())
            redis_url = server.url
            redis_services.append(sup.add(Service("redis.1", server.argv(),
                                                  env=service_env("redis", dict(os.environ)),
                                                  ready=lambda s: server.ping(),
                                                  pass_fds=(lock,))))
        public = f"http://{host_port(host, port)}"
        state.update(url=public, redis_url=masked_url(redis_url), redis_embedded=server is not None,
                     streams=masked_url(cfg.stream_url) if cfg.stream_url else "",
                     queue=cfg.queue_name)
        base = dict(os.environ, REDIS_URL=redis_url)
        if "public_url" not in cfg.model_fields_set:
            # Only a JOBCAST_URL that is set names the server for its links and Host rule (a
            # proxy's name in front of it); its default does not, and this one is where it is.
            base["JOBCAST_URL"] = public
        ready = worker_ready(redis_url)
        for i in range(1, workers + 1):
            # Two SIGTERMs: RQ's cold shutdown, which also stops a running work-horse.
            sup.add(Service(f"worker.{i}", [*jobcast, "worker"], env=service_env("worker", base),
                            ready=ready, stop_signals=(signal.SIGTERM, signal.SIGTERM)))
        sup.add(Service("web.1", [*jobcast, "web", "--bind", host, "--port", str(port),
                                   "--workers", str(web_workers)],
                        env=service_env("web", base), ready=web_ready(public)))
        if server:
            printer.system(f"redis:   {server.binary} on {masked_url(redis_url)}")
            sup.start(redis_services)
            sup.wait_ready(redis_services, 30)
        else:
            printer.system(f"redis:   {masked_url(redis_url)} (REDIS_URL)")
            # Asked once before anything starts: the services would otherwise retry it for a
            # minute (a screen of lines), and the last word would name them, not Redis. Its
            # error is the command's to say, as every command says it (exit 3).
            client = redis_client(redis_url, socket_connect_timeout=5, socket_timeout=5)
            try:
                client.ping()
            finally:
                client.close()
        sup.start(s for s in sup.services if s.proc is None)
        sup.wait_ready(sup.services, 60)
        demo_line = None
        if demo:
            try:
                demo_line = f"demo:    {public}/jobs/{start_demo(sup, redis_url, public)}"
            except ParamError as exc:
                # The demo's defaults are over a limit these settings set (JOBCAST_PARAM_CAPS,
                # JOBCAST_JOB_MAX_DURATION...): the services run all the same, without it.
                demo_line = f"demo:    not started: {exc}"
        # The URLs come last, after the services' start-up lines.
        printer.system(f"web:     {public}/  ({plural(web_workers, 'gunicorn worker')}, "
                       f"{plural(workers, 'RQ worker')})")
        if demo_line:
            printer.system(demo_line)
        printer.system("Press Ctrl-C to stop; `jobcast status` lists the services.")
        sup.run()
    except KeyboardInterrupt:
        printer.system("stopping…")
        return 0
    except ServiceFailed as exc:
        print(f"jobcast: {exc}; stopping", file=sys.stderr, flush=True)
        return 1
    except (RuntimeError, TimeoutError, FileNotFoundError, OSError) as exc:
        print(f"jobcast: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        ignore_stop_signals()  # nothing may cut the orderly stop short (it is bounded anyway)
        # Workers and web first, Redis last, so nothing loses Redis while it stops.
        sup.stop([s for s in sup.services if s not in redis_services])
        sup.stop(redis_services)
        if state_written:
            state_file.unlink(missing_ok=True)


def lock_data_dir(path: Path) -> int:
    """Take the lock of Redis's data directory ``path`` (``flock`` on ``path/lock``); its
    descriptor, which the Redis it starts inherits, so the lock is held while either lives.
    One Redis per data directory, whatever ended the `jobcast up` before: its Redis may still
    be writing its AOF. RuntimeError when another holds it."""
    fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"another Redis still uses {path} (a `jobcast up` that was killed "
                           "left it running?): stop it first") from None
    return fd


def ignore_stop_signals() -> None:
    """From now on, signals to stop (:data:`STOP_SIGNALS`) do nothing: the stop is under way."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def plural(n: int, word: str) -> str:
    """``1 RQ worker``, ``2 RQ workers``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def start_demo(sup: Supervisor, redis_url: str, public: str, timeout: float = 5.0) -> str:
    """Enqueue the demo sqrt job and supervise until a worker has taken it (so its start-up
    lines come before the URLs); return its id."""
    cfg = Settings(redis_url=redis_url, public_url=public)
    # Half a minute of values, as compose's demo: the task's defaults (500 values, one a
    # second) kept a worker busy for eight minutes, and a newcomer's first job waited.
    job_id = enqueue("sqrt", {"n": 120, "interval": 0.25}, config=cfg)
    conn = connect(stream_url(cfg), cluster=None if separate(cfg) else False)
    demo = LogStore(conn, cfg).log(job_id)

    def taken() -> bool:
        """True once the job left the queue; supervises meanwhile."""
        if demo.status() != "queued":
            return True
        sup.poll()
        return False

    try:
        with contextlib.suppress(TimeoutError):  # the URLs are printed all the same
            wait_until(taken, timeout, interval=0.1, what="a worker to take the demo job")
    finally:
        conn.close()
    return job_id


# -- jobcast status --------------------------------------------------------------------------


def read_state(path: Path | None = None) -> dict[str, Any] | None:
    """The state of the `jobcast up` running here, or None when none runs (its pid gone, or
    now another process's: after a reboot, or in a container where it was pid 1)."""
    path = path or state_path()
    try:
        state = json.loads(path.read_text())
        pid = int(state["pid"])
        if not pid_alive(pid):
            return None
        started = state.get("pid_start")
        if started is not None and process_start(pid) not in (None, started):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


def duration(seconds: float) -> str:
    """``42s``, ``5m03s``, ``2h05m``."""
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def rq_info(redis_url: str, queue_name: str) -> dict[str, Any]:
    """RQ's view, like `rq info`: the queue's depth by registry and the workers on it."""
    conn = redis_client(redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        q = Queue(queue_name, connection=conn)
        queue = {"name": queue_name, "queued": q.count,
                 # (its count would run RQ's cleanup of abandoned jobs, unheld after an outage)
                 "started": q.started_job_registry.get_job_count(cleanup=False),
                 "finished": q.finished_job_registry.count,
                 "failed": q.failed_job_registry.count,
                 # (the jobs the watchdog failed when no worker was alive: RQ's cancel)
                 "canceled": q.canceled_job_registry.count,
                 "deferred": q.deferred_job_registry.count,
                 "scheduled": q.scheduled_job_registry.count}
        host = socket.gethostname()
        # RQ lists a killed worker until its key expires; say so when its process is gone.
        workers = [{"name": w.name, "state": w.get_state(), "job": w.get_current_job_id(),
                    "gone": w.hostname == host and bool(w.pid) and not pid_alive(w.pid)}
                   for w in sorted(Worker.all(queue=q), key=lambda w: w.name)]
        return {"queue": queue, "workers": workers}
    finally:
        conn.close()


UNKNOWN_PASSWORD = ("the `jobcast up` running here uses a Redis whose password is not stored "
                    "(up.json keeps it masked): set REDIS_URL as it was given to `jobcast up`")


class UnknownRedis(RuntimeError):
    """The `jobcast up` running here uses a Redis this process cannot reach: its password is
    not stored (a client command must not go on to another Redis, where it would queue or list
    other jobs)."""

    def __init__(self) -> None:
        """Say so, and what to do."""
        super().__init__(UNKNOWN_PASSWORD)


def running_redis_url(state: dict[str, Any]) -> str:
    """The Redis URL of the `jobcast up` described by ``state``, password included.

    up.json holds it masked: the embedded Redis's password is read from its own file, and a
    REDIS_URL of the environment is used when it is the one up.json names.
    """
    shown = state["redis_url"]
    if state.get("redis_embedded"):
        try:
            password = password_path().read_text().strip()
        except OSError:
            return shown
        return shown.replace(":***@", f":{quote(password, safe='')}@", 1)
    own = get_settings().redis_url
    return own if masked_url(own) == shown else shown


def follow_running_up(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Point a client command (``enqueue``, ``follow``, ``jobs``, ``cancel``) at the `jobcast
    up` running here, as `jobcast status` is, where the environment names no Redis
    (``REDIS_URL``) or no web server (``JOBCAST_URL``) of its own: its embedded Redis has a
    password, and its web server the port it was given. Nothing changes without one, when its
    Redis URL holds a password this process cannot read, or when its job logs
    (``JOBCAST_STREAM_URL``) or its queue (``JOBCAST_QUEUE``) are not this process's.

    Returns why the `jobcast up` running here was passed over for its queue or its logs, when
    the command goes on to the default REDIS_URL instead of its Redis (a hint for an error
    that follows), else None.
    """
    environ = os.environ if environ is None else environ
    if "REDIS_URL" in environ and "JOBCAST_URL" in environ:
        return None
    state = read_state()
    if state is None:
        return None
    own = get_settings()
    if "REDIS_URL" in environ and masked_url(environ["REDIS_URL"]) != state.get("redis_url"):
        return None  # another Redis: not its jobs, so not its web server either
    # Its logs or its queue not where this process would look: not its jobs. Said (returned)
    # where REDIS_URL is not set: the command then goes on to its default Redis, not the
    # one of the `jobcast up` its user may have expected.
    passed_over = None
    streams = masked_url(own.stream_url) if own.stream_url else ""
    if state.get("streams", "") != streams:
        passed_over = (f"its job logs are in {state.get('streams') or 'its Redis'}, "
                       f"JOBCAST_STREAM_URL names {streams or 'none'}")
    elif state.get("queue", own.queue_name) != own.queue_name:
        passed_over = f"it works queue {state.get('queue')!r}, JOBCAST_QUEUE is {own.queue_name!r}"
    if passed_over:
        return None if "REDIS_URL" in environ else (
            f"the `jobcast up` running here (pid {state.get('pid')}) was passed over: "
            f"{passed_over}")
    if "REDIS_URL" not in environ:
        if is_masked(url := running_redis_url(state)):
            # A password this process cannot read: neither its Redis nor its web server.
            # Refused, or the command would go on to localhost:6379 and queue or list other
            # jobs there.
            raise UnknownRedis()
        environ["REDIS_URL"] = url
    if state.get("url"):
        environ.setdefault("JOBCAST_URL", state["url"])
    get_settings.cache_clear()  # (read above, before these were set)
    return None


def status(output: str = "plain") -> int:
    """Print the services of the `jobcast up` running here, RQ's workers and the queue
    depth. Exit 0, or 3 when Redis cannot be reached. A Redis password is never printed."""
    state = read_state()
    cfg = Settings(redis_url=running_redis_url(state)) if state else get_settings()
    shown = masked_url(cfg.redis_url)
    info = None
    if is_masked(cfg.redis_url):  # (masked in up.json; trying it would read as a wrong password)
        error = UNKNOWN_PASSWORD
    else:
        try:
            info = rq_info(cfg.redis_url, cfg.queue_name)
        except RedisError as exc:
            error = f"cannot reach Redis at {shown}: {error_text(exc)}"
    if output == "json":
        print(json.dumps({"up": state, "redis_url": shown, **(info or {"error": error})}))
        return 0 if info else 3
    now = time.time()
    if state:
        print(f"jobcast up: pid {state['pid']}, running for {duration(now - state['started'])}, "
              f"{state.get('url', '?')}/, Redis {shown}")
        print(f"  {'SERVICE':<10} {'STATE':<9} {'PID':>7}  {'UPTIME':>7}  RESTARTS")
        for s in state.get("services", []):
            up_for = duration(now - s["since"]) if s["since"] and s["state"] == "running" else "-"
            note = f"  (last: {s['last_exit']})" if s["last_exit"] else ""
            if s["name"].startswith("web.") and state.get("web_workers"):
                note = f"  {plural(state['web_workers'], 'gunicorn worker')}{note}"
            print(f"  {s['name']:<10} {s['state']:<9} {s['pid'] or '-':>7}  {up_for:>7}  "
                  f"{s['restarts']:>8}{note}")
    else:
        print(f"jobcast up: not running here ({state_path()} is absent or stale); "
              f"Redis {shown}")
    if info is None:
        print(f"jobcast: {error}", file=sys.stderr)
        return 3
    q = info["queue"]
    print(f"queue {q['name']}: {q['queued']} queued, {q['started']} started, "
          f"{q['finished']} finished, {q['failed']} failed, {q['canceled']} canceled, "
          f"{q['deferred']} deferred, {q['scheduled']} scheduled (RQ's registries; "
          f"`jobcast jobs` lists the jobs as their viewers see them)")
    print(f"{plural(len(info['workers']), 'RQ worker')}:")
    for w in info["workers"]:
        gone = "  (process gone; RQ forgets it when its key expires)" if w["gone"] else ""
        print(f"  {w['name']:<24} {w['state']:<10} {w['job'] or '':<32}{gone}".rstrip())
    return 0
