"""What every `gloom` subcommand shares: `Command`, exit codes, the daemon and
security options, and the argument types more than one command uses."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._security import TokenError, client_ssl_context, resolve_token
from ..errors import GloomError

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "Command",
    "UsageError",
    "connection_options",
    "connection_security",
    "positive_number",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


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


def connection_options() -> argparse.ArgumentParser:
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


def positive_number(text: str) -> float:
    """An argparse type: a finite number above 0 (seconds, mostly)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value
