"""`jobcast web`'s start: what it gives gunicorn before it becomes it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile

import httpx
import pytest

from jobcast.web.serve import METRICS_PREFIX, metrics_dir
from tests.support.services import WebServer
from tests.support.wait import wait_for


def test_a_start_removes_the_metrics_directories_of_servers_that_have_ended(tmp_path,
                                                                            monkeypatch):
    """A review's finding: each start left a metrics directory behind in /tmp (gunicorn
    replaces the process that made it, so nothing removed it); a machine had 284."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead = tmp_path / f"{METRICS_PREFIX}{ended.stdout.strip()}-abc"
    alive = tmp_path / f"{METRICS_PREFIX}{os.getppid()}-def"  # the server that runs pytest's
    other = tmp_path / f"{METRICS_PREFIX}xyz"  # not one of ours: left alone
    for folder in (dead, alive, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x")
    made = metrics_dir()
    assert not dead.exists() and alive.exists() and other.exists()
    assert os.path.basename(made).startswith(f"{METRICS_PREFIX}{os.getpid()}-")
    assert os.listdir(made) == [] and os.stat(made).st_mode & 0o777 == 0o700


def test_the_servers_log_has_jobcasts_info_lines_as_gunicorn_writes_its_own(web, http):
    """An operator review's finding: `jobcast web` never configured logging, so the cancel line
    the README promises (`job … cancel asked from <address>`) never showed, and Jobcast's
    warnings came bare, with no time or level."""
    job_id = http.post("/api/jobs", json={"task": "sqrt", "params": {"n": 500, "interval": 1}}
                       ).json()["id"]
    assert http.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    line = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[INFO\] "
                      rf"job {job_id}: cancel asked from 127\.0\.0\.1$", re.M)
    wait_for(lambda: line.search(web.log_path.read_text()), 10,
             what="the cancel's line in the server's log")
    assert web.log_path.read_text().count(f"job {job_id}: cancel asked") == 1, "once, not twice"


@pytest.mark.slow
def test_an_open_server_says_so_in_its_log_when_each_worker_boots_not_at_a_first_request(
        redis_server, tmp_path):
    """An operator review's finding: the warning came only with a process's first request,
    so an operator reading the log of a server just started saw nothing."""
    log_path = tmp_path / "web.log"
    server = WebServer(redis_server.url, workers=2, log_path=log_path, JOBCAST_TOKEN="")
    server.start()  # (its wait for /readyz is one request, to one of the two workers)
    try:
        said = "JOBCAST_TOKEN is not set: anyone who can reach this server"
        wait_for(lambda: log_path.read_text().count(said) >= 2, 10,
                 what="each worker to say so as it boots")
        assert log_path.read_text().count(said) == 2, "once a worker"
    finally:
        server.stop()


@pytest.mark.slow
def test_jobcasts_log_lines_follow_gunicorns_log_level(redis_server, tmp_path):
    """A second reading's finding: Jobcast's lines had a level and handler of their own, so
    `--log-level warning` did not quiet them (nor `--error-logfile` move them)."""
    log_path = tmp_path / "web.log"
    server = WebServer(redis_server.url, workers=1, log_path=log_path, JOBCAST_TOKEN="",
                       GUNICORN_CMD_ARGS="--log-level warning")
    server.start()
    try:
        job_id = httpx.post(f"{server.url}/api/jobs", timeout=10, json={
            "task": "sqrt", "params": {"n": 500, "interval": 1}}).json()["id"]
        assert httpx.post(f"{server.url}/api/jobs/{job_id}/cancel", timeout=10).status_code == 200
        wait_for(lambda: "[WARNING] JOBCAST_TOKEN is not set" in log_path.read_text(), 10,
                 what="the open server's warning")
    finally:
        server.stop()
    assert "cancel asked" not in log_path.read_text()


@pytest.mark.slow
def test_ctrl_c_stops_the_server_without_a_traceback(redis_server, tmp_path):
    """A CLI user's review: each Ctrl-C on `jobcast web` printed a traceback per worker
    (gunicorn's gevent worker ends the process with sys.exit() in a greenlet of its own,
    which gevent reports as a failure). Ctrl-C sends SIGINT to the master and its workers."""
    import psutil

    log_path = tmp_path / "web.log"
    server = WebServer(redis_server.url, workers=2, log_path=log_path).start()
    try:
        processes = [psutil.Process(server.proc.pid)]
        processes += processes[0].children()
        wait_for(lambda: log_path.read_text().count("Booting worker") == 2, 10,
                 what="both workers")
        for process in processes:
            process.send_signal(signal.SIGINT)
        assert server.proc.wait(30) == 0
    finally:
        server.stop()
    log = log_path.read_text()
    assert log.count("Worker exiting") == 2
    assert "Traceback" not in log and "failed with SystemExit" not in log, log


@pytest.mark.slow  # starts `jobcast web`, and gunicorn where the check lets it
# (An address that does not resolve is a bad argument, exit 2: tests/cli/test_args.py.)
@pytest.mark.parametrize("bind, said", [("127.0.0.1", "Address already in use"),
                                        ("192.0.2.1", "")])  # TEST-NET-1: not this machine's
def test_a_port_in_use_or_an_address_not_here_is_one_line_and_exit_1(bind, said):
    """A CLI user's review: `jobcast web` on a busy port, or a --bind that is not this
    machine's, printed gunicorn's retries (6 to 11 error lines over 5 s), then exit 1 with no
    word of why."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "jobcast", "web", "--bind", bind,
                              "--port", str(port), "--workers", "1"], capture_output=True,
                             text=True, timeout=60,
                             env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert out.returncode == 1
    [line] = out.stderr.splitlines()
    assert line.startswith(f"jobcast: cannot listen on {bind}:{port}: ") and said in line
