"""`gloom schedule list` is wired into the installed `gloom` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

GLOOM = shutil.which("gloom", path=os.path.dirname(sys.executable)) or "gloom"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([GLOOM, *args], capture_output=True, text=True, timeout=30, env=env)


def test_schedule_list_shows_next_fire_in_the_jobs_zone(tmp_path: Path) -> None:
    schedule = tmp_path / "jobs.toml"
    schedule.write_text(
        '[jobs.nightly]\nsubmit = { type = "report", body = 1 }\nevery = [1, "day"]\n'
        'at = { hour = 3, minute = 30, second = 0 }\ntimezone = "Europe/Berlin"\n'
    )
    done = run("schedule", "list", "--schedule", str(schedule))
    assert done.returncode == 0, done.stderr
    assert "nightly" in done.stdout
    assert "03:30:00 CE" in done.stdout  # CET or CEST: Berlin wall time, not UTC
    assert "never" in done.stdout


def test_schedule_list_bad_file_exits_2(tmp_path: Path) -> None:
    schedule = tmp_path / "bad.toml"
    schedule.write_text('[jobs.x]\nevery = [1, "fortnight"]\nsubmit = { type = "t", body = 1 }\n')
    done = run("schedule", "list", "--schedule", str(schedule))
    assert done.returncode == 2
    assert "gloom schedule list:" in done.stderr
