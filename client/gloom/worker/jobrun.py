"""One job on one pool process, from its job frame to the frame that answers it.

Outcomes always go through the slave protocol: a result is ``respond``; an
exception (`Retry` included: the daemon applies the job's retry budget) or
an unencodable result is ``fail`` ERROR (the pool process builds those
frames itself); a timeout, a crash and a job killed because the runner
is stopping are ``fail`` TIMEOUT, CRASH and HALTED, built here.  A job whose
connection was lost is killed and never reported: the daemon has already
requeued it.  Timeouts SIGTERM the job's process group and SIGKILL it after
`grace`.
"""

from __future__ import annotations

import logging
import signal
from typing import Any, NamedTuple, Protocol

import trio

from gloomwire import vocabulary
from gloomwire.logformat import event

from .._slave_protocol import attempt_of
from .pool import Exited, PoolProcess
from .provision import prespawn_if_due
from .state import RunState, Slot

__all__ = ["effective_timeout", "run_job"]

log = logging.getLogger("gloom.worker")


class JobLink(Protocol):
    """What a running job needs of its connection (a `SlaveLink`, or a slot's
    `MultiLink` over several daemons)."""

    def send_progress(self, body: Any) -> None: ...

    async def wait_lost(self) -> None: ...


async def run_job(
    run: RunState, slot: Slot, link: JobLink, frame: dict[str, Any]
) -> dict[str, Any] | None:
    """Run `frame` on the slot's process; the frame to answer with, or None
    when the link was lost (the job is killed and not reported)."""
    opts = run.options
    proc = slot.proc
    assert proc is not None
    proc.jobs_started += 1
    prespawn_if_due(run, slot)
    slot.state = "busy"
    slot.cancel_reason = None
    run.stats.jobs_started += 1
    run.stats.max_busy = max(run.stats.max_busy, run.busy())
    limit = effective_timeout(opts.timeout, frame.get("timeout"))
    job_id = frame.get("id")
    attempt = attempt_of(frame)
    run.emit("job_started", slot, id=job_id, type=frame.get("type"), attempt=attempt)
    started = trio.current_time()
    await proc.send(
        {
            "op": "job",
            "id": job_id,
            "type": frame.get("type"),
            "body": frame.get("body"),
            "attempt": attempt,
            "timeout": limit,
        }
    )
    outcome: _Done | Exited | None = None
    with trio.CancelScope() as scope:
        slot.job_scope = scope
        if limit is not None:
            scope.deadline = started + limit
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_link, link, slot, scope)
            outcome = await _job_outcome(proc, link)
            nursery.cancel_scope.cancel()
    slot.job_scope = None
    elapsed = trio.current_time() - started
    pid = proc.pid

    if isinstance(outcome, _Done):
        ok = outcome.frame.get("action") == "respond"
        if ok:
            run.stats.succeeded += 1
            verdict = "ok"
        elif outcome.retry:
            run.stats.retries += 1
            verdict = "retry"
        else:
            run.stats.errors += 1
            verdict = "error"
        slot.crashes = 0
        run.emit("job_finished", slot, id=job_id, outcome=verdict, seconds=elapsed)
        return outcome.frame

    if isinstance(outcome, Exited):
        slot.crashes += 1
        run.stats.crashes += 1
        died = outcome.describe()
        message = f"pool process {pid} {outcome.text()} while running job {job_id!r}"
        event(log, "crash", logging.WARNING, id=job_id, type=opts.type, pid=pid, **died)
        run.emit("job_finished", slot, id=job_id, outcome="crash", seconds=elapsed, **died)
        reason = {"type": "WorkerCrashed", "message": message, "pid": pid, **died}
        return vocabulary.fail("CRASH", reason)

    why = slot.cancel_reason or "timeout"
    if why == "halt":
        await proc.kill()
        run.stats.halted += 1
        ended = _ended(proc)
        run.emit("job_finished", slot, id=job_id, outcome="halted", seconds=elapsed)
        message = (
            f"the worker stopped; job {job_id!r} was still running after the {opts.grace:g} s"
            " grace period and was killed"
        )
        reason = {"type": "WorkerShutdown", "message": message, "pid": pid, **ended.describe()}
        return vocabulary.fail("HALTED", reason)

    await proc.terminate(opts.grace)
    ended = _ended(proc)
    if why == "lost":
        run.stats.abandoned += 1
        event(
            log, "abandoned", logging.WARNING, id=job_id, type=opts.type, pid=pid,
            reason="connection_lost",
        )  # fmt: skip
        run.emit("job_finished", slot, id=job_id, outcome="abandoned", seconds=elapsed)
        return None
    run.stats.timeouts += 1
    event(log, "timeout", logging.WARNING, id=job_id, type=opts.type, pid=pid, limit=limit)
    run.emit(
        "job_finished", slot, id=job_id, outcome="timeout", seconds=elapsed, **ended.describe()
    )
    message = (
        f"job {job_id!r} ran past its {limit:g} s timeout; process group {pid} was sent SIGTERM"
        f" and {ended.text()}"
    )
    reason = {"type": "JobTimeout", "message": message, "pid": pid, **ended.describe()}
    return vocabulary.fail("TIMEOUT", reason)


def effective_timeout(default: float, requested: Any) -> float | None:
    """The runner's timeout (0 = none), or the job's own when that is smaller."""
    limits = [t for t in (default,) if t and t > 0]
    if isinstance(requested, (int, float)) and not isinstance(requested, bool) and requested > 0:
        limits.append(float(requested))
    return min(limits) if limits else None


def _ended(proc: PoolProcess) -> Exited:
    return Exited(proc.exitcode if proc.exitcode is not None else -signal.SIGKILL)


class _Done(NamedTuple):
    """The pool process's answer: the frame to send, and whether it is a `Retry`."""

    frame: dict[str, Any]
    retry: bool


async def _job_outcome(proc: PoolProcess, link: JobLink) -> _Done | Exited:
    while True:
        message = await proc.receive()
        if isinstance(message, Exited):
            return message
        op = message.get("op")
        if op == "progress":
            link.send_progress(message.get("body"))
        elif op == "done":
            return _Done(message["frame"], message.get("retry") is True)


async def _watch_link(link: JobLink, slot: Slot, scope: trio.CancelScope) -> None:
    await link.wait_lost()
    slot.cancel_reason = "lost"
    scope.cancel()
