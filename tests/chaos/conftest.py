"""A private stack per test module, so faults injected here do not touch other tests."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.chaos import Stack


@pytest.fixture
def stack(request, tmp_path) -> Iterator[Stack]:
    """A fresh stack with two workers for one test, with the settings of its ``stack_env``
    marker, if any."""
    marker = request.node.get_closest_marker("stack_env")
    s = Stack(tmp_path, **(marker.kwargs if marker else {}))
    yield s
    s.close()
