"""Start-up: every configuration is checked before a port is bound, and said in one line.

A configuration gloomd cannot start with (a schedule file that does not
load, a jobs directory that is not there, a state file it cannot write, TLS
or token files it cannot read, flags that make no sense together) ends the
process with exit status 2 and one line, ``gloomd: <flag> <value>: <why>``:
no traceback, no `event=listening` before it.  The scheduler's modules come
from `--import-path` and the current directory, as `gloom worker`'s do, so
README's example runs as pasted from the directory that holds `mypkg/`.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, WSJOBS
from tests.support.daemon import READY

pytestmark = pytest.mark.timeout(60)

#: The installed command, as README runs it (its sys.path starts at .venv/bin,
#: not at the current directory, unlike `python -m gloomd`).
GLOOMD = str(Path(sys.executable).parent / "gloomd")
PORTS = ("--master-port", "0", "--slave-port", "0", "--http-port", "0")

TASKS = """\
def cleanup(days, dry_run=True):
    print(f"cleanup days={days} dry_run={dry_run}", flush=True)
"""


def readme_scheduler_example() -> tuple[str, str]:
    """README's jobs.toml and its first `gloomd --schedule` command, as written."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### In the daemon", 1)[1]
    toml = re.search(r"```toml\n(.*?)```", section, re.S)
    shell = re.search(r"```sh\n(.*?)```", section, re.S)
    assert toml and shell, "README lost its scheduler example"
    command = shell.group(1).splitlines()[0].split("#")[0].strip()
    return toml.group(1), command


def make_project(folder: Path, toml: str) -> None:
    (folder / "mypkg").mkdir()
    (folder / "mypkg" / "__init__.py").write_text("")
    (folder / "mypkg" / "tasks.py").write_text(TASKS)
    (folder / "jobs.toml").write_text(toml)


