"""Fixtures of the CLI's tests."""

from __future__ import annotations

import pytest

from tests.support.cli import CuttableProxy


@pytest.fixture
def proxy(web):
    """A proxy in front of the session's web server whose connections the test can cut."""
    p = CuttableProxy(web.port)
    yield p
    p.close()
