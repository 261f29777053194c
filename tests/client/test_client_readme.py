"""Run the client section's examples from README.md against a real gloomd.

The examples sit between ``<!-- client-examples:start -->`` and
``<!-- client-examples:end -->``; the test fails if the markers are missing,
so the section cannot silently drop out of the README.  GLOOM_README names
another file to read instead (used before the section was merged).

The examples use the default ports; the test rewrites 9998/9999 to the test
daemon's ports in Python code and sets GLOOMD_MASTER_PORT / GLOOMD_SLAVE_PORT
for the shell example.  An output line is checked wherever the example
promises it: ``print(...)  # 49`` must print ``49``, in order, and every
``print`` must carry such a comment; in the shell example ``cmd  # 144``
must print the line ``144``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, spawn_gloomd

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
START = "<!-- client-examples:start -->"
END = "<!-- client-examples:end -->"
BLOCK = re.compile(r"^```(python|sh)\n(.*?)^```", re.M | re.S)
PROMISE = re.compile(r"#\s+(.+?)\s*$")


def section() -> str:
    path = Path(os.environ.get("GLOOM_README", ROOT / "README.md"))
    text = path.read_text(encoding="utf-8")
    assert START in text and END in text, f"{path} lacks the client example markers"
    return text.split(START, 1)[1].split(END, 1)[0]


def blocks(language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(section()) if lang == language]


def promised_python_output(code: str) -> list[str]:
    expected = []
    for line in code.splitlines():
        if line.strip().startswith("print("):
            match = PROMISE.search(line)
            assert match, f"example print without its output comment: {line.strip()}"
            expected.append(match.group(1))
    return expected


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with spawn_gloomd() as d:
        yield d


def test_the_section_has_examples() -> None:
    assert len(blocks("python")) >= 3 and len(blocks("sh")) >= 1


@pytest.mark.parametrize("index", range(3))
def test_python_example(daemon: Daemon, index: int) -> None:
    code = blocks("python")[index]
    expected = promised_python_output(code)
    assert expected, "an example that promises no output checks nothing"
    code = code.replace("9998", str(daemon.master_port)).replace("9999", str(daemon.slave_port))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected


def test_shell_example(daemon: Daemon) -> None:
    (code,) = blocks("sh")
    expected = [m.group(1) for line in code.splitlines() if (m := PROMISE.search(line))]
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "GLOOMD_MASTER_PORT": str(daemon.master_port),
        "GLOOMD_SLAVE_PORT": str(daemon.slave_port),
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        ["bash", "-e", "-c", code], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    position = 0
    for want in expected:
        assert want in lines[position:], f"{want!r} not printed (stdout: {done.stdout!r})"
        position = lines.index(want, position) + 1
    assert "square" in done.stdout or "report" in done.stdout  # the stats table
