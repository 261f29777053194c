"""Scaling and burst mode: the two parts of a run that read the daemon's backlog.

Both ask the master port for ``stats`` and look at our type's row.  Scaling
feeds it to the pure rule in `scaling.plan` and adds or retires slots; burst
mode stops the run once nothing of our type is queued, delayed or running
anywhere.
Both ride out a daemon restart: the master connection is made again with the
run's back-off, like the slots' links.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from gloomwire import codec
from gloomwire.logformat import event

from .._trio_master import AsyncMaster, master_session
from ..errors import TransportError
from . import scaling
from .slots import add_slot
from .state import RunState

__all__ = ["BURST_POLL", "burst", "check_master", "scale", "scaler"]

log = logging.getLogger("gloom.worker")

#: Burst mode re-reads the daemon's stats this often while another runner's
#: jobs of our type are still running (our own state changes wake it at once).
BURST_POLL = 0.2


async def check_master(run: RunState) -> None:
    """Fail fast on a master port that is wrong or refuses us (once running,
    scaling and burst ride out a daemon restart)."""
    async with master_session(run.options.master_endpoint) as master:
        await master.stats()


async def scaler(run: RunState) -> None:
    await _with_daemon(run, lambda master: _scale_loop(run, master))


async def burst(run: RunState) -> None:
    await _with_daemon(run, lambda master: _burst_loop(run, master))


def scale(run: RunState, stats: dict[str, Any]) -> None:
    """One scaling decision from one reading of the daemon's stats."""
    opts = run.options
    low, high = opts.bounds
    entry = _queue_entry(run, stats)
    queued = entry["queued"] if entry else 0
    idle = [(s.id, s.idle_since) for s in run.slots.values() if s.state == "idle" and not s.retire]
    decision = scaling.plan(
        size=run.size(),
        queued=queued,
        idle=idle,
        now=trio.current_time(),
        minimum=low,
        maximum=high,
        idle_grace=opts.idle_grace,
    )
    if decision.grow:
        event(log, "scale_up", by=decision.grow, queued=queued, size=run.size())
        run.emit("scale_up", by=decision.grow, queued=queued)
        for _ in range(decision.grow):
            add_slot(run, None)
    elif decision.shrink is not None:
        slot = run.slots[decision.shrink]
        event(log, "scale_down", slot=slot.id, size=run.size())
        slot.retire = True
        run.emit("scale_down", slot)
        if slot.idle_scope is not None:
            slot.idle_scope.cancel()


def _pending(entry: dict[str, Any]) -> bool:
    """Jobs of a type that a burst run must still wait for (a `stats` row)."""
    return bool(entry["queued"] or entry["running"] or entry.get("delayed", 0))


def _queue_entry(run: RunState, stats: dict[str, Any]) -> dict[str, Any] | None:
    type_key = codec.canonical(run.options.type)
    for entry in stats.get("types", []):
        if codec.canonical(entry.get("type")) == type_key:
            return dict(entry)
    return None


async def _with_daemon(run: RunState, body: Callable[[AsyncMaster], Awaitable[None]]) -> None:
    """Run `body(master)` over a master connection until it returns or the run
    stops, connecting again after the daemon is lost.

    Each connection is opened and closed in this one frame, so its reader task
    nests inside the caller's cancel scopes as trio needs.  A refused token is
    not a lost daemon and still raises.
    """
    backoff = run.options.backoff()
    while not run.stopping:
        try:
            async with master_session(run.options.master_endpoint) as master:
                backoff.reset()
                await body(master)
                return
        except TransportError as exc:
            event(log, "stats_unavailable", error=str(exc))
            await run.sleep_unless_stopping(backoff.next())


async def _scale_loop(run: RunState, master: AsyncMaster) -> None:
    while not await run.sleep_unless_stopping(run.options.scale_interval):
        scale(run, await master.stats())


async def _burst_loop(run: RunState, master: AsyncMaster) -> None:
    """Stop once nothing of our type is queued, delayed or running anywhere.

    Delayed jobs count (a retry waiting out its back-off, a submit's
    `delay`), as arq's burst mode counts deferred jobs: a job the runner just
    asked to retry must not be left to nobody.  A daemon without the job
    lifecycle sends no ``delayed``: 0.  While the daemon cannot be reached
    none of it can be known, so the run keeps serving until `_with_daemon`
    has it back.
    """
    while True:
        await run.wait_for(lambda: run.stopping or run.all_idle())
        if run.stopping:
            return
        changed = run.changed
        entry = _queue_entry(run, await master.stats())
        if entry is None or not _pending(entry):
            event(log, "burst_done", type=run.options.type, jobs=run.stats.jobs_started)
            run.stop()
            return
        with trio.move_on_after(BURST_POLL):
            await changed.wait()
