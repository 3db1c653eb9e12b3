"""The `jobcast` command: run the whole system, its services, and enqueue jobs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from redis import Redis
from redis.exceptions import RedisError

from worker.config import Config


def parse_task_params(extra: Sequence[str]) -> dict[str, str]:
    """Turn ``--name value`` / ``--name=value`` pairs into a dict of strings."""
    params: dict[str, str] = {}
    items = list(extra)
    while items:
        item = items.pop(0)
        if not item.startswith("--") or item == "--":
            raise ValueError(f"expected --name value, got {item!r}")
        name, sep, value = item[2:].partition("=")
        if not sep:
            if not items:
                raise ValueError(f"--{name} needs a value")
            value = items.pop(0)
        params[name.replace("-", "_")] = value
    return params


def cmd_enqueue(args: argparse.Namespace, extra: list[str]) -> int:
    """Enqueue TASK with its --param values; print the job id and its page URL."""
    from producer.enqueue import enqueue, job_urls
    from worker.registry import ParamError, UnknownTask, all_tasks

    cfg = Config.from_env()
    try:
        params = parse_task_params(extra)
        job_id = enqueue(args.task, params, config=cfg, strict=False)
    except UnknownTask:
        print(f"jobcast: unknown task {args.task!r}; known: {', '.join(sorted(all_tasks()))}",
              file=sys.stderr)
        return 2
    except (ParamError, ValueError) as exc:
        print(f"jobcast: {exc}", file=sys.stderr)
        return 2
    except RedisError as exc:
        print(f"jobcast: cannot reach Redis at {cfg.redis_url}: {exc}", file=sys.stderr)
        return 3
    urls = job_urls(job_id, cfg.public_url)
    if args.output == "json":
        print(json.dumps({"id": job_id, "urls": urls}))
    else:
        print(job_id)
        print(urls["page"])
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    """List the registered tasks and their parameters."""
    from worker.registry import all_tasks

    for name, t in sorted(all_tasks().items()):
        props = t.schema().get("properties", {})
        params = ", ".join(f"--{p} ({s.get('type')}, default {s.get('default')})" for p, s in props.items())
        print(f"{name}: {t.description}\n    {params}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """List recent jobs with their status."""
    from worker.joblog import recent_jobs

    cfg = Config.from_env()
    jobs = recent_jobs(Redis.from_url(cfg.redis_url), args.limit)
    if args.output == "json":
        print(json.dumps(jobs))
        return 0
    for j in jobs:
        n = j["progress"]["n"]
        progress = f"{j['progress']['i']}/{n}" if n is not None else str(j["progress"]["i"])
        print(f"{j['id']}  {j['task']:<8} {j['status']:<9} {progress:>12}  {j['worker'] or ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="jobcast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run Redis, the web server, workers and a demo job")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--workers", type=int, default=2, help="RQ worker processes")
    up.add_argument("--web-workers", type=int, default=1, help="gunicorn worker processes")
    up.add_argument("--no-demo", action="store_true", help="do not enqueue the demo sqrt job")

    web = sub.add_parser("web", help="serve the web app under gunicorn (gevent)")
    web.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    web.add_argument("--bind", default=os.environ.get("JOBCAST_BIND", "0.0.0.0"),
                     help="address to listen on")
    web.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "0")) or None)

    worker = sub.add_parser("worker", help="run an RQ worker on the jobcast queue")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")

    enq = sub.add_parser("enqueue", help="enqueue TASK --param value ...",
                         description="Enqueue a job; task parameters follow as --name value.")
    enq.add_argument("task")
    enq.add_argument("--output", choices=["plain", "json"], default="plain")

    tasks = sub.add_parser("tasks", help="list the registered tasks")
    tasks.set_defaults()

    jobs = sub.add_parser("jobs", help="list recent jobs")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--output", choices=["plain", "json"], default="plain")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jobcast` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "enqueue":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "enqueue":
        return cmd_enqueue(args, extra)
    if args.command == "tasks":
        return cmd_tasks(args)
    if args.command == "jobs":
        return cmd_jobs(args)
    if args.command == "worker":
        from worker.main import run_worker

        run_worker(burst=args.burst)
        return 0
    if args.command == "web":
        from web.serve import serve

        serve(f"{args.bind}:{args.port}", args.workers)
        return 0
    if args.command == "up":
        from producer.up import up

        return up(port=args.port, host=args.host, workers=args.workers,
                  web_workers=args.web_workers, demo=not args.no_demo)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
