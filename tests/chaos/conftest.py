"""A private stack per test module, so faults injected here do not touch other tests."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.chaos import Stack


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    """A fresh stack with two workers for one test."""
    s = Stack(tmp_path)
    yield s
    s.close()
