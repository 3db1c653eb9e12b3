"""`jobcast web`'s start: what it gives gunicorn before it becomes it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from jobcast.web.serve import METRICS_PREFIX, metrics_dir


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
