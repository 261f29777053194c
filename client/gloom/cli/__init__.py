"""The `gloom` command: the subcommand registry, argument parsing, exit codes.

Exit codes (the same for every subcommand):

    0  success
    1  the job failed, the daemon answered with an error, or a wait ran out
    2  usage error (argparse's own code)
    3  gloomd could not be reached, or the connection to it was lost

Adding a subcommand
-------------------
A subcommand is a `Command`: a name, a one-line help, a `configure(parser)`
that adds its arguments, and a `run(args) -> int`.  Two places provide them,
read in this order by `commands`:

* the client's own modules, listed in `COMMAND_MODULES`, each exposing
  ``COMMANDS: list[Command]``;
* any installed distribution, through the entry point group
  ``gloom.commands`` (`ENTRY_POINT_GROUP`): each entry point's value is a list
  of `Command`.  gloomd contributes ``gloom schedule`` this way, so `gloom`
  itself never imports the daemon, and a client-only install simply has no
  ``schedule``.  A plug-in that fails to load (or names a subcommand that
  exists already) is skipped with one line on stderr: it must not take the
  whole command down.

A command with subcommands of its own (``gloom schedule list``) adds a
subparser group in `configure` and sets ``run`` per leaf with
``parser.set_defaults(run=...)``, which takes precedence over the Command's.
Errors raised by `run` are mapped to exit codes here, so commands just raise.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

from ..errors import GloomError, TransportError

# Re-exported: `Command` and the helpers every subcommand (and plug-in) uses.
from .common import EXIT_FAILED as EXIT_FAILED
from .common import EXIT_OK as EXIT_OK
from .common import EXIT_UNREACHABLE as EXIT_UNREACHABLE
from .common import EXIT_USAGE as EXIT_USAGE
from .common import Command as Command
from .common import UsageError as UsageError
from .common import connection_options as connection_options
from .common import connection_security as connection_security
from .common import positive_number as positive_number

__all__ = ["COMMAND_MODULES", "ENTRY_POINT_GROUP", "Command", "build_parser", "commands", "main"]

#: Modules whose ``COMMANDS`` become subcommands, in help order.
COMMAND_MODULES: list[str] = [
    "gloom.cli.master",
    "gloom.cli.admin",
    "gloom.cli.slave",
    "gloom.cli.top",
    "gloom.worker.cli",
]

#: The entry point group through which other distributions add subcommands.
ENTRY_POINT_GROUP = "gloom.commands"


def commands() -> list[Command]:
    """The client's own commands, then those of the plug-ins (by entry point name)."""
    found: list[Command] = []
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        found.extend(module.COMMANDS)
    names = {command.name for command in found}
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            contributed = _plugin_commands(entry.load())
        except Exception as exc:
            _warn(f"the {entry.name!r} commands ({entry.value}) cannot be loaded: {exc!r}")
            continue
        for command in contributed:
            if command.name in names:
                _warn(f"{entry.value} adds {command.name!r}, which exists already; skipped")
                continue
            names.add(command.name)
            found.append(command)
    return found


def _plugin_commands(value: Any) -> list[Command]:
    """The commands an entry point names, checked: a list of `Command`."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, Command) for c in value):
        raise TypeError(f"expected a list of gloom.cli.Command, got {type(value).__name__}")
    return list(value)


def _warn(message: str) -> None:
    print(f"gloom: warning: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gloom",
        description="Submit jobs to gloomd, watch it, and serve jobs from the shell.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = connection_options()
    for command in commands():
        child = sub.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
            parents=[common],
        )
        child.set_defaults(run=command.run)
        command.configure(child)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
        return status
    except BaseException as exc:
        # trio nurseries wrap errors in ExceptionGroups; the leaf is what counts.
        leaf = _first_leaf(exc)
        if isinstance(leaf, UsageError):
            parser.print_usage(sys.stderr)
            print(f"gloom: error: {leaf}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(leaf, TransportError):
            print(f"gloom: {leaf}", file=sys.stderr)
            return EXIT_UNREACHABLE
        if isinstance(leaf, GloomError):
            print(f"gloom: {leaf}", file=sys.stderr)
            return EXIT_FAILED
        if isinstance(leaf, KeyboardInterrupt):
            return 130
        raise


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
