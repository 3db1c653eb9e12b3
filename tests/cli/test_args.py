"""The `jobcast` command's arguments and settings, in-process (no service is started)."""

from __future__ import annotations

import pytest

from jobcast.cli import main as cli
from jobcast.core.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch):
    """Settings read from this test's environment (no JOBCAST_* from the shell running it)."""
    for field in Settings.model_fields.values():
        monkeypatch.delenv(field.validation_alias, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def served(monkeypatch) -> list:
    """The (bind, workers) `jobcast web` would serve with, instead of starting gunicorn."""
    calls = []
    monkeypatch.setattr(cli, "serve", lambda bind, workers: calls.append((bind, workers)))
    return calls


def test_jobcast_web_listens_on_loopback_unless_told_otherwise(served, monkeypatch):
    """Finding 6 of issue 23: `jobcast web` bound 0.0.0.0 by default."""
    assert cli.main(["web"]) == 0
    assert served[-1][0] == "127.0.0.1:8000"
    assert cli.main(["web", "--bind", "0.0.0.0"]) == 0 and served[-1][0] == "0.0.0.0:8000"
    monkeypatch.setenv("JOBCAST_BIND", "192.0.2.1")
    get_settings.cache_clear()
    assert cli.main(["web"]) == 0 and served[-1][0] == "192.0.2.1:8000"
