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

from gloomwire import __version__, environ

from ..errors import GloomError, TransportError
from .common import EXIT_FAILED as EXIT_FAILED
from .common import EXIT_OK as EXIT_OK
from .common import EXIT_UNREACHABLE as EXIT_UNREACHABLE
from .common import EXIT_USAGE as EXIT_USAGE
from .common import Command as Command
from .common import UsageError as UsageError
from .common import connection_options as connection_options
from .common import connection_security as connection_security
from .common import positive_number as positive_number

# Re-exported: `Command` and the helpers every subcommand (and plug-in) uses.
from .explain import explain

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
    """The whole command line.  No parser takes abbreviations (`--prio` is not
    `--priority`), and each subcommand's parser is kept in its namespace
    (``_parser``) so that its own usage is printed with its errors."""
    parser = argparse.ArgumentParser(
        prog="gloom",
        description="Submit jobs to gloomd, watch it, and serve jobs from the shell.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"gloom {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = connection_options()
    for command in commands():
        child = sub.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
            parents=[common],
            allow_abbrev=False,
        )
        child.set_defaults(run=command.run, _parser=child, _takes_servers=command.servers)
        command.configure(child)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parse_args`, but an argument the subcommand does not know is reported
    with the subcommand's usage (argparse would print the top-level one), and
    an unknown `--option` is named as such before anything else is judged
    (`--prio 3` is not taken for positionals that then fail to parse)."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    leaf, rest = _leaf(parser, tokens)
    for token in rest:
        if token == "--":
            break
        if token.startswith("--") and token.split("=", 1)[0] not in leaf._option_string_actions:
            leaf.error(f"unrecognized arguments: {token}")
    args, extra = parser.parse_known_args(tokens)
    if extra:
        owner: argparse.ArgumentParser = getattr(args, "_parser", parser)
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _leaf(
    parser: argparse.ArgumentParser, tokens: list[str]
) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub)command parser the tokens name, and the tokens that follow its name."""
    for index, token in enumerate(tokens):
        if token == "--":
            break
        if token.startswith("-"):
            continue
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        child = actions[0].choices.get(token) if actions else None
        if child is None:
            break
        return _leaf(child, tokens[index + 1 :])
    return parser, tokens


def main(argv: Sequence[str] | None = None) -> int:
    environ.print_notes("gloom")
    parser = build_parser()
    args = parse(parser, argv)
    if getattr(args, "servers", None) is not None and not getattr(args, "_takes_servers", True):
        args._parser.print_usage(sys.stderr)
        print(
            f"gloom {args.command}: error: --servers: this command reads one daemon; give --host",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        status: int = args.run(args)
        return status
    except BaseException as exc:
        # trio nurseries wrap errors in ExceptionGroups; the leaf is what counts.
        leaf = _first_leaf(exc)
        if isinstance(leaf, UsageError):
            getattr(args, "_parser", parser).print_usage(sys.stderr)
            print(f"gloom {args.command}: error: {leaf}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(leaf, TransportError):
            print(f"gloom: {leaf}", file=sys.stderr)
            return EXIT_UNREACHABLE
        if isinstance(leaf, GloomError):
            print(f"gloom: {explain(leaf)}", file=sys.stderr)
            return EXIT_FAILED
        if isinstance(leaf, KeyboardInterrupt):
            return 130
        raise


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
