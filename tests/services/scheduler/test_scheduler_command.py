"""gloomd contributes `gloom schedule list` through the entry point group `gloom.commands`.

`gloom` never imports gloomd; it loads whatever the group holds.  This is the
daemon's side of that contract: the installed entry point is a list of
`gloom.cli.Command`, and its `schedule list` reads the files as documented.
"""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from gloom.cli import Command


def schedule_command() -> Command:
    (entry,) = [e for e in entry_points(group="gloom.commands") if e.name == "schedule"]
    assert entry.value == "gloomd.scheduler.listing:COMMANDS"
    commands = entry.load()
    assert isinstance(commands, list) and all(isinstance(c, Command) for c in commands)
    (command,) = commands
    assert command.name == "schedule"
    return command


def parse(command: Command, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gloom schedule")
    command.configure(parser)
    parser.set_defaults(run=command.run)
    return parser.parse_args(argv)


def test_schedule_list_through_the_entry_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schedule = tmp_path / "jobs.toml"
    schedule.write_text(
        '[jobs.nightly]\nsubmit = { type = "report", body = 1 }\nevery = [1, "day"]\n'
        'at = { hour = 3, minute = 30, second = 0 }\ntimezone = "Europe/Berlin"\n'
    )
    args = parse(schedule_command(), ["list", "--schedule", str(schedule)])
    assert args.run(args) == 0
    out = capsys.readouterr().out
    assert "nightly" in out and "03:30:00 CE" in out and "never" in out


def test_schedule_list_bad_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(schedule_command(), ["list", "--schedule", str(tmp_path / "missing.toml")])
    assert args.run(args) == 2
    assert "gloom schedule list:" in capsys.readouterr().err


def test_schedule_needs_a_subcommand() -> None:
    with pytest.raises(SystemExit) as exited:
        parse(schedule_command(), [])
    assert exited.value.code == 2
