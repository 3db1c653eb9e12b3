"""`jobcast up`: Redis, the web server, N workers and a demo job, stopped by one Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from producer.redisproc import RedisServer, free_port

log = logging.getLogger(__name__)


def data_dir() -> Path:
    """Where `jobcast up` keeps its Redis data, so jobs survive a restart."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "jobcast" / "redis"


def wait_ready(url: str, procs: list[subprocess.Popen], timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail early if a child exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{' '.join(p.args[-2:])} exited with {p.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout}s")
        time.sleep(0.2)


def stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every child twice (RQ's cold shutdown, which also kills the work-horse), then
    SIGKILL stragglers."""
    for _ in range(2):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        # RQ ignores a second signal that comes within a second of the first.
        time.sleep(1.2)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def up(port: int = 8000, host: str = "127.0.0.1", workers: int = 2, web_workers: int = 1,
       demo: bool = True) -> int:
    """Run everything until Ctrl-C; return the exit status."""
    redis_server = None
    procs: list[subprocess.Popen] = []
    jobcast = [sys.executable, "-m", "producer"]

    def interrupt(signum, frame):
        """Turn SIGINT/SIGTERM into KeyboardInterrupt, even where SIGINT was ignored."""
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            redis_server = RedisServer(port=free_port(6379), data_dir=data_dir(), appendonly=True).start()
            redis_url = redis_server.url
            print(f"redis:   {redis_server.binary} on {redis_url}", flush=True)
        else:
            print(f"redis:   {redis_url} (REDIS_URL)", flush=True)
        public = f"http://{host}:{port}"
        env = dict(os.environ, REDIS_URL=redis_url, JOBCAST_URL=public)
        # Children get their own session, so Ctrl-C reaches only us and we stop them in order.
        for _ in range(workers):
            procs.append(subprocess.Popen([*jobcast, "worker"], env=env, start_new_session=True))
        procs.append(subprocess.Popen([*jobcast, "web", "--bind", host, "--port", str(port),
                                       "--workers", str(web_workers)], env=env, start_new_session=True))
        wait_ready(f"{public}/readyz", procs)
        print(f"web:     {public}/  ({workers} workers)", flush=True)
        if demo:
            from producer.enqueue import enqueue
            from worker.config import Config

            job_id = enqueue("sqrt", {}, config=Config.from_env(redis_url=redis_url, public_url=public))
            print(f"demo:    {public}/jobs/{job_id}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while True:
            for p in procs:
                if p.poll() is not None:
                    print(f"jobcast: a child exited ({p.returncode}); stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"jobcast: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all(procs)
        if redis_server:
            redis_server.stop()
