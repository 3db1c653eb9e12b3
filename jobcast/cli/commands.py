"""The `jobcast` command: run the whole system, its services, and enqueue jobs.

It sits on top of everything and dispatches to each service's entry point: `jobcast up` and
`status` (jobcast/launcher/up.py), `web` (web/serve.py), `worker` (worker/main.py); the other
subcommands use the producer's API and the foundation directly. The console script enters
through jobcast/cli/main.py, which imports this module.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
from typing import Any, Sequence

from pydantic import ValidationError
from redis.exceptions import RedisError

from jobcast.core.joblog import UnknownJob
from jobcast.core.keys import InvalidJobId, check_job_id
from jobcast.core.registry import ParamError, UnknownTask, all_tasks, load_user_tasks
from jobcast.core.settings import get_settings, unknown_variables
from jobcast.core.logstore import LogStore
from jobcast.core.store import (NotACluster, cluster_enabled, error_text, masked_url, one_node,
                                separate, stream_url)
from jobcast.core.urls import host_port, job_urls
from jobcast.producer.cancel import AlreadyEnded, cancel
from jobcast.producer.enqueue import enqueue, validate
from jobcast.cli.display import GuardedOutput, OutputFailed, printable
from jobcast.cli.follow import bad_input, follow, read_refused
from jobcast.cli.follow_many import follow_many
from jobcast.launcher.up import SERVICE_KINDS, UnknownRedis, follow_running_up, status, up
from jobcast.web.links import view_sig
from jobcast.web.serve import cannot_listen, serve
from jobcast.worker.main import run_worker


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
    cfg = get_settings()
    if not args.follow and args.tail is not None:
        print("jobcast: --tail is an option of --follow (the job was not queued)", file=sys.stderr)
        return 2
    if args.follow:
        # What --follow would refuse, before the job is queued: never a stray job.
        problem = bad_input([], args.url or cfg.public_url, args.tail)
        if problem:
            print(f"jobcast: {problem}", file=sys.stderr)
            return 2
    try:
        params = parse_task_params(extra)
        validate(args.task, params, config=cfg, strict=False)
    except UnknownTask:
        print(f"jobcast: unknown task {args.task!r}; known: {', '.join(sorted(all_tasks()))}",
              file=sys.stderr)
        return 2
    except (ParamError, ValueError) as exc:
        print(f"jobcast: {exc}", file=sys.stderr)
        return 2
    if args.follow:
        # A server that would refuse any follow (a private one without this token, or not a
        # Jobcast server at all) says so before the job is queued.
        try:
            problem = read_refused(args.url or cfg.public_url, cfg.token)
        except KeyboardInterrupt:
            print("jobcast: interrupted (the job was not queued)", file=sys.stderr)
            return 130
        if problem:
            print(f"jobcast: {printable(problem)} (the job was not queued)", file=sys.stderr)
            return 2
    # (It checks the parameters again, as every caller's enqueue does: they pass, no I/O.)
    job_id = enqueue(args.task, params, config=cfg, strict=False)
    sig = None
    if cfg.read_mode == "private":
        # The printed URLs carry a view link's signature (JOBCAST_LINK_TTL), for this job:
        # its id and creation time, read back.
        try:
            created = LogStore.connect(cfg).log(job_id).info().created_at
            sig = view_sig(cfg, job_id, created)  # (the signing key may be read from Redis)
        except RedisError as exc:
            # The job is queued: its id is printed all the same, so that nobody queues it again.
            print(job_id, flush=True)
            print(f"jobcast: job {job_id} is queued, but its link cannot be signed: Redis at "
                  f"{masked_url(cfg.redis_url)} did not answer: {exc}", file=sys.stderr)
            return 3
    urls = job_urls(job_id, args.url or cfg.public_url, sig=sig)
    if args.follow:
        # --follow: stdout carries the values (plain) or entries (json) that follow.
        if args.output == "json":
            print(json.dumps({"id": job_id, "urls": urls}), flush=True)
        else:
            print(f"{job_id}\n{urls['page']}", file=sys.stderr, flush=True)
        return run_follow(job_id, args)
    if args.output == "json":
        print(json.dumps({"id": job_id, "urls": urls}))
    else:
        print(job_id)
        print(urls["page"])
    return 0


# -- follow (the terminal client) -----------------------------------------------------------


def seconds(text: str) -> float:
    """A duration in seconds: a finite number, 0 or more (``nan`` would never give up)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, 0 or more: {text!r}")
    return value


