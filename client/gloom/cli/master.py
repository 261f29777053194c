"""`gloom submit`, `gloom result`, `gloom cancel` and `gloom stats`.

Results go to stdout as compact JSON, one per line, so the output pipes into
`jq`; bars, tables and messages go to stderr (the table of `gloom stats` is
the command's output, so it goes to stdout).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import trio
from rich.console import Console, Group
from rich.live import Live
from rich.progress import Progress, TaskID
from rich.text import Text

from gloomwire import codec

from .._connect import Backoff
from .._servers import AsyncServers
from .._trio_master import AsyncMaster, Job
from ..errors import GloomError, JobError, ServerError, TransportError, WaitTimeout
from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Command,
    UsageError,
    connection_security,
    master_session,
    positive_int,
    positive_number,
    servers_of,
)
from .explain import explain
from .lifecycle_flags import add_lifecycle_flags, lifecycle_spec
from .render import count_bar, job_bar, progress_fraction, stats_table, stderr_console, to_json

__all__ = ["COMMANDS"]


def _json_arg(text: str) -> Any:
    try:
        return codec.loads(text.encode("utf-8"))
    except codec.DecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def _print_result(value: Any) -> None:
    sys.stdout.write(to_json(value) + "\n")
    sys.stdout.flush()


def _report_failure(error: GloomError, *, action: str | None = None, job_id: Any = None) -> None:
    """One line per failure on stderr, plus the slave's traceback or stderr tail."""
    print(f"gloom: {explain(error, action=action, job_id=job_id)}", file=sys.stderr)
    if isinstance(error, JobError):
        detail = error.traceback
        if detail is None and isinstance(error.reason, dict):
            tail = error.reason.get("stderr")
            detail = tail if isinstance(tail, str) and tail else None
        if detail:
            print(detail.rstrip("\n"), file=sys.stderr)


# -- submit -------------------------------------------------------------------------


def _configure_submit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("type", metavar="TYPE", help="job type (a string)")
    parser.add_argument("body", metavar="BODY", type=_json_arg, help="job body, as JSON")
    parser.add_argument("--priority", type=int, default=0, help="larger runs first (default 0)")
    parser.add_argument(
        "--timeout", type=positive_number, default=None, help="job run-time limit in seconds"
    )
    parser.add_argument(
        "--wait-timeout",
        type=positive_number,
        default=None,
        help="stop waiting after S seconds (the job is withdrawn unless --detach)",
    )
    parser.add_argument(
        "--detach",
        action="store_true",
        help="a job that outlives this command: print its id and exit (with --wait-timeout:"
        " wait that long for its result first)",
    )
    parser.add_argument("--count", type=positive_int, default=1, help="submit N copies")
    parser.add_argument("--id", default=None, help="job id (a string; default: a fresh uuid)")
    parser.add_argument(
        "--after",
        action="append",
        default=None,
        metavar="ID",
        help="run only after job ID completed (repeatable)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument(
        "--spread",
        choices=["round_robin", "hash"],
        default="round_robin",
        help="with --servers: each job to the next daemon in turn (default), or to the daemon"
        " its id hashes to (the same id always on the same daemon)",
    )
    add_lifecycle_flags(parser)


def _run_submit(args: argparse.Namespace) -> int:
    if args.count > 1 and args.id is not None:
        raise UsageError("--id names one job; it cannot be combined with --count")
    return trio.run(_submit, args)


