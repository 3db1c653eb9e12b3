"""`jobcast worker`: an RQ worker on the Jobcast queue."""

from __future__ import annotations

import logging
import os
import socket

from redis import Redis
from rq import Queue, Worker

from worker.config import Config
from worker.registry import load_builtin_and_user_tasks


def worker_name() -> str:
    """A readable, unique worker name: host (the container id under Docker) and pid."""
    return f"{socket.gethostname()}.{os.getpid()}"


def run_worker(config: Config | None = None, *, burst: bool = False) -> bool:
    """Work the queue until stopped (or, with ``burst``, until it is empty)."""
    cfg = config or Config.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Import tasks before forking work-horses, so each job does not import them again.
    load_builtin_and_user_tasks()
    redis = Redis.from_url(cfg.redis_url)
    queue = Queue(cfg.queue_name, connection=redis)
    worker = Worker([queue], connection=redis, name=worker_name())
    return worker.work(burst=burst, with_scheduler=True)
