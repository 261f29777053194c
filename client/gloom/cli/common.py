"""What every `gloom` subcommand shares: `Command`, exit codes, the daemon and
security options, and the argument types more than one command uses."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from gloomwire import environ

from .._security import TokenError, client_ssl_context, resolve_token
from .._servers import AsyncServers, Spread, open_masters, parse_servers
from .._trio_master import AsyncMaster, open_master
from ..errors import GloomError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "Command",
    "UsageError",
    "connection_options",
    "connection_security",
    "daemon_options",
    "master_session",
    "positive_number",
    "servers_of",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
#: Stopped by SIGINT or SIGTERM (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Command:
    """One ``gloom`` subcommand."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    #: Takes ``--servers`` (a list of daemons); the others refuse it.
    servers: bool = False


class UsageError(GloomError):
    """Arguments that parse but make no sense together (exit status 2)."""


def daemon_options(parser: argparse.ArgumentParser) -> None:
    """--host, --master-port and --slave-port, defaulting to $GLOOMD_HOST,
    $GLOOMD_MASTER_PORT and $GLOOMD_SLAVE_PORT (`gloomwire.environ`), so that
    one shell points every command, `gloom worker` included, at one daemon."""
    group = parser.add_argument_group("daemon")
    for flag, variable, default, kind, text in (
        ("--host", environ.HOST, "127.0.0.1", str, "gloomd's address"),
        ("--master-port", environ.MASTER_PORT, "9998", int, "gloomd's master port"),
        ("--slave-port", environ.SLAVE_PORT, "9999", int, "gloomd's slave port"),
    ):
        # A string default goes through `type` like a typed value: a bad
        # variable is a usage error naming the flag, not a traceback.
        group.add_argument(
            flag,
            type=kind,
            default=environ.lookup(variable) or default,
            help=f"{text} (default: ${variable}, else {default})",
        )
    group.add_argument(
        "--servers",
        metavar="H1:P,H2:P",
        default=None,
        help="several independent daemons instead of --host: submits are spread over them,"
        " workers join them all (a host without a port takes the command's port option;"
        f" default: ${environ.SERVERS} for the commands that take a list)",
    )


def security_options(parser: argparse.ArgumentParser) -> None:
    """--token-file, --tls and --tls-ca: how every command, `gloom worker`
    included, authenticates and encrypts (resolved by `connection_security`)."""
    security = parser.add_argument_group("security")
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


def connection_options() -> argparse.ArgumentParser:
    """--host / --master-port / --slave-port and the security options, shared
    by every subcommand.

    The daemon's address comes from the GLOOMD_ variables when set
    (`daemon_options`); the token from --token-file or GLOOMD_TOKEN, the
    same variable the daemon reads.
    """
    parent = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    daemon_options(parent)
    security_options(parent)
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


def servers_of(args: argparse.Namespace, port: int) -> list[tuple[str, int]] | None:
    """The daemons --servers (else $GLOOMD_SERVERS) lists, or None for one daemon.

    A host without a port takes `port` (the command's --master-port or
    --slave-port); a malformed list is a `UsageError`.
    """
    text = getattr(args, "servers", None)
    if text is None:
        text = environ.lookup(environ.SERVERS) or None
    if text is None:
        return None
    try:
        return parse_servers(text, port)
    except ValueError as exc:
        raise UsageError(f"--servers: {exc}") from None


def master_session(
    args: argparse.Namespace, spread: Spread = "round_robin"
) -> AbstractAsyncContextManager[AsyncMaster | AsyncServers]:
    """The master connection a command works through: one daemon (--host),
    or every daemon of --servers / $GLOOMD_SERVERS (`gloom.open_masters`)."""
    security = connection_security(args)
    servers = servers_of(args, args.master_port)
    if servers is None:
        return open_master(args.host, args.master_port, **security)
    return open_masters(servers, spread=spread, **security)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (counts, limits)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def positive_number(text: str) -> float:
    """An argparse type: a finite number above 0 (seconds, mostly)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value