class _Left:
    """Why `gloom submit` stopped before its jobs finished, and which jobs it had."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.signal: str | None = None


async def _submit(args: argparse.Namespace) -> int:
    """Submit, wait, print; on Ctrl-C (or SIGTERM) say what became of the jobs.

    The signals are taken over for the whole run, so that an interrupt is
    never a traceback and always a sentence: a job that is not detached is
    withdrawn when this master leaves (gloomd drops a leaving master's jobs),
    a detached one stays queued.
    """
    left = _Left()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with master_session(args, args.spread) as master:
            status: int | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope, left)
                status = await _submit_and_wait(master, args, left)
                nursery.cancel_scope.cancel()
    if left.signal is not None:
        _report_left(left.jobs, args, f"interrupted ({left.signal})")
        return EXIT_INTERRUPTED
    assert status is not None
    return status


async def _stop_on_signal(
    signals: AsyncIterator[int], scope: trio.CancelScope, left: _Left
) -> None:
    async for signum in signals:
        left.signal = signal.Signals(signum).name
        scope.cancel()
        return


def _report_left(jobs: list[Job], args: argparse.Namespace, why: str) -> None:
    """One line: what becomes of the jobs still unfinished as gloom leaves.

    A job that is not detached is withdrawn (gloomd drops a leaving master's
    queued jobs, and discards a running one's result); a detached one stays.
    """
    if not jobs:
        print(
            f"gloom: {why} before gloomd acknowledged the job: if it was accepted, it is"
            " withdrawn as gloom leaves",
            file=sys.stderr,
        )
        return
    unfinished = [job for job in jobs if not job.done]
    if not unfinished:
        return
    one = len(jobs) == 1
    what = f"job {unfinished[0].id}" if one else f"{len(unfinished)} of {len(jobs)} jobs"
    if args.detach:
        running = all(job.state.value == "running" for job in unfinished)
        where = "still running" if running else "still queued"
        fetch = f"gloom result {unfinished[0].id}" if one else "gloom result ID"
        print(
            f"gloom: {why}: {what} {where}, detached: `{fetch}` fetches its result later",
            file=sys.stderr,
        )
        return
    print(
        f"gloom: {why}: {what} withdrawn, as gloom leaves (gloomd drops a leaving master's"
        " jobs); to leave a job queued, submit it with --detach and fetch its result with"
        " `gloom result ID`",
        file=sys.stderr,
    )


async def _submit_and_wait(
    master: AsyncMaster | AsyncServers, args: argparse.Namespace, left: _Left
) -> int:
    specs = [
        {
            "type": args.type,
            "body": args.body,
            "priority": args.priority,
            "id": args.id,
            "timeout": args.timeout,
            "after": args.after,
            "detach": args.detach,
            **lifecycle_spec(args),
        }
        for _ in range(args.count)
    ]
    if args.count == 1:
        job = await master.submit(**specs[0])
        jobs = [job]
    else:
        jobs = await master.submit_many(specs)
    left.jobs = jobs
    if args.detach and args.wait_timeout is None:
        return _print_ids(jobs)
    console = stderr_console()
    if args.count == 1:
        return await _wait_one(jobs[0], args, console)
    return await _wait_many(jobs, args, console)


def _print_ids(jobs: list[Job]) -> int:
    status = EXIT_OK
    for job in jobs:
        if job.error is not None:
            _report_failure(job.error)
            status = EXIT_FAILED
        else:
            sys.stdout.write(f"{job.id}\n")
    sys.stdout.flush()
    return status


async def _wait_one(job: Job, args: argparse.Namespace, console: Console) -> int:
    bar = job_bar(console)
    with bar if not args.quiet else _nothing():
        task = bar.add_task(f"{args.type} {job.id}", total=None, note="queued")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_follow_progress, job, bar, task)
            try:
                result = await job.wait(args.wait_timeout)
            except GloomError as exc:
                nursery.cancel_scope.cancel()
                error: GloomError | None = exc
            else:
                nursery.cancel_scope.cancel()
                error = None
        if error is None:
            bar.update(task, completed=100, total=100, note="done")
        else:
            bar.update(task, note=str(job.state))
    if isinstance(error, WaitTimeout):
        _report_left([job], args, f"stopped waiting after {args.wait_timeout:g} s")
        return EXIT_FAILED
    if error is not None:
        _report_failure(error)
        return EXIT_FAILED
    _print_result(result)
    return EXIT_OK


async def _follow_progress(job: Job, bar: Progress, task: TaskID) -> None:
    async for value in job.progress_updates():
        fraction = progress_fraction(value)
        if fraction is None:
            bar.update(task, note=to_json(value)[:40])
        else:
            bar.update(task, completed=fraction[0], total=fraction[1], note="running")


async def _wait_many(jobs: list[Job], args: argparse.Namespace, console: Console) -> int:
    bar = count_bar(console)
    failures: list[GloomError] = []
    with bar if not args.quiet else _nothing():
        task = bar.add_task(args.type, total=len(jobs), note="")

        async def wait(job: Job) -> None:
            try:
                await job.wait()
            except GloomError as exc:
                failures.append(exc)
                bar.update(task, note=f"{len(failures)} failed")
            bar.advance(task)

        with trio.move_on_after(math.inf if args.wait_timeout is None else args.wait_timeout):
            async with trio.open_nursery() as nursery:
                for job in jobs:
                    if job.done:
                        if job.error is not None:
                            failures.append(job.error)
                        bar.advance(task)
                    else:
                        nursery.start_soon(wait, job)
    for job in jobs:
        if job.state.value == "done":
            _print_result(job.result)
    for failure in failures:
        _report_failure(failure)
    unfinished = sum(1 for job in jobs if not job.done)
    if unfinished:
        _report_left(jobs, args, f"stopped waiting after {args.wait_timeout:g} s")
    return EXIT_FAILED if failures or unfinished else EXIT_OK


class _nothing:
    """Stands in for the bar's context manager under --quiet."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


# -- result, cancel -------------------------------------------------------------------


def _configure_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="job id (a string)")


def _run_result(args: argparse.Namespace) -> int:
    async def fetch() -> int:
        async with master_session(args) as master:
            try:
                value = await master.result(args.id)
            except ServerError as exc:
                _report_failure(exc, action="result", job_id=args.id)
                return EXIT_FAILED
        _print_result(value)
        return EXIT_OK

    return trio.run(fetch)


def _run_cancel(args: argparse.Namespace) -> int:
    async def cancel() -> int:
        async with master_session(args) as master:
            try:
                await master.cancel(args.id)
            except ServerError as exc:
                _report_failure(exc, action="cancel", job_id=args.id)
                return EXIT_FAILED
        print(f"cancelled {args.id}")
        return EXIT_OK

    return trio.run(cancel)


# -- stats ----------------------------------------------------------------------------


def _configure_stats(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the raw stats as JSON")
    parser.add_argument("--watch", action="store_true", help="refresh the table until Ctrl-C")
    parser.add_argument(
        "--interval", type=positive_number, default=1.0, help="seconds between refreshes (--watch)"
    )


def _run_stats(args: argparse.Namespace) -> int:
    if args.json and args.watch:
        raise UsageError("--watch draws a table; it cannot be combined with --json")
    return trio.run(_stats, args)


async def _stats(args: argparse.Namespace) -> int:
    security = connection_security(args)
    if args.watch:
        return await _watch(args, security)
    async with master_session(args) as master:
        stats = await master.stats()
    if args.json:
        _print_result(stats)
    else:
        Console().print(stats_table(stats))
    return EXIT_OK


async def _watch(args: argparse.Namespace, security: dict[str, Any]) -> int:
    """Redraw the table every `--interval` until Ctrl-C, across daemon restarts.

    The first connection must succeed (a wrong address is exit 3 at once);
    after that a lost daemon is waited for, as `gloom slave` and `gloom
    worker` wait: each attempt and the reconnection are a line on stderr
    and under the table, with the back-off `gloom slave` uses (1 s doubling,
    here capped at 10 s so the view comes back soon after the daemon).  A
    refused token is not waited for (exit 1).
    """
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        Live(Text(""), console=Console(), auto_refresh=False) as live,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope, _Left())
            await _refresh(args, security, live)
    return EXIT_OK


async def _refresh(args: argparse.Namespace, security: dict[str, Any], live: Live) -> None:
    """`_watch`'s loop; returns only by being cancelled (or raising)."""
    servers = servers_of(args, args.master_port)
    where = f"{args.host}:{args.master_port}"
    if servers is not None:
        where = ",".join(f"{host}:{port}" for host, port in servers)
    backoff = Backoff(1.0, 10.0)
    last: Group | None = None
    notice: str | None = None

    def show(table: Group | None, line: str | None) -> None:
        parts: list[Any] = [part for part in (table,) if part is not None]
        if line is not None:
            parts.append(Text(line))
        live.update(Group(*parts), refresh=True)

    while True:
        try:
            async with master_session(args) as master:
                while True:
                    last = stats_table(await master.stats())
                    if notice is not None:
                        notice = None
                        backoff.reset()
                        _say(f"reconnected to gloomd at {where}")
                    show(last, None)
                    await trio.sleep(args.interval)
        except TransportError as exc:
            if last is None:
                raise  # never reached: a wrong address, not a restart
            delay = backoff.next()
            lost = "lost" if notice is None else "still unreachable"
            notice = f"gloomd at {where} {lost} ({exc}); reconnecting in {delay:g} s"
            _say(notice)
            show(last, notice)
            await trio.sleep(delay)


def _say(line: str) -> None:
    print(f"gloom: {line}", file=sys.stderr, flush=True)


COMMANDS = [
    Command(
        "submit",
        "submit a job, show its progress and print its result",
        _configure_submit,
        _run_submit,
        servers=True,
    ),
    Command(
        "result", "print the result of a detached job", _configure_id, _run_result, servers=True
    ),
    Command("cancel", "cancel a queued job", _configure_id, _run_cancel, servers=True),
    Command("stats", "show queues, slaves and totals", _configure_stats, _run_stats, servers=True),
]
