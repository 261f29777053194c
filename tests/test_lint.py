"""The tree is clean under ruff's checks and format (settings in pyproject.toml).

Run the way tests/test_typing.py runs mypy, and the way `make lint` does: the
ruff of this environment (pinned in the test extra), over the whole tree.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        importlib.util.find_spec("ruff") is None,
        reason="ruff is not installed (it comes with the test extra: pip install -e '.[test]')",
    ),
]


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )


def test_ruff_check_is_clean() -> None:
    done = ruff("check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_is_clean() -> None:
    done = ruff("format", "--check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr
