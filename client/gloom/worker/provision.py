"""A live, free process behind every slot: spawning, crash back-off, recycling.

A slot answers a job only once its process can take the next one (credit =
idle processes), so after a crash or a timeout the replacement is started
*before* the failure is reported, and a process due for recycling gets its
successor spawned while it runs its last job, so recycling costs no capacity.
"""

from __future__ import annotations

import logging

import trio

from gloomwire.logformat import event

from .handler import HandlerError
from .pool import SpawnFailed
from .state import RunState, Slot

__all__ = ["RETIRE_TIMEOUT", "prespawn", "prespawn_if_due", "ready_process", "spawn_for"]

log = logging.getLogger("gloom.worker")

#: Seconds an idle process gets to exit by itself when retired.
RETIRE_TIMEOUT = 5.0


async def spawn_for(run: RunState, slot: Slot) -> bool:
    """Give the slot a fresh process, backing off while it crash-loops."""
    opts = run.options
    assert run.factory is not None
    while True:
        if slot.crashes > 1:
            backoff = min(opts.crash_backoff * 2 ** (slot.crashes - 2), opts.max_crash_backoff)
            run.emit("backoff", slot, delay=backoff)
            event(
                log, "crash_loop", logging.WARNING, slot=slot.id, crashes=slot.crashes,
                backoff=round(backoff, 2),
            )  # fmt: skip
            await run.sleep_unless_stopping(backoff)
        if run.stopping:
            return False
        slot.state = "starting"
        try:
            proc = await run.factory.spawn()
        except (HandlerError, SpawnFailed) as exc:
            slot.crashes += 1
            event(log, "spawn_failed", logging.ERROR, slot=slot.id, error=str(exc))
            continue
        slot.proc = proc
        run.register(proc, slot)
        return True


async def ready_process(run: RunState, slot: Slot) -> None:
    """Make sure the slot's process can take the next job before we answer."""
    proc = slot.proc
    if proc is not None and proc.alive and proc.jobs_started < run.options.max_jobs_per_process:
        return
    if proc is not None and proc.alive:
        # Recycled after its quota: let it exit in the background.
        run.emit("recycled", slot, jobs=proc.jobs_started)
        assert run.aux_nursery is not None
        run.aux_nursery.start_soon(proc.retire, RETIRE_TIMEOUT)
    slot.proc = None
    if slot.successor_ready is not None:
        await slot.successor_ready.wait()
        slot.successor_ready = None
        successor, slot.successor = slot.successor, None
        if successor is not None and successor.alive:
            slot.proc = successor
            return
    run.stats.spawn_waits += 1
    await spawn_for(run, slot)


def prespawn_if_due(run: RunState, slot: Slot) -> None:
    """Start the successor of a process that just took its last job."""
    proc = slot.proc
    assert proc is not None
    if proc.jobs_started >= run.options.max_jobs_per_process and slot.successor_ready is None:
        slot.successor_ready = trio.Event()
        assert run.aux_nursery is not None
        run.aux_nursery.start_soon(prespawn, run, slot, slot.successor_ready)


async def prespawn(run: RunState, slot: Slot, ready: trio.Event) -> None:
    assert run.factory is not None
    try:
        proc = await run.factory.spawn()
    except (HandlerError, SpawnFailed) as exc:
        event(log, "spawn_failed", logging.ERROR, slot=slot.id, error=str(exc))
    else:
        run.register(proc, slot)
        if run.stopping or slot.retire:
            with trio.CancelScope(shield=True):
                await proc.retire(RETIRE_TIMEOUT)
        else:
            slot.successor = proc
    finally:
        ready.set()
