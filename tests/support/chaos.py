"""A private stack (redis-server with its AOF, gunicorn, workers) that a test may break, and
viewers that follow a job through it as a browser and a script would, resuming after a drop."""

from __future__ import annotations

import json
import threading
import time

import httpx
import psutil

from jobcast.launcher.redisserver import RedisServer
from tests.support.services import WebServer, Workers
from tests.support.sse import Refused, Resuming, id_seq
from tests.support.wait import wait_for


class Stack:
    """redis-server (AOF on, as in compose), one gunicorn and some workers."""

    def __init__(self, tmp, workers: int = 2, web_workers: int = 1, **env: str):
        """Start everything."""
        self.tmp = tmp
        self.env = dict(JOBCAST_HEARTBEAT="1", **env)
        self.redis = RedisServer(data_dir=tmp / "redis", appendonly=True).start()
        self.web = WebServer(self.redis.url, workers=web_workers, log_path=tmp / "web.log",
                             **self.env).start()
        self.workers = Workers(self.redis.url, tmp)
        if workers:
            self.workers.start(workers, **self.env)

    @property
    def url(self) -> str:
        """Base URL of the web server."""
        return self.web.url

    def restart_web(self, sig) -> None:
        """Stop gunicorn with ``sig`` and start a new one on the same port."""
        port = self.web.port
        self.web.stop(sig)
        self.web = WebServer(self.redis.url, workers=self.web.workers,
                             log_path=self.tmp / "web.log", **self.env)
        self.web.port = port
        self.web.start()

    def restart_redis(self, down_for: float = 2.0) -> None:
        """Stop redis-server gracefully (AOF flushed), wait, start it on the same port."""
        self.redis.stop()
        wait_for(lambda: httpx.get(self.url + "/readyz", timeout=2).status_code == 503, 10,
                 what="/readyz to report not ready")
        self.down_for = down_for
        time.sleep(down_for)  # the outage itself is what is under test
        self.redis.start()

    def worker_process(self, name: str) -> psutil.Process:
        """The worker process behind an RQ worker name ("host.pid")."""
        return psutil.Process(int(name.rsplit(".", 1)[1]))

    def web_worker_processes(self) -> list[psutil.Process]:
        """gunicorn's worker processes (children of the master)."""
        return psutil.Process(self.web.proc.pid).children()

    def close(self) -> None:
        """Stop everything."""
        self.workers.stop_all()
        self.web.stop()
        self.redis.stop()


class SSEViewer(threading.Thread):
    """A browser-like EventSource, read with the tests' own parser, not Jobcast's client
    (:class:`tests.support.sse.Resuming`): reconnects with Last-Event-ID every 0.25 s until
    the terminal entry, and keeps every entry as sent."""

    def __init__(self, base: str, job_id: str, deadline: float = 120):
        """Follow ``job_id`` in a thread; entries in .events, reconnects counted. The
        stream gives up after ``deadline`` seconds without an answer."""
        super().__init__(daemon=True)
        self.client = httpx.Client(timeout=httpx.Timeout(10, read=30))
        self.stream = Resuming(self.client, f"{base}/jobs/{job_id}/events", deadline=deadline)
        self.events: list[dict] = []
        self.error: Exception | None = None

    @property
    def reconnects(self) -> int:
        """Times the stream was opened again after a drop."""
        return self.stream.reconnects

    def run(self) -> None:
        """Read until the terminal entry (or 204), noting each entry's receive time."""
        try:
            for event in self.stream:
                if event.id is not None:
                    self.events.append(dict(event._asdict(), recv=time.time()))
        except (Refused, TimeoutError) as exc:
            self.error = exc
        finally:
            self.client.close()

    def values(self) -> list[int]:
        """The value indexes received, in order."""
        return [json.loads(e["data"])["i"] for e in self.events if e["event"] == "value"]

    def texts(self) -> list[str]:
        """The values' text forms, in order."""
        return [json.loads(e["data"])["v"] for e in self.events if e["event"] == "value"]

    def timed(self) -> list[dict]:
        """Value events with their receive time and JSON value (for latency)."""
        out = []
        for e in self.events:
            if e["event"] == "value":
                out.append({"recv": e["recv"], "data_j": json.loads(e["data"])["j"]})
        return out

    def seqs(self) -> list[int]:
        """The seqs received, in order."""
        return [id_seq(e["id"]) for e in self.events]

    def terminal(self) -> list[dict]:
        """The terminal events received."""
        return [e for e in self.events if e["event"] in ("finished", "failed")]


class TextViewer(threading.Thread):
    """Reads /stream, resuming with ?start=<lines so far>&epoch=<Jobcast-Epoch> after a drop,
    until the job ends; a Jobcast-Reset answer drops the lines it says were replaced, as the
    plain page does (the resets are kept)."""

    def __init__(self, base: str, job_id: str, deadline: float = 120):
        """Follow ``job_id`` in a thread; lines in .lines."""
        super().__init__(daemon=True)
        self.base, self.job_id = base, job_id
        self.lines: list[str] = []
        self.reconnects = 0
        self.epoch: str | None = None
        self.resets: list[str] = []
        self.gone = False  # the server answered 404: the job is gone
        self.deadline = time.monotonic() + deadline

    def run(self) -> None:
        """Read; on a drop or an early end while the job still runs, resume."""
        while time.monotonic() < self.deadline:
            try:
                params = {"start": len(self.lines)}
                if self.epoch:
                    params["epoch"] = self.epoch
                with httpx.stream("GET", f"{self.base}/jobs/{self.job_id}/stream",
                                  params=params, timeout=httpx.Timeout(10, read=30)) as r:
                    if r.status_code == 404:
                        self.gone = True
                        return
                    reset = r.headers.get("Jobcast-Reset")
                    if reset:
                        self.resets.append(reset)
                        del self.lines[int(reset.split("values=")[1].split(";")[0]):]
                    self.epoch = r.headers.get("Jobcast-Epoch") or self.epoch
                    for line in r.iter_lines():
                        self.lines.append(line)
                status = httpx.get(f"{self.base}/api/jobs/{self.job_id}", timeout=5).json()["status"]
                if status in ("finished", "failed"):
                    return
            except (httpx.HTTPError, OSError, ValueError, KeyError):
                pass
            self.reconnects += 1
            time.sleep(0.25)  # the page's own retry delay
