"""`gloom jobs`, `dead`, `kick`, `delete`, `pause` and `resume`: the job lifecycle by hand.

What an operator reaches for when a queue misbehaves: see what gloomd holds
(`jobs`, `dead`), put failed background jobs back (`kick`), drop one
(`delete`), hold a type's queue while something is fixed (`pause`,
`resume`).  Each is one request (or, for `jobs`, a page at a time following
the daemon's cursor) on a master connection.

Output follows the other commands: the listing and the confirmations are the
command's output (stdout), notes go to stderr; exit status 0 when done, 1
when gloomd answered an error (no such job, a job in the wrong state), 2 for
usage, 3 when gloomd cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from .._lifecycle import ANY_TYPE, JobInfo, ListedState
from .._trio_master import AsyncMaster, open_master
from ..errors import InvalidState, UnknownJob
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    Command,
    UsageError,
    connection_security,
    master_session,
    positive_int,
)
from .render import to_json, type_text

__all__ = ["COMMANDS", "format_age", "jobs_table"]

#: Rows `gloom jobs` shows unless told otherwise (gloomd's own page size).
DEFAULT_LIMIT = 100

_STATES = [state.value for state in ListedState]


def format_age(seconds: float) -> str:
    """A job's age for a person: ``4.2s``, ``3m05s``, ``2h07m``, ``3d04h``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def jobs_table(rows: list[JobInfo]) -> Table:
    """The rows of `gloom jobs`, in the daemon's order (queued ones as they will run)."""
    table = Table(title=f"gloomd jobs ({len(rows)})", title_justify="left")
    table.add_column("id")
    table.add_column("type")
    table.add_column("state")
    for column in ("priority", "attempt", "age"):
        table.add_column(column, justify="right")
    table.add_column("detach")
    for info in rows:
        table.add_row(
            info.id if isinstance(info.id, str) else to_json(info.id),
            type_text(info.type),
            info.state.value,
            str(info.priority),
            str(info.attempt),
            format_age(info.age_s),
            "yes" if info.detach else "no",
        )
    return table


def _row_json(info: JobInfo) -> str:
    return to_json(
        {
            "id": info.id,
            "type": info.type,
            "priority": info.priority,
            "state": info.state.value,
            "attempt": info.attempt,
            "age_s": info.age_s,
            "detach": info.detach,
        }
    )


def _session(args: argparse.Namespace) -> AbstractAsyncContextManager[AsyncMaster]:
    return open_master(args.host, args.master_port, **connection_security(args))


# -- jobs, dead ---------------------------------------------------------------------------


def _configure_listing(parser: argparse.ArgumentParser, *, with_state: bool) -> None:
    parser.add_argument("--type", default=None, metavar="T", help="only jobs of type T (a string)")
    if with_state:
        parser.add_argument(
            "--state", choices=_STATES, default=None, help="only jobs in this state"
        )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N jobs (default {DEFAULT_LIMIT}; pages are followed past 1,000)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per job, per line")


def _configure_jobs(parser: argparse.ArgumentParser) -> None:
    _configure_listing(parser, with_state=True)


def _configure_dead(parser: argparse.ArgumentParser) -> None:
    _configure_listing(parser, with_state=False)


def _run_jobs(args: argparse.Namespace) -> int:
    return trio.run(_list, args, args.state)


def _run_dead(args: argparse.Namespace) -> int:
    return trio.run(_list, args, ListedState.DEAD.value)


async def _list(args: argparse.Namespace, state: str | None) -> int:
    job_type: Any = ANY_TYPE if args.type is None else args.type
    async with _session(args) as master:
        # One row past the limit says whether there are more than shown.
        rows = [info async for info in master.jobs(job_type, state=state, limit=args.limit + 1)]
    more = len(rows) > args.limit
    rows = rows[: args.limit]
    if args.json:
        for info in rows:
            sys.stdout.write(_row_json(info) + "\n")
        sys.stdout.flush()
    elif rows:
        Console().print(jobs_table(rows))
    else:
        print((f"no {state} jobs" if state else "no jobs") + _filter_text(args.type))
    if more:
        print(
            f"gloom: more than {args.limit} jobs; --limit N shows more", file=sys.stderr, flush=True
        )
    return EXIT_OK


def _filter_text(job_type: str | None) -> str:
    return "" if job_type is None else f" of type {job_type}"


# -- kick, delete -------------------------------------------------------------------------


def _configure_kick(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", nargs="?", default=None, help="a dead job's id")
    parser.add_argument(
        "--type", default=None, metavar="T", help="kick the oldest dead jobs of type T instead"
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        metavar="N",
        help="with --type: at most N jobs (default: all of them)",
    )


def _run_kick(args: argparse.Namespace) -> int:
    if (args.id is None) == (args.type is None):
        raise UsageError("give a job ID or --type T (one of them)")
    if args.limit is not None and args.type is None:
        raise UsageError("--limit goes with --type")
    return trio.run(_kick, args)


async def _kick(args: argparse.Namespace) -> int:
    async with master_session(args) as master:
        if args.type is not None:
            kicked = await master.kick_type(args.type, args.limit)
            noun = "job" if kicked == 1 else "jobs"
            print(f"kicked {kicked} dead {noun} of type {args.type}")
            return EXIT_OK
        return await _on_one(master.kick(args.id), args.id, "kicked", "only dead jobs are kicked")


def _configure_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="job id (a string)")


def _run_delete(args: argparse.Namespace) -> int:
    async def delete() -> int:
        async with master_session(args) as master:
            return await _on_one(
                master.delete(args.id), args.id, "deleted", "a running job cannot be deleted"
            )

    return trio.run(delete)


async def _on_one(request: Any, job_id: str, done: str, rule: str) -> int:
    """Await a request on one job; say what happened, in words, whatever it was."""
    try:
        await request
    except UnknownJob:
        print(f"gloom: gloomd holds no job {job_id}", file=sys.stderr)
        return EXIT_FAILED
    except InvalidState as exc:
        print(f"gloom: job {job_id} is {exc.state}: {rule}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{done} {job_id}")
    return EXIT_OK


# -- pause, resume ------------------------------------------------------------------------


def _configure_type(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("type", metavar="TYPE", help="job type (a string)")


def _run_pause(args: argparse.Namespace) -> int:
    return trio.run(_switch, args, True)


def _run_resume(args: argparse.Namespace) -> int:
    return trio.run(_switch, args, False)


async def _switch(args: argparse.Namespace, pause: bool) -> int:
    async with master_session(args) as master:
        if pause:
            await master.pause(args.type)
        else:
            await master.resume(args.type)
    print(f"{'paused' if pause else 'resumed'} {args.type}")
    return EXIT_OK


COMMANDS = [
    Command(
        "jobs",
        "list the jobs gloomd holds (queued ones in dispatch order)",
        _configure_jobs,
        _run_jobs,
    ),
    Command("dead", "list dead jobs (detached jobs that failed)", _configure_dead, _run_dead),
    Command(
        "kick",
        "queue a dead job again, or the oldest dead jobs of a type",
        _configure_kick,
        _run_kick,
        servers=True,
    ),
    Command("delete", "remove a job that is not running", _configure_id, _run_delete, servers=True),
    Command("pause", "stop handing out jobs of a type", _configure_type, _run_pause, servers=True),
    Command(
        "resume",
        "hand out jobs of a paused type again",
        _configure_type,
        _run_resume,
        servers=True,
    ),
]
