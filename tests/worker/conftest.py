"""Fixtures of the worker's tests."""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from jobcast.core.settings import Settings, get_settings


@pytest.fixture
def in_process(redis_server, monkeypatch):
    """Settings read from the environment in this process, as a worker reads them (and not
    kept for the next test)."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def settings(redis_server, monkeypatch) -> Iterator[Settings]:
    """Settings of a private queue on the session's Redis; the runner reads them from the
    environment, as in a worker (read afresh: an app created by an earlier test may have
    cached this process's settings from another environment)."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    get_settings.cache_clear()
    yield Settings(redis_url=redis_server.url, queue_name=f"unit-{uuid.uuid4().hex}")
    get_settings.cache_clear()
