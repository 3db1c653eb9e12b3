"""The wheel as a user gets it: built from the source tree, installed into a fresh virtualenv,
imported from an ordinary RQ project that has its own ``worker.py`` and ``web/`` package.

The fresh venv gets Jobcast's dependencies from this environment's site-packages, appended
to its path by a ``.pth`` line (nothing is downloaded). A path line does not run the ``.pth``
files of the folder it adds, so the dev venv's editable finder for ``jobcast`` never loads;
the child process checks that too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.support.services import ROOT

SOURCE_IGNORE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info",
                                       "__pycache__", ".pytest_cache", "node_modules", "tmp")

# Run by the fresh venv's python from the RQ project's folder.
PROBE = textwrap.dedent("""
    import json, sys
    import jobcast
    from jobcast import emit, Worker, init_app
    import web, worker
    import jobcast.web, jobcast.worker
    print(json.dumps({
        "jobcast": jobcast.__file__,
        "jobcast.web": jobcast.web.__file__,
        "jobcast.worker": jobcast.worker.__file__,
        "web": web.__file__,
        "worker": worker.__file__,
        "names": [emit.__module__, Worker.__module__, init_app.__module__],
        "finders": [type(f).__module__ for f in sys.meta_path],
        "editable": sorted(m for m in sys.modules if "editable" in m),
    }))
""")


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd``; fail the test with its output if it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source tree (setuptools builds in place: the copy
    keeps build/ and *.egg-info out of the work tree), without build isolation: the test
    extras bring the setuptools that pyproject.toml's build-system asks for."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SOURCE_IGNORE)
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--wheel-dir", str(tmp / "dist"), str(src))
    (built,) = (tmp / "dist").glob("jobcast-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (no pip of its own: this environment's pip
    installs into it) and this environment's site-packages appended for the dependencies."""
    home = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", str(home))
    python = home / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
        "--no-deps", "--no-index", str(wheel))
    site = Path(run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    env=clean_env()).stdout.strip())
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz-dev-dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    return home


def clean_env() -> dict[str, str]:
    """The environment for the fresh venv's processes: no PYTHONPATH, no user site."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return dict(env, PYTHONNOUSERSITE="1")


def test_the_wheel_installs_no_top_level_package_but_jobcast_and_ships_its_data(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (record,) = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
        files = [line.split(",", 1)[0] for line in zf.read(record).decode().splitlines() if line]
    tops = {f.split("/", 1)[0] for f in files if ".dist-info/" not in f}
    assert tops == {"jobcast"}
    for path in ("jobcast/core/append.lua", "jobcast/web/gunicorn.conf.py",
                 "jobcast/web/templates/job.html", "jobcast/web/static/jobcast.js",
                 "jobcast/worker/emit.py",
                 "jobcast/producer/enqueue.py", "jobcast/cli/follow.py"):
        assert path in files, path


def test_an_rq_project_with_its_own_worker_and_web_imports_the_installed_jobcast(venv, tmp_path):
    site = next((venv / "lib").glob("python*/site-packages"))
    installed = {p.name for p in site.iterdir()} - {"zz-dev-dependencies.pth", "__pycache__"}
    assert {n for n in installed if not n.endswith(".dist-info")} == {"jobcast"}, installed
    project = tmp_path / "project"
    (project / "web").mkdir(parents=True)
    (project / "worker.py").write_text("def count(n):\n    return n\n")
    (project / "web" / "__init__.py").write_text("APP = 'the project\\'s own web'\n")
    out = run(str(venv / "bin" / "python"), "-c", PROBE, cwd=project, env=clean_env())
    found = json.loads(out.stdout)
    for name in ("jobcast", "jobcast.web", "jobcast.worker"):
        assert Path(found[name]).is_relative_to(site), (name, found[name])
    assert Path(found["web"]) == project / "web" / "__init__.py"
    assert Path(found["worker"]) == project / "worker.py"
    assert found["names"] == ["jobcast.worker.emit", "jobcast.worker.hook", "jobcast.web.mount"]
    assert found["editable"] == [] and not any("editable" in f for f in found["finders"])


def test_the_installed_command_runs(venv, tmp_path):
    out = run(str(venv / "bin" / "jobcast"), "--help", cwd=tmp_path, env=clean_env())
    assert "follow" in out.stdout
