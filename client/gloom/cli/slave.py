"""`gloom slave TYPE -- COMMAND...`: serve jobs by running a command per job.

The command reads the job body as JSON on stdin and writes the result on
stdout: stdout minus one trailing newline is parsed as JSON, else sent as a
string; empty output is null.  A non-zero exit is reported with ``fail``
(category ERROR, reason ``{type, message, exitcode, stderr}`` with the last
2 KB of stderr).  A job whose frame carries a ``timeout`` gets its command
killed (SIGTERM, then SIGKILL after 5 s, trio's default) and reported as
TIMEOUT.  The job's id, type and attempt are in the environment as
GLOOM_JOB_ID, GLOOM_JOB_TYPE and GLOOM_JOB_ATTEMPT.

Each of ``--concurrency`` connections runs one command at a time; they
reconnect on their own when the daemon restarts.  SIGINT or SIGTERM stop the
slave (a command still running is killed, and the daemon requeues its job).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from typing import Any

import trio

from gloomwire import codec

from .._trio_slave import SlaveJob, open_slave
from ..errors import TransportError
from .common import EXIT_OK, Command, UsageError, connection_security

__all__ = ["COMMANDS", "command_outcome"]

STDERR_TAIL = 2048


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("type", metavar="TYPE", help="job type to serve (a string)")
    parser.add_argument(
        "--concurrency", "-c", type=int, default=1, help="jobs run at once (default 1)"
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no line on stderr per finished job"
    )
    # nargs="+" rather than REMAINDER, so options may also follow TYPE; the
    # "--" makes argparse take the command's own options as positionals.
    parser.add_argument(
        "command",
        nargs="+",
        metavar="COMMAND",
        help="command run per job, with the body as JSON on stdin",
    )


def _run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("give the command to run after --, e.g. gloom slave TYPE -- cat")
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    return trio.run(_serve_all, args, command, connection_security(args))


async def _serve_all(args: argparse.Namespace, command: list[str], security: dict[str, Any]) -> int:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        async with trio.open_nursery() as slaves:
            for _ in range(args.concurrency):
                await slaves.start(_serve_one, args, command, security)
            if not args.quiet:
                print(
                    f"gloom slave: serving {args.type!r} with {args.concurrency} connection(s)",
                    file=sys.stderr,
                    flush=True,
                )
        nursery.cancel_scope.cancel()
    return EXIT_OK


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def _serve_one(
    args: argparse.Namespace,
    command: list[str],
    security: dict[str, Any],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with open_slave(args.host, args.slave_port, **security) as slave:
        await slave.join(args.type)
        task_status.started()
        async for job in slave.jobs():
            started = time.monotonic()
            outcome = await command_outcome(command, job)
            try:
                if outcome[0] == "respond":
                    await job.respond(outcome[1])
                else:
                    await job.fail(outcome[0], outcome[1])
            except TransportError as exc:
                print(f"gloom slave: {exc}", file=sys.stderr, flush=True)
                continue
            if not args.quiet:
                verdict = "done" if outcome[0] == "respond" else outcome[0]
                took = time.monotonic() - started
                print(
                    f"gloom slave: job {job.id} {verdict} in {took:.3f} s",
                    file=sys.stderr,
                    flush=True,
                )


def parse_stdout(data: bytes) -> Any:
    """The respond body for a command's stdout (see the module docstring)."""
    if data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        return None
    try:
        return codec.loads(data)
    except codec.DecodeError:
        return data.decode("utf-8", errors="replace")


def _tail(data: bytes) -> str:
    return data[-STDERR_TAIL:].decode("utf-8", errors="replace")


async def command_outcome(command: list[str], job: SlaveJob) -> tuple[str, Any]:
    """Run `command` for `job`: ("respond", body) or (CATEGORY, reason)."""
    env = {
        **os.environ,
        "GLOOM_JOB_ID": str(job.id),
        "GLOOM_JOB_TYPE": job.type if isinstance(job.type, str) else codec.dumps(job.type).decode(),
        "GLOOM_JOB_ATTEMPT": str(job.attempt),
    }
    limit = job.timeout if isinstance(job.timeout, (int, float)) and job.timeout > 0 else math.inf
    try:
        with trio.move_on_after(limit) as scope:
            proc = await trio.run_process(
                command,
                stdin=codec.dumps(job.body),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=env,
            )
    except OSError as exc:
        return (
            "ERROR",
            {
                "type": type(exc).__name__,
                "message": f"cannot run {command[0]!r}: {exc.strerror or exc}",
                "exitcode": None,
                "stderr": "",
            },
        )
    if scope.cancelled_caught:
        return (
            "TIMEOUT",
            {
                "type": "Timeout",
                "message": f"command killed after the job's timeout of {job.timeout} s",
                "exitcode": None,
                "stderr": "",
            },
        )
    if proc.returncode != 0:
        code = proc.returncode
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return (
            "ERROR",
            {
                "type": "CommandFailed",
                "message": f"{command[0]} {how}",
                "exitcode": code,
                "stderr": _tail(proc.stderr),
            },
        )
    return ("respond", parse_stdout(proc.stdout))


COMMANDS = [
    Command(
        "slave",
        "serve jobs of TYPE by running a command per job",
        _configure,
        _run,
        description=(
            "Serve jobs of TYPE: run COMMAND per job with the body as JSON on stdin, "
            "respond with its stdout (JSON if it parses, else a string), fail on a non-zero exit."
        ),
    ),
]
