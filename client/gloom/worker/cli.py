"""`gloom worker`: the runner from the command line.

Three ways in, one parser: `worker_main(argv)` (a complete program, used by
``python -m gloom.worker``), `add_worker_parser(subparsers)` (adds ``worker``
to any argparse subcommand group), and `COMMANDS` for the ``gloom`` command's
registry, where --host, the ports and the security options (--token-file,
--tls, --tls-ca) come from its shared parent parser.

Exit status: 0 after a clean stop (SIGTERM/SIGINT, or --burst done), 1 when
gloomd refuses the token (at startup, or on a reconnect), 2 for bad arguments,
an unusable token file or CA file, or a handler path that does not resolve,
3 when gloomd cannot be reached at startup (a TLS certificate that does not
verify included).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from gloomwire import __version__, environ, logformat

from ..errors import TransportError, Unauthorized
from .handler import HandlerError

__all__ = ["COMMANDS", "add_worker_parser", "configure", "run_args", "worker_main"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

#: Options handed to `gloom.worker.run` under their own names.
PASSED_ON = (
    "host",
    "slave_port",
    "master_port",
    "concurrency",
    "min",
    "max",
    "timeout",
    "grace",
    "max_jobs_per_process",
    "import_path",
    "class_args",
    "class_kwargs",
    "burst",
)

HELP = "run a handler for a job type in a supervised process pool"
DESCRIPTION = """\
Serve jobs of TYPE with HANDLER (pkg.mod:func or pkg.mod:Class.method) in a
pool of processes, one job per process at a time.  A job that runs past
--timeout is killed (SIGTERM, then SIGKILL after --grace); SIGTERM or SIGINT
stop taking jobs and give running ones --grace seconds to finish."""


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def configure(parser: argparse.ArgumentParser, *, connection: bool = False) -> None:
    """Add the worker's options; `connection` adds --host, the ports and the
    security options too (the ``gloom`` command's parent parser has them)."""
    parser.add_argument("--type", required=True, help="job type to serve (a string)")
    parser.add_argument(
        "--handler", required=True, metavar="PKG.MOD:FUNC", help="the callable that runs a job"
    )
    pool = parser.add_argument_group("pool")
    pool.add_argument(
        "--concurrency", type=int, default=None, metavar="N", help="processes (default: CPU count)"
    )
    pool.add_argument(
        "--min", type=int, default=None, metavar="N", help="scale between --min and --max"
    )
    pool.add_argument(
        "--max", type=int, default=None, metavar="N", help="(backlog read from --master-port)"
    )
    pool.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds per job, 0 = none (default 300)",
    )
    pool.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="S",
        help="SIGTERM-to-SIGKILL and shutdown grace (default 10)",
    )
    pool.add_argument(
        "--max-jobs-per-process",
        type=int,
        default=1000,
        metavar="N",
        help="recycle a process after N jobs (default 1000)",
    )
    pool.add_argument(
        "--burst", action="store_true", help="exit once nothing of TYPE is queued or running"
    )
    code = parser.add_argument_group("handler")
    code.add_argument(
        "--import-path",
        action="append",
        default=[],
        metavar="DIR",
        help="import the handler from DIR first (repeatable); then from the current directory",
    )
    code.add_argument(
        "--class-args", type=_json, default=[], metavar="JSON", help="JSON list for Class(...)"
    )
    code.add_argument(
        "--class-kwargs", type=_json, default={}, metavar="JSON", help="JSON object for Class(...)"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default info; debug adds a line per job event)",
    )
    parser.add_argument(
        "--log-format",
        default=logformat.FORMATS[0],
        choices=logformat.FORMATS,
        help="log lines on stderr: logfmt (key=value, the default) or one JSON object a line,"
        " as gloomd's",
    )
    if connection:
        from ..cli.common import daemon_options, security_options

        daemon_options(parser)
        security_options(parser)


def run_args(args: argparse.Namespace) -> int:
    """Run the worker for parsed arguments; returns the exit status."""
    from ..cli import UsageError, connection_security
    from ..cli.common import servers_of
    from . import run  # not at import time: keeps `gloom --help` light

    logformat.setup(args.log_level, args.log_format, sys.stderr)
    if not isinstance(args.class_args, list):
        print("gloom worker: --class-args must be a JSON list", file=sys.stderr)
        return EXIT_USAGE
    if not isinstance(args.class_kwargs, dict):
        print("gloom worker: --class-kwargs must be a JSON object", file=sys.stderr)
        return EXIT_USAGE
    try:
        # Token and CA resolved once, before the pool starts: a missing token
        # file is a usage error, not a worker that starts and cannot connect.
        security = connection_security(args)
        servers = servers_of(args, args.slave_port)
    except UsageError as exc:
        print(f"gloom worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        options = {name: getattr(args, name) for name in PASSED_ON}
        # One rule with `gloomd --import-path`: the directories given, then
        # the current directory, then what is installed.
        options["import_path"] = [*args.import_path, os.getcwd()]
        options["servers"] = servers
        run(args.type, args.handler, **options, **security)
    except Unauthorized as exc:
        where = f"{args.host}:{args.slave_port}" if servers is None else "one of --servers"
        print(f"gloom worker: {exc} (gloomd at {where})", file=sys.stderr)
        return EXIT_REFUSED
    except (HandlerError, ValueError, TransportError) as exc:
        print(f"gloom worker: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE if isinstance(exc, TransportError) else EXIT_USAGE
    return EXIT_OK


def add_worker_parser(subparsers: Any) -> None:
    """Add ``worker`` to an argparse subparsers group (sets ``run`` as default)."""
    parser = subparsers.add_parser("worker", help=HELP, description=DESCRIPTION, allow_abbrev=False)
    configure(parser, connection=True)
    parser.set_defaults(run=run_args)


def worker_main(argv: list[str]) -> int:
    environ.print_notes("gloom worker")
    parser = argparse.ArgumentParser(
        prog="gloom worker", description=DESCRIPTION, allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"gloom {__version__}")
    configure(parser, connection=True)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's usage errors (2) and --help (0)
        return int(exc.code or 0)
    return run_args(args)


def _registry_commands() -> list[Any]:
    """The entry for the ``gloom`` command's registry (`gloom.cli.COMMAND_MODULES`)."""
    from ..cli import Command

    return [Command("worker", HELP, configure, run_args, DESCRIPTION, servers=True)]


COMMANDS = _registry_commands()
