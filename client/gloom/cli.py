"""The `gloom` command: argument parsing, the subcommand registry, exit codes.

Exit codes (the same for every subcommand):

    0  success
    1  the job failed, the daemon answered with an error, or a wait ran out
    2  usage error (argparse's own code)
    3  gloomd could not be reached, or the connection to it was lost

Adding a subcommand
-------------------
A subcommand is a `Command`: a name, a one-line help, a `configure(parser)`
that adds its arguments, and a `run(args) -> int`.  Modules listed in
`COMMAND_MODULES` each expose ``COMMANDS: list[Command]``; `build_parser`
imports them in order.  To add ``gloom worker``, write a module with
``COMMANDS = [Command("worker", ...)]`` and append its dotted name to
`COMMAND_MODULES`.  A command with subcommands of its own (``gloom schedule
list``) adds a subparser group in `configure` and sets ``run`` per leaf with
``parser.set_defaults(run=...)``, which takes precedence over the Command's.
Errors raised by `run` are mapped to exit codes here, so commands just raise.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ._security import TokenError, client_ssl_context, resolve_token
from .errors import GloomError, TransportError

__all__ = ["COMMAND_MODULES", "Command", "build_parser", "connection_security", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

#: Modules whose ``COMMANDS`` become subcommands, in help order.
COMMAND_MODULES: list[str] = [
    "gloom._cli_master",
    "gloom._cli_slave",
    "gloom._cli_schedule",
    "gloom._cli_top",
    "gloom.worker.cli",
]


@dataclass(frozen=True)
class Command:
    """One ``gloom`` subcommand."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


class UsageError(GloomError):
    """Arguments that parse but make no sense together (exit status 2)."""


def _connection_options() -> argparse.ArgumentParser:
    """--host / --master-port / --slave-port and the security options, shared
    by every subcommand.

    Defaults come from GLOOM_HOST, GLOOM_MASTER_PORT and GLOOM_SLAVE_PORT when
    set, so a shell can point every command at one daemon; the token comes
    from --token-file or GLOOMD_TOKEN, the same variable the daemon reads.
    """
    env = os.environ
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("daemon")
    group.add_argument(
        "--host",
        default=env.get("GLOOM_HOST", "127.0.0.1"),
        help="gloomd's address (default: %(default)s, or $GLOOM_HOST)",
    )
    group.add_argument(
        "--master-port",
        type=int,
        default=int(env.get("GLOOM_MASTER_PORT", "9998")),
        help="gloomd's master port (default: %(default)s, or $GLOOM_MASTER_PORT)",
    )
    group.add_argument(
        "--slave-port",
        type=int,
        default=int(env.get("GLOOM_SLAVE_PORT", "9999")),
        help="gloomd's slave port (default: %(default)s, or $GLOOM_SLAVE_PORT)",
    )
    security = parent.add_argument_group("security")
    security.add_argument(
        "--token-file",
        metavar="FILE",
        default=None,
        help="present the token on FILE's first line (default: $GLOOMD_TOKEN if set)",
    )
    security.add_argument(
        "--tls", action="store_true", help="connect with TLS, checking the daemon's certificate"
    )
    security.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=None,
        help="CA certificate(s) to trust for --tls (implies --tls; default: the system's)",
    )
    return parent


def connection_security(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for `open_master`/`open_slave` from the security options.

    Resolved here, once, so that a bad token file is a usage error (exit 2)
    before any connection is tried, and so that every subcommand, present or
    future, connects the same way: ``open_master(host, port, **connection_security(args))``.
    """
    try:
        token = resolve_token(None, getattr(args, "token_file", None))
        context = client_ssl_context(
            tls=getattr(args, "tls", False), tls_ca=getattr(args, "tls_ca", None)
        )
    except TokenError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:  # unreadable CA file
        raise UsageError(f"cannot load --tls-ca {args.tls_ca}: {exc.strerror or exc}") from None
    return {"token": token, "ssl_context": context}


def commands() -> list[Command]:
    found: list[Command] = []
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        found.extend(module.COMMANDS)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gloom",
        description="Submit jobs to gloomd, watch it, and serve jobs from the shell.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _connection_options()
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


if __name__ == "__main__":
    sys.exit(main())