class Stdout:
    """A process's stdout, a line at a time, each wait bounded."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def line(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.fd, selectors.EVENT_READ)
            while b"\n" not in self.buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    raise TimeoutError(f"no line of stdout in time: {self.buf!r}")
                chunk = os.read(self.fd, 4096)
                if not chunk:
                    assert self.proc.stderr is not None
                    code, err = self.proc.wait(), self.proc.stderr.read()
                    raise AssertionError(f"gloomd exited {code}: {err!r}")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


@contextlib.contextmanager
def run_gloomd(args: list[str], cwd: Path) -> Iterator[tuple[subprocess.Popen[bytes], Stdout]]:
    """Start gloomd in `cwd`; stop it (SIGTERM) when the block ends."""
    proc = subprocess.Popen(
        args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        yield proc, Stdout(proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        for stream in (proc.stdout, proc.stderr):
            assert stream is not None
            stream.close()


def test_readme_scheduler_example_runs_as_pasted(tmp_path: Path) -> None:
    toml, command = readme_scheduler_example()
    assert command == "gloomd --schedule jobs.toml"
    make_project(tmp_path, toml)
    argv = [GLOOMD, *command.split()[1:], *PORTS]
    with run_gloomd(argv, tmp_path) as (proc, out):
        line = out.line()
        assert READY.search(line.encode()), line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_a_scheduled_jobs_output_comes_after_the_ready_line(tmp_path: Path) -> None:
    # No `at`: the job fires as soon as the scheduler may.
    make_project(
        tmp_path, '[jobs.now]\nfunc = "mypkg.tasks:cleanup"\nargs = [1]\nevery = [1, "hour"]\n'
    )
    argv = [GLOOMD, "--schedule", "jobs.toml", *PORTS]
    with run_gloomd(argv, tmp_path) as (_, out):
        first = out.line()
        assert READY.search(first.encode()), first
        assert out.line() == "cleanup days=1 dry_run=True"


def test_import_path_comes_before_the_current_directory(tmp_path: Path) -> None:
    elsewhere = tmp_path / "code"
    elsewhere.mkdir()
    make_project(
        elsewhere, '[jobs.now]\nfunc = "mypkg.tasks:cleanup"\nargs = [2]\nevery = [1, "hour"]\n'
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "jobs.toml").write_text((elsewhere / "jobs.toml").read_text())
    argv = [GLOOMD, "--schedule", "jobs.toml", "--import-path", str(elsewhere), *PORTS]
    with run_gloomd(argv, run_dir) as (_, out):
        first = out.line()
        assert READY.search(first.encode()), first
        assert out.line() == "cleanup days=2 dry_run=True"


def refusal(argv: list[str], cwd: Path) -> str:
    """Run gloomd expecting a refusal; its one line of stderr."""
    done = subprocess.run(
        [GLOOMD, *argv, *PORTS], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""  # no ready line: nothing was started
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # no traceback, no event=listening before it
    return lines[0]


def job(body: str) -> str:
    return f'[jobs.cleanup]\nfunc = "mypkg.tasks:cleanup"\n{body}\n'


@pytest.mark.parametrize(
    ("toml", "line"),
    [
        (
            job('every = [1, "day"]').replace("mypkg.tasks", "nopkg.tasks"),
            "gloomd: --schedule jobs.toml: job 'cleanup': cannot import 'nopkg.tasks':"
            " No module named 'nopkg'",
        ),
        (
            job('every = [1, "fortnight"]'),
            "gloomd: --schedule jobs.toml: job 'cleanup': ",
        ),
        (
            job('every = [1, "day"]\ntimezone = "Mars/Olympus"'),
            "gloomd: --schedule jobs.toml: job 'cleanup': ",
        ),
        ("[jobs.cleanup\n", "gloomd: --schedule jobs.toml: not valid TOML: "),
    ],
)
def test_a_bad_schedule_is_one_line(tmp_path: Path, toml: str, line: str) -> None:
    make_project(tmp_path, toml)
    assert refusal(["--schedule", "jobs.toml"], tmp_path).startswith(line)


def test_an_unwritable_state_file_is_refused_at_start(tmp_path: Path) -> None:
    make_project(tmp_path, job('every = [1, "day"]'))
    state = tmp_path / "no-such-dir" / "state.json"
    assert refusal(["--schedule", "jobs.toml", "--schedule-state", str(state)], tmp_path) == (
        f"gloomd: --schedule-state {state}: cannot be written: No such file or directory"
    )
    (tmp_path / "jobs.state.json").mkdir()  # the default place, taken by a directory
    assert refusal(["--schedule", "jobs.toml"], tmp_path).startswith(
        "gloomd: --schedule jobs.toml: its state file "
    )


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["--jobs-dir", str(WSJOBS)],
            "gloomd: --jobs-dir does nothing without --ws-port: give both",
        ),
        (["--ws-port", "0"], "gloomd: --ws-port does nothing without --jobs-dir: give both"),
        (
            ["--ws-port", "0", "--jobs-dir", "missing"],
            "gloomd: --jobs-dir missing: not a directory",
        ),
        (
            ["--schedule-state", "s.json"],
            "gloomd: --schedule-state does nothing without --schedule: give both",
        ),
        (
            ["--import-path", "."],
            "gloomd: --import-path does nothing without --schedule: give both",
        ),
        (
            ["--schedule", "missing.toml"],
            "gloomd: --schedule missing.toml: cannot read it: No such",
        ),
        (["--tls-cert", "c.pem"], "gloomd: --tls-cert and --tls-key go together"),
        (["--tls-cert", "c.pem", "--tls-key", "k.pem"], "gloomd: --tls-cert c.pem: cannot read it"),
        (["--tls-cert", "junk", "--tls-key", "junk"], "gloomd: --tls-cert junk / --tls-key junk: "),
        (["--token-file", "empty"], "gloomd: token file empty is empty"),
        (["--max-queued", "0"], "gloomd: --max-queued must be at least 1"),
    ],
)
def test_bad_flags_and_files_are_one_line(tmp_path: Path, argv: list[str], line: str) -> None:
    (tmp_path / "junk").write_text("not a certificate\n")
    (tmp_path / "empty").write_text("\n")
    assert refusal(argv, tmp_path).startswith(line)
