"""Subcommands from other distributions: the ``gloom.commands`` entry point group.

gloomd contributes ``gloom schedule`` this way, so that `gloom` never imports
the daemon.  Here a fake distribution plays the plug-in: once in-process
(entry points handed to the registry), once for real (a ``.dist-info`` on
PYTHONPATH, found by the installed ``gloom`` command through importlib.metadata).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from gloom import cli
from gloom.cli import Command

pytestmark = pytest.mark.timeout(60)

GLOOM = Path(sys.executable).with_name("gloom")
GROUP = "gloom.commands"


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")


def _hello(args: argparse.Namespace) -> int:
    print(f"hello {args.name}")
    return 7


#: What a well-behaved plug-in exposes.
HELLO = [Command("hello", "say hello", _configure, _hello)]
#: A plug-in that names a command the client has already.
CLASH = [Command("submit", "not the real submit", _configure, _hello)]
#: Not a list of Command.
NOT_COMMANDS = {"hello": "world"}


def entry(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=GROUP)


def test_a_plugin_command_is_added_and_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    here = __name__
    monkeypatch.setattr(cli, "entry_points", lambda group: [entry("greet", f"{here}:HELLO")])
    names = [command.name for command in cli.commands()]
    assert names[-1] == "hello" and "submit" in names and "worker" in names
    assert cli.main(["hello", "you"]) == 7
    assert capsys.readouterr().out == "hello you\n"


def test_broken_plugins_are_skipped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    here = __name__
    plugins = [
        entry("missing", "no_such_module_for_gloom:COMMANDS"),
        entry("wrong", f"{here}:NOT_COMMANDS"),
        entry("clash", f"{here}:CLASH"),
        entry("greet", f"{here}:HELLO"),
    ]
    monkeypatch.setattr(cli, "entry_points", lambda group: plugins if group == GROUP else [])
    parser = cli.build_parser()
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 3 and all(line.startswith("gloom: warning: ") for line in warnings)
    assert "'missing'" in warnings[1] and "No module named" in warnings[1]  # sorted by name
    assert "'wrong'" in warnings[2] and "list of gloom.cli.Command" in warnings[2]
    assert "'submit', which exists already" in warnings[0]
    # The good plug-in and the real submit are both there.
    assert parser.parse_args(["hello", "x"]).run is _hello
    assert parser.parse_args(["submit", "t", "1"]).run is not _hello


def _fake_distribution(root: Path, entries: str) -> None:
    info = root / "fakeplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{entries}")
    (root / "fakeplug.py").write_text(
        textwrap.dedent(
            """
            from gloom.cli import Command

            def configure(parser):
                parser.add_argument("name")

            def run(args):
                print("hello", args.name)
                return 0

            COMMANDS = [Command("hello", "say hello", configure, run)]
            """
        )
    )


def test_the_installed_gloom_command_finds_plugins_by_entry_point(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, "hello = fakeplug:COMMANDS\nbroken = fakeplug:NOPE\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [str(GLOOM), "hello", "world"], capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello world\n"
    # The broken entry costs one warning line, not the command.
    assert done.stderr.count("\n") == 1 and "'broken'" in done.stderr
    shown = subprocess.run(
        [str(GLOOM), "--help"], capture_output=True, text=True, env=env, timeout=30
    )
    assert shown.returncode == 0 and "say hello" in shown.stdout
