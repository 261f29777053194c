"""The quick-start make targets install what each needs (read with `make -n`, nothing runs).

`make serve` must install the package alone (what serving needs), `make test` the test
extra; the dry run is made against a venv path that does not exist, so every step prints.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import _read_ready

ROOT = Path(__file__).resolve().parent.parent


def dry_run(target: str, tmp_path: Path) -> list[str]:
    make = shutil.which("make")
    assert make, "make is the README's quick start: it must be installed"
    done = subprocess.run(
        [make, "-n", "--no-print-directory", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.splitlines()


def installs(lines: list[str]) -> list[str]:
    return [line for line in lines if "pip install" in line and "--upgrade pip" not in line]


def test_make_serve_installs_the_package_without_the_test_extra(tmp_path: Path) -> None:
    lines = dry_run("serve", tmp_path)
    assert [line.split("pip ", 1)[1] for line in installs(lines)] == ["install --quiet -e ."]
    # It runs the daemon on its embedded defaults, with the journal in data/ (README).
    assert lines[-1].rstrip().endswith("/bin/gloomd --journal data/journal.db")
    assert "mkdir -p data/" in lines


@pytest.mark.parametrize("target", ["test", "install"])
def test_make_test_installs_the_test_extra(target: str, tmp_path: Path) -> None:
    assert [line.split("pip ", 1)[1] for line in installs(dry_run(target, tmp_path))] == [
        "install --quiet -e '.[test]'"
    ]


def test_ctrl_c_on_make_serve_stops_gloomd_cleanly_and_make_says_nothing(tmp_path: Path) -> None:
    """README's account of Ctrl-C on `make serve`, run for real against this venv's gloomd.

    A terminal's Ctrl-C signals the whole foreground process group: make and gloomd. gloomd
    shuts down and exits 0, so make has no failed command to report (no `Interrupt` line);
    make itself ends by the signal, status 130 in a shell.
    """
    stamp = tmp_path / "installed"
    stamp.touch()  # newer than pyproject.toml: make installs nothing
    make = shutil.which("make")
    assert make
    proc = subprocess.Popen(
        [
            make,
            "--silent",  # the command line is not echoed: the ready line comes first
            "--no-print-directory",
            "-C",
            str(ROOT),
            "serve",
            f"BIN={Path(sys.executable).parent}",
            f"SERVE_STAMP={stamp}",
            f"JOURNAL={tmp_path / 'data' / 'journal.db'}",  # not the checkout's data/
            "ARGS=--master-port 0 --slave-port 0 --no-http",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        ready = _read_ready(proc, 20.0)
        assert b"gloomd ready" in ready
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGINT, err
    text = err.decode()
    assert "event=shutdown" in text, text
    assert "make" not in text and "Interrupt" not in text, text
    assert (tmp_path / "data" / "journal.db").exists()  # make serve runs with its journal