def add_follow_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `jobcast follow` and `jobcast enqueue --follow`."""
    parser.add_argument("--url", default=None,
                        help="base URL of the Jobcast web server (default: $JOBCAST_URL or "
                             "http://localhost:8000)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress bar, even on a terminal")
    parser.add_argument("--no-output", dest="show_output", action="store_false", default=True,
                        help="hide the lines the job prints (shown on stderr)")
    parser.add_argument("--reconnect-for", type=seconds, default=120.0, metavar="SECONDS",
                        help="how long to keep reconnecting to an unreachable server (default 120)")
    parser.add_argument("--tail", type=int, default=None, metavar="N",
                        help="begin with the last N values, then go on live (0: live only)")


def run_follow(job_id: str, args: argparse.Namespace) -> int:
    """Follow ``job_id`` with the CLI's options; the exit code says how the job ended."""
    settings = get_settings()
    printable_stdout()
    return follow(job_id, args.url or settings.public_url, output=args.output,
                  progress=args.progress, reconnect_for=args.reconnect_for, tail=args.tail,
                  token=settings.token, show_output=args.show_output)


def printable_stdout() -> None:
    """Values in any language on a stdout whose encoding cannot write them (``LANG=C``, a
    latin-1 terminal) are escaped, not a traceback."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


def cmd_follow(args: argparse.Namespace) -> int:
    """Print a job's values as they arrive: 0 finished, 1 failed, 2 bad input, 3 unreachable,
    4 cancelled, 5 finished but a reset replaced values already printed.
    Several jobs share one connection; the exit code is then the worst job's."""
    if len(args.job_ids) == 1:
        return run_follow(args.job_ids[0], args)  # today's single-job stream, with its bar
    settings = get_settings()
    printable_stdout()
    return follow_many(args.job_ids, args.url or settings.public_url, output=args.output,
                       reconnect_for=args.reconnect_for, tail=args.tail, token=settings.token,
                       show_output=args.show_output)


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a job through Redis: 0 cancelled, 1 it had already ended, 2 bad id, 3 no Redis."""
    cfg = get_settings()
    try:
        check_job_id(args.job_id)
        cancel(args.job_id, "cli", config=cfg)
    except InvalidJobId as exc:
        print(f"jobcast: {exc}", file=sys.stderr)
        return 2
    except UnknownJob:
        print(f"jobcast: no job with id {args.job_id}", file=sys.stderr)
        return 2
    except AlreadyEnded as exc:
        print(f"jobcast: {exc}", file=sys.stderr)
        return 1
    print(f"cancelled {args.job_id}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    """List the registered tasks and their parameters."""
    for name, t in sorted(all_tasks().items()):
        props = t.schema().get("properties", {})
        params = ", ".join(f"--{p} ({s.get('type')}, default {s.get('default')})" for p, s in props.items())
        print(f"{name}: {t.description}\n    {params}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """List recent jobs with their status."""
    cfg = get_settings()
    jobs = [job.model_dump() for job in LogStore.connect(cfg).recent(args.limit)]
    if args.output == "json":
        print(json.dumps(jobs))
        return 0
    for j in jobs:
        n = j["progress"]["n"]
        progress = f"{j['progress']['i']}/{n}" if n is not None else str(j["progress"]["i"])
        # An adopted RQ job's label and a worker's name are anyone's text: no escape
        # sequence of theirs reaches the terminal.
        task, worker = printable(j["task"]), printable(j["worker"] or "")
        print(f"{j['id']}  {task:<8} {j['status']:<9} {progress:>12}  {worker}")
    return 0


def count(minimum: int, maximum: int | None = None):
    """An argparse type: an integer of at least ``minimum`` (and at most ``maximum``)."""

    def parse(text: str) -> int:
        """The integer in ``text``, checked."""
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be between {minimum} and {maximum}, got {value}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


PORT = count(1, 65535)


def bind_address(text: str) -> tuple[str, int | None]:
    """`jobcast web --bind`: a host (a name, an IPv4 or IPv6 address, bracketed or not), or
    gunicorn's ``HOST:PORT`` (``[IPv6]:PORT``); as (host, port), the port None when not given."""
    host, port_text = text, None
    if text.startswith("["):
        inside, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise argparse.ArgumentTypeError(
                f"expected HOST, HOST:PORT or [IPv6]:PORT, got {text!r}")
        host, port_text = inside, (rest[1:] if rest else None)
    elif text.count(":") == 1:  # (more than one: a bare IPv6 address, which has no port)
        host, port_text = text.split(":")
    if not host:
        raise argparse.ArgumentTypeError(f"names no host: {text!r}")
    if port_text is None:
        return host, None
    try:
        return host, PORT(port_text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT with a port of 1 to 65535, got {text!r}") from None


def unresolvable(host: str) -> str | None:
    """Why ``host`` names no address (``999.1.1.1``, a mistyped name), or None: a bad
    argument, unlike a busy port (:func:`~jobcast.web.serve.cannot_listen`)."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return f"cannot resolve {host!r}: {getattr(exc, 'strerror', None) or exc}"
    return None


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line: what is wrong, and where help is."""

    def __init__(self, *args: Any, **kwargs: Any):
        """As argparse's. :attr:`commands`, each subcommand's parser by name (filled by
        :func:`build_parser`), is there so that an error of a subcommand's arguments found
        after parsing points to that subcommand's help."""
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str):
        """Print ``message`` on one line (no usage block) and exit 2."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


SECRET_SETTINGS = frozenset({"JOBCAST_TOKEN", "JOBCAST_SECRET"})
"""Settings whose value is never printed, not even when it is invalid."""

URL_SETTINGS = frozenset({"REDIS_URL", "JOBCAST_STREAM_URL"})
"""Settings printed without the password they may hold."""


def shown_setting(name: str, value: object) -> str:
    """How a bad setting's value is quoted in its error: a Redis URL without its password,
    a token or secret not at all."""
    if name in SECRET_SETTINGS:
        return "***"
    if name in URL_SETTINGS and isinstance(value, str):
        return repr(masked_url(value))
    return repr(value)


def setting_errors(exc: ValidationError) -> list[str]:
    """One line per bad setting: its variable, the value given, and what it accepts."""
    lines = []
    for error in exc.errors():
        name = ".".join(map(str, error["loc"])) or "settings"
        message = error["msg"].removeprefix("Value error, ")
        if not message.startswith(name):
            message = f"{name}={shown_setting(name, error.get('input'))} is invalid: {message}"
        lines.append(message)
    return lines


def service_env_item(text: str) -> tuple[str, str, str]:
    """Parse ``worker:NAME=VALUE`` (for `jobcast up --env`) into (kind, name, value)."""
    kind, _, assignment = text.partition(":")
    name, sep, value = assignment.partition("=")
    if kind not in SERVICE_KINDS or not sep or not name:
        # What was given is not echoed past its first "=": the value may be a secret.
        shown = text.partition("=")[0] + ("=…" if "=" in text else "")
        raise argparse.ArgumentTypeError(
            f"expected SERVICE:NAME=VALUE with SERVICE one of {', '.join(SERVICE_KINDS)}, "
            f"got {shown!r}")
    return kind, name, value


def build_parser() -> Parser:
    """The argument parser for every subcommand."""
    parser = Parser(prog="jobcast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run Redis, the web server, workers and a demo job")
    up.add_argument("--port", type=PORT, default=8000,
                    help="the web server's port (default 8000)")
    up.add_argument("--host", default="127.0.0.1",
                    help="the web server's address (default 127.0.0.1: this machine only)")
    up.add_argument("--workers", type=count(0), default=2, help="RQ worker processes")
    up.add_argument("--web-workers", type=count(1), default=1, help="gunicorn worker processes")
    up.add_argument("--no-demo", action="store_true", help="do not enqueue the demo sqrt job")
    up.add_argument("--verbose", "-v", action="store_true",
                    help="also print RQ's periodic housekeeping lines and Redis notices")
    up.add_argument("--env", action="append", default=[], type=service_env_item,
                    metavar="SERVICE:NAME=VALUE",
                    help="an environment variable for one kind of service (redis, web or "
                         "worker) only; repeatable, e.g. --env worker:JOBCAST_MONITOR_INTERVAL=2 "
                         "(arguments show in ps: pass secrets in the environment)")

    status = sub.add_parser("status", help="the services of `jobcast up`, RQ's workers and "
                                           "the queue depth")
    status.add_argument("--output", choices=["plain", "json"], default="plain")

    web = sub.add_parser("web", help="serve the web app under gunicorn (gevent)")
    web.add_argument("--port", type=PORT, default=None,
                     help="port to listen on (default: $PORT or 8000)")
    web.add_argument("--bind", type=bind_address, default=None, metavar="HOST[:PORT]",
                     help="address to listen on (default: $JOBCAST_BIND or 127.0.0.1; 0.0.0.0 "
                          "for every interface); HOST:PORT ([IPv6]:PORT) names the port too, "
                          "instead of --port")
    web.add_argument("--workers", type=count(1), default=None,
                     help="gunicorn worker processes (default: $WEB_CONCURRENCY or 2)")

    worker = sub.add_parser("worker", help="run an RQ worker on the jobcast queue")
    worker.add_argument("queues", nargs="*", metavar="QUEUE",
                        help="the queues to work, in order (default: JOBCAST_QUEUE's); your "
                             "own app's too, as `rq worker -w jobcast.Worker` would")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")

    enq = sub.add_parser("enqueue", help="enqueue TASK --param value ...",
                         description="Enqueue a job; task parameters follow as --name value.")
    enq.add_argument("task")
    enq.add_argument("--output", choices=["plain", "json"], default="plain")
    # Task parameters such as --n must never be taken for an abbreviation of --no-progress.
    enq.allow_abbrev = False
    enq.add_argument("--follow", action="store_true",
                     help="then print the job's values as they arrive, like `jobcast follow`")
    add_follow_options(enq)

    fol = sub.add_parser("follow", help="print a job's values as they arrive, with a progress bar",
                         description="Follow jobs through the web server's event stream (several "
                                     "over one connection, each line prefixed by the job's short "
                                     "id). Exit 0 when they finished, 1 when one failed, 2 on bad "
                                     "input, 3 when the server stays unreachable, 4 when one was "
                                     "cancelled (and none failed), 5 when they finished but a "
                                     "reset replaced values already printed, 130 when "
                                     "interrupted (Ctrl-C), 141 when its output's reader left "
                                     "(| head), quietly. --reconnect-for: a try under way when "
                                     "it runs out is let finish (10 s at most, to connect).")
    fol.add_argument("job_ids", nargs="+", metavar="job_id")
    fol.add_argument("--output", choices=["plain", "json"], default="plain",
                     help="plain: one value per line; json: every log entry as a JSON line")
    add_follow_options(fol)

    can = sub.add_parser("cancel", help="cancel a queued or running job",
                         description="Cancel a job: a queued one never runs, a running one is "
                                     "stopped at once. Exit 0 when cancelled, 1 when it had "
                                     "already ended, 2 on a bad or unknown id, 3 without Redis.")
    can.add_argument("job_id")

    sub.add_parser("tasks", help="list the registered tasks")

    jobs = sub.add_parser("jobs", help="list recent jobs")
    jobs.add_argument("--limit", type=count(1, 500), default=20, help="how many (1 to 500)")
    jobs.add_argument("--output", choices=["plain", "json"], default="plain")
    parser.commands = dict(sub.choices)
    return parser


CLIENT_COMMANDS = frozenset({"enqueue", "follow", "jobs", "cancel"})
"""The commands that use a Redis and a web server, not run one: by default, those of the
`jobcast up` running here (:func:`~jobcast.launcher.up.follow_running_up`)."""

PIPE_CLOSED = 128 + 13
"""The exit status when standard output's reader has gone: a shell's for a process SIGPIPE
ended (Python ignores SIGPIPE, and sees a BrokenPipeError instead)."""

EXIT_INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C: a shell's for a process SIGINT ended."""

