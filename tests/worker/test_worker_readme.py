"""Run README's worker section ("Worker runner: `gloom worker`") as written, against a gloomd.

Every example there is a complete program: each Python block compiles as a module (no
`await` at top level) and uses no name it does not define or import (ruff's F821).  Then,
in a directory holding the section's `myapp/images.py`, as a user would:

* the shell commands that serve (`gloom worker ...`, `python -m gloom.worker ...`) and the
  `gloom.worker.run(...)` program each serve a job, then stop cleanly on SIGTERM;
* every block that prints says what in a comment, ``print(...)  # 3 0 0 0``, and prints
  that, in order (with `gloom worker` serving `resize` beside it when the block needs it);
* the pytest example passes under pytest.

Blocks naming jobs.example.org (the TLS settings) are only compiled and name-checked.
The examples use the default ports: programs run with a prelude that points the client's
defaults at the test daemon's ports, and commands get GLOOMD_MASTER_PORT/GLOOMD_SLAVE_PORT.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import gloom
from tests.support.daemon import Daemon, spawn_gloomd

pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parents[2] / "README.md"
START = "## Worker runner: `gloom worker`"
BLOCK = re.compile(r"^```(python|sh)\n(.*?)^```", re.M | re.S)
PROMISE = re.compile(r"print\(.*\)\s+#\s+(.+?)\s*$")
MODULE = re.compile(r"# ([\w/]+\.py)\b")
BIN = Path(sys.executable).parent
T = 30.0

# Points the client's default ports at the test daemon (the README's code names none).
PRELUDE = """\
import functools as _functools
import gloom as _gloom
import gloom.worker as _worker
_gloom.open_master = _functools.partial(_gloom.open_master, port={master})
_worker.serve = _functools.partial(_worker.serve, slave_port={slave}, master_port={master})
"""


def section() -> str:
    text = README.read_text(encoding="utf-8")
    assert START in text, "README lost its worker section"
    return text.split(START, 1)[1].split("\n## ", 1)[0]


def blocks(language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(section()) if lang == language]


def promised(code: str) -> list[str]:
    return [m.group(1) for line in code.splitlines() if (m := PROMISE.search(line.strip()))]


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    with spawn_gloomd("--no-http", env={"GLOOMD_TEST_QUIET_LOGS": "1"}) as d:
        yield d


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A directory holding the section's handler modules, where the examples run.

    A block whose first line names a file (``# myapp/images.py``,
    ``# flaky_fetch.py: ...``) is that module, written where it says.
    """
    modules = {m.group(1): code for code in blocks("python") if (m := MODULE.match(code))}
    assert "myapp/images.py" in modules, "README lost the section's handler module"
    for name, code in modules.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent != tmp_path:
            (path.parent / "__init__.py").touch()
        path.write_text(code)
    return tmp_path


def env_for(daemon: Daemon) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),
        "GLOOMD_MASTER_PORT": str(daemon.master_port),
        "GLOOMD_SLAVE_PORT": str(daemon.slave_port),
    }


def program(code: str, daemon: Daemon, where: Path, name: str = "main.py") -> Path:
    path = where / name
    prelude = PRELUDE.format(master=daemon.master_port, slave=daemon.slave_port)
    path.write_text(prelude + code)
    return path


def serves_then_stops(argv: list[str], daemon: Daemon, cwd: Path) -> None:
    """The command serves a `resize` job, then exits 0 on SIGTERM."""
    with subprocess.Popen(argv, cwd=cwd, env=env_for(daemon), stderr=subprocess.PIPE) as proc:
        try:
            with gloom.Master(daemon.master_addr, timeout=T) as master:
                job_id = master.submit(None, "resize", {"path": "a.png"})
                result = master.receive()
                assert (result.id, result.body) == (job_id, {"width": 640})
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=T)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err.decode()


@pytest.fixture
def worker(daemon: Daemon, app: Path) -> Iterator[None]:
    """`gloom worker` serving `resize` from the section's module, as its first command does."""
    proc = subprocess.Popen(
        [str(BIN / "gloom"), "worker", "--type", "resize", "--handler", "myapp.images:resize"],
        cwd=app,
        env=env_for(daemon),
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(T)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def python_blocks() -> list[str]:
    return blocks("python")


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_every_python_block_is_a_complete_program(index: int) -> None:
    code = python_blocks()[index]
    compile(code, f"README worker block {index}", "exec")  # no await at top level
    names = ["--isolated", "--select", "F821,F401,F811", "--stdin-filename", "example.py"]
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *names, "-"],
        input=code,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{code}"


def test_the_shell_commands_serve(daemon: Daemon, app: Path) -> None:
    (code, *_) = blocks("sh")
    lines = [shlex.split(line, comments=True) for line in code.splitlines()]
    commands = [argv for argv in lines if argv]
    assert [argv[0] for argv in commands] == ["gloom", "python"]
    for argv in commands:
        exe = str(BIN / "gloom") if argv[0] == "gloom" else sys.executable
        serves_then_stops([exe, *argv[1:]], daemon, app)


def test_the_run_program_serves(daemon: Daemon, app: Path) -> None:
    (code,) = [c for c in python_blocks() if "gloom.worker.run(" in c and "example.org" not in c]
    serves_then_stops([sys.executable, str(program(code, daemon, app))], daemon, app)


def printing_blocks(runs_a_worker: bool) -> list[int]:
    return [
        i
        for i, code in enumerate(python_blocks())
        if "print(" in code and "pytest" not in code and ("gloom.worker" in code) == runs_a_worker
    ]


def run_and_compare(code: str, daemon: Daemon, app: Path) -> None:
    expected = promised(code)
    assert expected and len(expected) == code.count("print("), "every print says its output"
    done = subprocess.run(
        [sys.executable, str(program(code, daemon, app))],
        cwd=app,
        env=env_for(daemon),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected


@pytest.mark.parametrize("index", printing_blocks(runs_a_worker=True))
def test_a_worker_example_prints_what_it_promises(daemon: Daemon, app: Path, index: int) -> None:
    run_and_compare(python_blocks()[index], daemon, app)


@pytest.mark.parametrize("index", printing_blocks(runs_a_worker=False))
@pytest.mark.usefixtures("worker")
def test_a_master_example_prints_what_it_promises(daemon: Daemon, app: Path, index: int) -> None:
    """Examples of what a master sees, with `gloom worker` serving `resize` meanwhile."""
    run_and_compare(python_blocks()[index], daemon, app)


def test_the_pytest_example_passes(daemon: Daemon, app: Path) -> None:
    (code,) = [c for c in python_blocks() if "import pytest" in c]
    name = code.splitlines()[0].split()[1].rstrip(":,")
    assert name.startswith("test_") and name.endswith(".py"), name
    path = program(code, daemon, app, name)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
        cwd=app,
        env=env_for(daemon),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
