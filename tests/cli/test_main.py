"""The `jobcast` command: enqueue prints the id and URL; bad input exits 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from rq import Queue

from tests.support.services import JOBCAST, ROOT, WebServer, service_env
from tests.support.wait import wait_for
from jobcast.core.joblog import JobLog

pytestmark = pytest.mark.slow  # each test runs `jobcast` in a process of its own


def jobcast(redis_url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run `jobcast ARGS` with the settings of these tests (and ``env``)."""
    # A queue of its own: the session's workers (if some test started them) must not take
    # the jobs these tests look at.
    env = service_env(redis_url, **{"JOBCAST_URL": "http://jobcast.test:8000",
                                    "JOBCAST_QUEUE": "cli-tests", **env})
    return subprocess.run([*JOBCAST, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_enqueue_prints_the_job_id_and_its_page_url(redis_server, redis):
    out = jobcast(redis_server.url, "enqueue", "sqrt", "--n", "20", "--interval=0.1")
    assert out.returncode == 0, out.stderr
    job_id, url = out.stdout.split()
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    assert url == f"http://jobcast.test:8000/jobs/{job_id}"
    info = JobLog(redis, job_id).info().model_dump()
    assert info["params"] == {"n": 20, "interval": 0.1} and info["status"] == "queued"


def test_enqueue_with_json_output_prints_the_queued_jobs_id_and_the_urls_of_its_views(
        redis_server, redis):
    out = jobcast(redis_server.url, "enqueue", "pi", "--samples", "1000", "--output", "json")
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert set(printed) == {"id", "urls"}
    job_id = printed["id"]
    # The id is the job just queued: in its log, and on RQ's queue.
    info = JobLog(redis, job_id).info().model_dump()
    assert info["task"] == "pi" and info["params"]["samples"] == 1000
    assert info["status"] == "queued"
    assert job_id in Queue("cli-tests", connection=redis).job_ids
    base = "http://jobcast.test:8000"
    assert printed["urls"] == {"page": f"{base}/jobs/{job_id}",
                               "stream": f"{base}/jobs/{job_id}/stream",
                               "events": f"{base}/jobs/{job_id}/events",
                               "frame": f"{base}/jobs/{job_id}/frame",
                               "framed": f"{base}/jobs/{job_id}/framed",
                               "status": f"{base}/api/jobs/{job_id}"}


@pytest.mark.parametrize("args, message", [
    (["enqueue", "nope"], "unknown task"),
    (["enqueue", "sqrt", "--n", "ten"], "params.n"),
    (["enqueue", "sqrt", "--n", "-3"], "params.n"),
    (["enqueue", "sqrt", "--n"], "needs a value"),
    (["enqueue", "sqrt", "stray"], "expected --name value"),
    (["enqueue", "sqrt", "--color", "red"], "params.color"),
])
def test_bad_input_exits_2_with_a_clear_message(redis_server, args, message):
    out = jobcast(redis_server.url, *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_the_installed_command_finds_the_users_task_module_in_the_working_directory(
        redis_server, tmp_path):
    """A review's finding: the README says JOBCAST_TASKS names modules importable from the
    working directory, but the `jobcast` console script (unlike `python -m jobcast`) did not
    look there, and every command exited 2: "No module named 'mytasks'"."""
    (tmp_path / "mytasks.py").write_text(
        "from jobcast.core.registry import task\n\n"
        "@task('countdown')\n"
        "def countdown(start_at: int = 3, *, start: int = 0):\n"
        "    \"\"\"Count down to zero.\"\"\"\n"
        "    yield from range(start_at - start, -1, -1)\n")
    script = Path(sys.executable).with_name("jobcast")  # the console script pip installed
    env = service_env(redis_server.url, JOBCAST_TASKS="mytasks")
    env.pop("PYTHONPATH", None)
    out = subprocess.run([str(script), "tasks"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "countdown: Count down to zero." in out.stdout


def test_tasks_lists_the_builtin_tasks(redis_server):
    out = jobcast(redis_server.url, "tasks")
    assert out.returncode == 0
    assert all(name in out.stdout for name in ("sqrt:", "clock:", "pi:"))


@pytest.mark.parametrize("unread", ["the job", "the signing key"])
def test_enqueue_whose_link_cannot_be_signed_still_prints_the_queued_jobs_id(
        redis_server, redis, monkeypatch, capsys, unread):
    """A review's finding: in private mode a Redis error reading the job back (to sign its
    link) came after the job was queued, and the id was never printed: a user who tried
    again queued it twice. A later review: so did one reading the generated signing key
    (no JOBCAST_SECRET)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from jobcast.cli.main import main
    from jobcast.core import secret
    from jobcast.core.settings import get_settings

    env = {"JOBCAST_SECRET": "s" * 32} if unread == "the job" else {"JOBCAST_TOKEN": "t" * 32}
    for name, value in service_env(redis_server.url, JOBCAST_QUEUE="cli-tests",
                                   JOBCAST_READ="private", **env).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()

    def unanswered(*args, **kwargs):
        """Redis does not answer this read."""
        raise RedisConnectionError("no answer")

    if unread == "the job":
        monkeypatch.setattr(JobLog, "info", unanswered)
    else:
        monkeypatch.setattr(secret, "_keys", {})
        monkeypatch.setattr(secret, "redis_client", unanswered)
    try:
        assert main(["enqueue", "sqrt", "--n", "3"]) == 3
    finally:
        get_settings.cache_clear()
    out, err = capsys.readouterr()
    (job_id,) = out.split()
    assert job_id in Queue("cli-tests", connection=redis).job_ids
    assert f"job {job_id} is queued" in err and "no answer" in err


def test_jobs_lists_a_label_and_a_worker_name_with_escape_sequences_harmlessly(redis_server, redis):
    """A review's finding: ``jobcast jobs`` printed an adopted RQ job's label and its worker's
    name as they were, so an escape sequence in them reached the terminal."""
    log = JobLog(redis, "e" * 32)
    log.create("sqrt\x1b]0;owned\x07", {}, None)
    log.started("w\x1b[2J", 1)
    out = jobcast(redis_server.url, "jobs", "--limit", "500")
    assert out.returncode == 0, out.stderr
    [row] = [line for line in out.stdout.splitlines() if line.startswith("e" * 32)]
    assert "\x1b" not in row and "\x07" not in row
    assert "sqrt\ufffd]0;owned\ufffd" in row and "w\ufffd[2J" in row


def test_a_misspelt_setting_is_warned_about_on_stderr_and_the_command_still_runs(redis_server):
    """An operator review's finding: `JOBCAST_TOKNE=… jobcast web` started an open server
    without a word about the variable."""
    env = service_env(redis_server.url, JOBCAST_TOKNE="abcdefghijklmnopqrstuvwxyz123456")
    out = subprocess.run([*JOBCAST, "jobs"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert ("jobcast: warning: JOBCAST_TOKNE is not a Jobcast setting (did you mean "
            "JOBCAST_TOKEN?): it is ignored") in out.stderr


def test_a_token_that_is_not_printable_ascii_is_one_line_and_exit_2_never_shown(redis_server):
    """A CLI user's review: `JOBCAST_TOKEN='tøken…'` started a server that refused everyone (no
    client can send it in a header), and `jobcast follow` died with a UnicodeEncodeError
    traceback, exit 1 (a failed job's)."""
    token = "t\u00f8ken-abcdefghijklmnopqrstuvwxyz"
    env = service_env(redis_server.url, JOBCAST_TOKEN=token)
    out = subprocess.run([*JOBCAST, "follow", "a" * 32], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "JOBCAST_TOKEN must be printable ASCII" in out.stderr
    assert "Traceback" not in out.stderr and token not in out.stderr


def test_an_unreachable_stream_store_is_named_with_the_queues_redis(redis_server):
    """A CLI user's review: with JOBCAST_STREAM_URL out of reach, `jobcast jobs` said it could
    not reach REDIS_URL's Redis, which answered."""
    from jobcast.launcher.redisserver import free_port

    stream_url = f"redis://:streamPW@127.0.0.1:{free_port()}/0"
    env = service_env(redis_server.url, JOBCAST_STREAM_URL=stream_url)
    out = subprocess.run([*JOBCAST, "jobs"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 3, out.stderr
    assert "(JOBCAST_STREAM_URL)" in out.stderr and stream_url.split("@")[1] in out.stderr
    assert "streamPW" not in out.stderr and "Traceback" not in out.stderr


def test_jobcast_web_with_its_stream_store_out_of_reach_is_one_line_and_exit_3(redis_server):
    """A Cluster operator's finding: each gunicorn worker failed to boot with a traceback, then
    gunicorn halted (with REDIS_URL out of reach, the web starts and waits)."""
    from jobcast.launcher.redisserver import free_port

    out = jobcast(redis_server.url, "web", "--port", str(free_port()),
                  JOBCAST_STREAM_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert out.returncode == 3, out.stderr
    [line] = out.stderr.splitlines()
    assert line.startswith("jobcast: cannot reach Redis at ") and "JOBCAST_STREAM_URL" in line


@pytest.mark.parametrize("command", [["jobs"], ["web", "--port", "1"]])  # (checked before the port)
def test_a_stream_url_naming_several_hosts_of_no_cluster_is_a_bad_setting_exit_2(redis_server,
                                                                                  command):
    """A Cluster operator's finding: it said it could not reach Redis (exit 3), which answered."""
    host_port = redis_server.url.split("//")[1].split("/")[0]
    out = jobcast(redis_server.url, *command,
                  JOBCAST_STREAM_URL=f"redis://{host_port},{host_port}/0")
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.splitlines()
    assert line.startswith("jobcast: JOBCAST_STREAM_URL is invalid: ") and "several hosts" in line


def test_enqueue_follow_that_a_private_server_would_refuse_queues_nothing_and_exits_2(
        redis_server, redis, logs_dir):
    """A CLI user's review: `jobcast enqueue --follow` on a private server, without its token
    (or with another), queued the job, then was refused the follow: a job nobody watches, and
    a retry queued another."""
    server = WebServer(redis_server.url, log_path=logs_dir / "web-cli-private.log",
                       JOBCAST_TOKEN="the-servers-token").start()
    queue = Queue("cli-tests", connection=redis)
    try:
        for token, said in [("", "the server needs a token: set JOBCAST_TOKEN"),
                            ("not-the-token", "the server refused the token (JOBCAST_TOKEN)")]:
            before = queue.count
            out = jobcast(redis_server.url, "enqueue", "sqrt", "--n", "3", "--follow",
                          "--url", server.url, JOBCAST_TOKEN=token)
            assert out.returncode == 2, out
            assert out.stdout == "", out.stdout
            said_line = f"jobcast: {said} (the job was not queued)"
            assert said_line in out.stderr.splitlines(), out.stderr
            assert queue.count == before
        # With the server's token, the same command queues the job and follows it.
        before = set(queue.job_ids)
        follow = subprocess.Popen(
            [*JOBCAST, "enqueue", "sqrt", "--n", "3", "--follow", "--url", server.url],
            env=service_env(redis_server.url, JOBCAST_QUEUE="cli-tests",
                            JOBCAST_TOKEN="the-servers-token"),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            queued = wait_for(lambda: set(queue.job_ids) - before, 30, what="the job queued")
        finally:
            follow.kill()
            follow.communicate()
        for job_id in queued:  # nobody works this queue: not left for the other tests
            queue.remove(job_id)
    finally:
        server.stop()


@pytest.mark.parametrize("args", [["nosuchtask"], ["sqrt", "--n", "-1"]])
def test_enqueue_follow_checks_the_task_before_it_asks_the_server(redis_server, monkeypatch,
                                                                 capsys, args):
    """A second reading's finding: the server was asked first, so a bad task or parameter
    waited on the network and could be told of a token instead."""
    from jobcast.cli import commands as cli_main
    from jobcast.core.settings import get_settings

    asked = []
    monkeypatch.setattr(cli_main, "read_refused", lambda *a, **k: asked.append(a))
    for name, value in service_env(redis_server.url, JOBCAST_QUEUE="cli-tests").items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        assert cli_main.main(["enqueue", *args, "--follow"]) == 2
    finally:
        get_settings.cache_clear()
    assert asked == [] and "token" not in capsys.readouterr().err


def test_ctrl_c_on_a_worker_waiting_for_an_unreachable_redis_is_one_line_and_exit_130():
    """A CLI user's review: Ctrl-C on `jobcast worker` while it waited for its Redis printed a
    60-line chained traceback ending in the wait's sleep, and the process died of the signal."""
    import signal

    from jobcast.launcher.redisserver import free_port
    from tests.support.cli import Run

    run = Run(f"redis://127.0.0.1:{free_port(7528)}/0", "worker")
    try:
        wait_for(lambda: "trying again in" in run.err, 30, what="the worker waiting for Redis")
        waited = run.err
        run.proc.send_signal(signal.SIGINT)
        assert run.wait(30) == 130, run.err
    finally:
        run.proc.kill()
        run.wait(10)
    assert run.err.startswith(waited) and run.err.endswith("\njobcast: interrupted\n")
    assert "Traceback" not in run.err and "during handling" not in run.err.lower()


def test_ctrl_c_while_the_command_imports_its_modules_is_one_line_and_exit_130(redis_server,
                                                                              tmp_path):
    """A CLI user's review: Ctrl-C in the first half second of any command (while it imports
    Redis, RQ, pydantic...) printed the traceback of an import."""
    import signal

    from tests.support.cli import Run

    # An import that takes its time, so that the Ctrl-C surely comes during it: pydantic is
    # the first heavy module the commands import.
    (tmp_path / "pydantic.py").write_text(
        "import sys, time\n"
        "sys.stderr.write('importing pydantic\\n')\n"
        "sys.stderr.flush()\n"
        "time.sleep(60)  # (a slow import; the test interrupts it)\n")
    run = Run(redis_server.url, "jobs", PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    try:
        wait_for(lambda: "importing pydantic" in run.err, 30, what="the import under way")
        run.proc.send_signal(signal.SIGINT)
        assert run.wait(30) == 130, run.err
    finally:
        run.proc.kill()
        run.wait(10)
    assert run.err == "importing pydantic\njobcast: interrupted\n"


@pytest.mark.parametrize("argv", [["jobs"], ["tasks"]])
def test_output_that_cannot_be_written_is_one_line_and_exit_1(redis_server, redis, argv):
    """A CLI user's review: `jobcast jobs > /dev/full` ended in a traceback, "OSError: [Errno
    28] No space left on device"."""
    JobLog(redis, uuid.uuid4().hex).create("sqrt", {}, None)  # (something for `jobs` to list)
    env = service_env(redis_server.url)
    with open("/dev/full", "w") as full:
        out = subprocess.run([*JOBCAST, *argv], env=env, cwd=ROOT, stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr == "jobcast: cannot write to standard output: No space left on device\n"