EXIT_OUTPUT_FAILED = 1
"""The exit status when standard output cannot be written (a full disk, ``> /dev/full``)."""

SERVICE_COMMANDS = frozenset({"up", "web", "worker"})
"""The commands that run services: what they print is their log, not a result, and their
standard output is their children's too (it is left as it is)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `jobcast` command ``argv`` names (jobcast/cli/main.py enters here).

    A bad argument or setting is one line naming it and what it accepts, exit 2; Redis out of
    reach is one line, exit 3; Ctrl-C is one line, exit 130: never a traceback.
    """
    stdout = sys.stdout
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "enqueue":
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command not in SERVICE_COMMANDS:
            # A failed write is told from the other OSErrors a command may meet.
            sys.stdout = GuardedOutput(stdout)
        return configured(parser, args, extra)
    except KeyboardInterrupt:
        # (A follow says more, and exits 130 itself; this is any other command, or a worker
        # waiting for its Redis.)
        print("jobcast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        sys.stdout = stdout


def configured(parser: Parser, args: argparse.Namespace,
               extra: list[str]) -> int:
    """Read the settings (those of the `jobcast up` running here, for a client command) and
    the user's tasks, then run the command; its exit status, or the one of what stopped it."""
    passed_over = None  # why the `jobcast up` running here was not used, if it was not
    try:
        if args.command in CLIENT_COMMANDS:
            passed_over = follow_running_up()
        cfg = get_settings()
    except ValidationError as exc:
        for line in setting_errors(exc):
            print(f"jobcast: {line}", file=sys.stderr)
        return 2
    except UnknownRedis as exc:
        print(f"jobcast: {exc}", file=sys.stderr)
        return 3
    for line in unknown_variables():
        print(f"jobcast: warning: {line}", file=sys.stderr)
    # As `flask` and `rq worker` do, the user's task modules are found in the working
    # directory: a console script's sys.path holds its own bin/ instead (`python -m` adds it).
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        load_user_tasks()
    except ImportError as exc:
        print(f"jobcast: JOBCAST_TASKS={cfg.tasks!r} is invalid: {exc}", file=sys.stderr)
        return 2
    try:
        code = run(parser, args, extra)
        sys.stdout.flush()  # (what is still buffered fails here, if it does: said as any write)
        return code
    except NotACluster as exc:
        print(f"jobcast: JOBCAST_STREAM_URL is invalid: {exc}", file=sys.stderr)
        return 2
    except RedisError as exc:
        where = masked_url(cfg.redis_url)
        if cfg.stream_url and cfg.stream_url != cfg.redis_url:
            # The error does not say which client raised it: name both.
            where = f"{where} (REDIS_URL) or {masked_url(cfg.stream_url)} (JOBCAST_STREAM_URL)"
        # A `jobcast up` passed over for its queue or its logs is why this Redis was asked.
        hint = f" ({passed_over})" if passed_over else ""
        print(f"jobcast: cannot reach Redis at {where}: {error_text(exc)}{hint}", file=sys.stderr)
        return 3
    except BrokenPipeError:
        # Its reader left (`jobcast follow ID | head`): stop quietly, with the status of a
        # program SIGPIPE ended, and nothing more for Python to flush into the closed pipe.
        drop_stdout()
        return PIPE_CLOSED
    except OutputFailed as exc:
        # (`> /dev/full`, a full disk.) Nothing more is written there: what is buffered would
        # fail again as Python exits, with a traceback of its own.
        drop_stdout()
        print(f"jobcast: cannot write to standard output: {exc}", file=sys.stderr)
        return EXIT_OUTPUT_FAILED


def drop_stdout() -> None:
    """Point standard output at /dev/null: what is still buffered goes nowhere as Python
    exits, instead of failing again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def cmd_web(parser: Parser, args: argparse.Namespace) -> int:
    """Check the settings and the address, then replace this process with gunicorn."""
    cfg = get_settings()
    # Refused here, before gunicorn: its workers would fail one after the other, each
    # with a traceback, and `jobcast up` or compose would start it again and again.
    problems = cfg.web_errors()
    for problem in problems:
        print(f"jobcast: {problem}", file=sys.stderr)
    if problems:
        return 2
    web_parser = parser.commands["web"]
    if args.bind is not None:
        host, bind_port = args.bind
        if bind_port is not None and args.port is not None:
            web_parser.error(f"argument --bind: names port {bind_port}, and --port "
                             f"{args.port}: give the port one way")
        problem = unresolvable(host)
        if problem:
            web_parser.error(f"argument --bind: {problem}")
    else:
        bind_port = None
        try:
            host, setting_port = bind_address(cfg.bind)
            problem = ("the port is PORT's (or --port's) to say, not JOBCAST_BIND's"
                       if setting_port is not None else unresolvable(host))
        except argparse.ArgumentTypeError as exc:
            problem = str(exc)
        if problem:
            print(f"jobcast: JOBCAST_BIND={cfg.bind!r} is invalid: {problem}",
                  file=sys.stderr)
            return 2
    if separate(cfg):
        # Each gunicorn worker asks the stream store whether it is a Cluster as it boots: one
        # out of reach failed every worker with a traceback, then gunicorn. Asked here once,
        # it is one line (exit 3; a URL naming several hosts of no Cluster: exit 2).
        url = stream_url(cfg)
        if not cluster_enabled(url):
            one_node(url)
    port = bind_port or args.port or cfg.port
    problem = cannot_listen(host, port)
    if problem:
        print(f"jobcast: cannot listen on {host_port(host, port)}: {problem}",
              file=sys.stderr)
        return 1
    serve(host_port(host, port), args.workers or cfg.web_concurrency)
    return 0


def run(parser: Parser, args: argparse.Namespace, extra: list[str]) -> int:
    """Run the command ``args`` names; its exit status."""
    if args.command == "enqueue":
        return cmd_enqueue(args, extra)
    if args.command == "follow":
        return cmd_follow(args)
    if args.command == "tasks":
        return cmd_tasks(args)
    if args.command == "cancel":
        return cmd_cancel(args)
    if args.command == "jobs":
        return cmd_jobs(args)
    if args.command == "worker":
        run_worker(burst=args.burst, queues=args.queues)
        return 0
    if args.command == "web":
        return cmd_web(parser, args)
    if args.command == "up":
        env: dict[str, dict[str, str]] = {}
        for kind, name, value in args.env:
            env.setdefault(kind, {})[name] = value
        return up(port=args.port, host=args.host, workers=args.workers,
                  web_workers=args.web_workers, demo=not args.no_demo, verbose=args.verbose,
                  env=env)
    if args.command == "status":
        return status(args.output)
    parser.error(f"unknown command {args.command}")
    return 2
