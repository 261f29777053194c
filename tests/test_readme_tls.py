"""README's recipes for a test certificate run as written: gloomd serves TLS with the
certificate they make, and `gloom stats` verifies it with the `--tls-ca` README gives.

The daemon runs on free ports (the recipe's gloomd flags, plus the test's ports); the
gloom line reads the ports from GLOOMD_MASTER_PORT / GLOOMD_SLAVE_PORT.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import spawn_gloomd

pytestmark = pytest.mark.timeout(90)

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "### A certificate to try TLS with"
BIN = Path(sys.executable).parent


def section() -> str:
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, "README lost its TLS certificate recipe"
    return text.split(HEADING, 1)[1].split("\n#", 1)[0]


def commands(block: str) -> list[list[str]]:
    """The block's commands, continuation lines joined, each without its comment."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def run_gloom_stats(argv: list[str], cwd: Path, master_port: int, slave_port: int) -> str:
    assert argv[:2] == ["gloom", "stats"], argv
    env = {
        **os.environ,
        "GLOOMD_MASTER_PORT": str(master_port),
        "GLOOMD_SLAVE_PORT": str(slave_port),
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        [str(BIN / "gloom"), *argv[1:], "--json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def serve_and_ask(daemon_argv: list[str], stats_argv: list[str], cwd: Path) -> None:
    assert daemon_argv[0] == "gloomd", daemon_argv
    # The daemon's files are named relative to where the recipe ran.
    args = [str(cwd / a) if (cwd / a).is_file() else a for a in daemon_argv[1:]]
    assert "--tls-cert" in args and "--tls-key" in args
    with spawn_gloomd(*args, env={"GLOOMD_TEST_QUIET_LOGS": "1"}) as daemon:
        out = run_gloom_stats(stats_argv, cwd, daemon.master_port, daemon.slave_port)
        assert '"totals"' in out, out
        # Without the certificate's CA the same client is refused: TLS is really on.
        plain = subprocess.run(
            [str(BIN / "gloom"), "stats", "--tls", "--master-port", str(daemon.master_port)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert plain.returncode == 3, plain.stderr


def test_the_openssl_recipe(tmp_path: Path) -> None:
    assert shutil.which("openssl"), "the recipe needs openssl"
    (block,) = re.findall(r"```sh\n(.*?)```", section(), re.S)
    openssl, daemon_argv, stats_argv = commands(block)
    assert openssl[0] == "openssl"
    subprocess.run(openssl, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    serve_and_ask(daemon_argv, stats_argv, tmp_path)


def test_the_trustme_recipe(tmp_path: Path) -> None:
    spans = re.findall(r"`([^`]+)`", " ".join(section().split("With [trustme]", 1)[1].split()))
    make, daemon_line, stats_line = [
        s for s in spans if s.split()[0] in ("python", "gloomd", "gloom")
    ]
    assert shlex.split(make)[:3] == ["python", "-m", "trustme"]
    subprocess.run([sys.executable, *shlex.split(make)[1:]], cwd=tmp_path, check=True, timeout=60)
    serve_and_ask(shlex.split(daemon_line), shlex.split(stats_line), tmp_path)
