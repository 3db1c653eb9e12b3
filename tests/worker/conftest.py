"""Fixtures of the worker's tests."""

from __future__ import annotations

import pytest

from jobcast.core.settings import get_settings


@pytest.fixture
def in_process(redis_server, monkeypatch):
    """Settings read from the environment in this process, as a worker reads them (and not
    kept for the next test)."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
