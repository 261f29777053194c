"""Fixtures shared by the websocket service's tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture
def gate_names() -> Iterator[list[str]]:
    """Unique gate names for the test; every one is released at teardown so no
    job thread outlives the test waiting for a release that never comes."""
    names: list[str] = []
    yield names
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("_gloomd_wsjobs_") and module_name.endswith(".gates"):
            for name in names:
                for suffix in ("", "/1", "/2", "/3"):
                    module.release(name + suffix)
