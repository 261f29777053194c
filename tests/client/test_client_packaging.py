"""The client installs without the daemon: client/pyproject.toml (`gloom-client`).

The wheel is built from the checkout and installed, offline, into a fresh
virtual environment from a wheelhouse: there `import gloom, gloom.worker`
works and talks to a daemon, while gloomd and the daemon's own dependencies
(psutil, pendulum, ...) are not installed at all.

The wheelhouse is filled first with what the environment must provide (the
build backend, trio, orjson, rich and their dependencies) through pip's
configured index and cache; if pip cannot get them the test is skipped with
the reason.  Everything after that is offline (``--no-index``) and must work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
#: What a client-only install must not have.
DAEMON_ONLY = ("gloomd", "psutil", "pendulum", "trio_websocket", "h11", "prometheus_client")

CHECK = """
import importlib.util, json, sys
import gloom, gloom.worker, gloom.cli, gloomwire
print(json.dumps({{
    "gloom": gloom.__file__,
    "gloomwire": gloomwire.__file__,
    "version": gloomwire.__version__,
    "present": [n for n in {!r} if importlib.util.find_spec(n) is not None],
    "gloomd_loaded": sorted(m for m in sys.modules if m.split(".")[0] == "gloomd"),
}}))
""".format(DAEMON_ONLY)


def pip(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def tail(done: subprocess.CompletedProcess[str]) -> str:
    return (done.stdout + done.stderr).strip()[-1500:]


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the client wheel (and its dependencies) installed."""
    tmp = tmp_path_factory.mktemp("client-only")
    wheels = tmp / "wheelhouse"
    needed = ["hatchling>=1.18", "trio>=0.25", "orjson>=3.9", "rich>=13"]
    fetched = pip("download", "--dest", wheels, "--only-binary", ":all:", *needed)
    if fetched.returncode != 0:
        pytest.skip(
            "cannot build the client here: pip could not get the build backend and the "
            f"client's dependencies from its index or cache:\n{tail(fetched)}"
        )
    # From here on, offline: a failure is the project's.
    built = pip(
        "wheel", "--no-index", "--find-links", wheels, "--wheel-dir", wheels, ROOT / "client"
    )
    assert built.returncode == 0, tail(built)
    assert len(list(wheels.glob("gloom_client-*.whl"))) == 1
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=60)
    python = venv / "bin" / "python"
    installed = pip(
        "--python", python, "install", "--no-index", "--find-links", wheels, "gloom-client"
    )
    assert installed.returncode == 0, tail(installed)
    return venv


def test_client_wheel_imports_without_the_daemon(client_venv: Path, tmp_path: Path) -> None:
    # -I: no PYTHONPATH, no user site, no current directory (the checkout's
    # gloomd/ must not sneak in); run from elsewhere anyway.
    done = subprocess.run(
        [client_venv / "bin" / "python", "-I", "-c", CHECK],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    site = str(client_venv)
    assert found["gloom"].startswith(site) and found["gloomwire"].startswith(site)
    from gloomwire import __version__

    assert found["version"] == __version__  # the one version, read by both pyprojects
    assert found["present"] == [] and found["gloomd_loaded"] == []


async def test_client_only_gloom_command_talks_to_a_daemon(
    client_venv: Path, gloomd_server: Any, tmp_path: Path
) -> None:
    gloom = client_venv / "bin" / "gloom"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GLOOMD_TOKEN")}
    shown = await trio.run_process([gloom, "--help"], capture_stdout=True, env=env, cwd=tmp_path)
    commands = shown.stdout.decode()
    assert "worker" in commands and "submit" in commands
    assert "schedule" not in commands  # gloomd's plug-in: not installed here
    port = str(gloomd_server.master_port)
    with trio.fail_after(30):
        done = await trio.run_process(
            [gloom, "stats", "--json", "--master-port", port],
            capture_stdout=True, capture_stderr=True, env=env, cwd=tmp_path, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["connections"]["masters"] == 1
