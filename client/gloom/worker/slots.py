"""A slot: one pool process and one slave connection, kept honest together.

* **Credit = idle processes.**  A slot's connection is joined only while its
  process is alive, free and not due for retirement; every answer re-offers
  the slot (see `provision`).
* **One job per process; the connection is held while it runs.**  Closing it
  would make the daemon requeue the job.
* **Leaving without losing.**  A slot that stops taking jobs (shutdown,
  scale-down) re-joins a type nobody uses before it closes, so a job already
  on its way is put back by the daemon without counting as a loss.
* **Reconnecting.**  A lost connection is made again after the run's back-off
  (`reconnect_delay` doubling to `max_reconnect_delay`, back to the start
  once a join succeeds); a refused token is final and stops the run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from gloomwire.logformat import event

from ..errors import GloomError, Unauthorized
from .jobrun import run_job
from .link import LinkLost, SlaveLink, open_link
from .multilink import MultiLink, open_links
from .pool import PoolProcess
from .provision import RETIRE_TIMEOUT, ready_process, spawn_for
from .state import RunState, Slot

__all__ = ["LEAVE_TIMEOUT", "add_slot"]

log = logging.getLogger("gloom.worker")

#: Seconds a leaving slot waits for the daemon to confirm its parking join.
LEAVE_TIMEOUT = 5.0


def add_slot(run: RunState, proc: PoolProcess | None) -> Slot:
    """A new slot, served by its own task in the run's slot nursery."""
    assert run.slot_nursery is not None
    slot = Slot(run.next_slot, proc)
    run.next_slot += 1
    run.slots[slot.id] = slot
    many = len(run.options.slave_endpoints) > 1
    run.slot_nursery.start_soon(_servers_slot_task if many else _slot_task, run, slot)
    return slot


async def _slot_task(run: RunState, slot: Slot) -> None:
    opts = run.options
    endpoint = opts.slave_endpoint
    beat, lives = opts.heartbeat, opts.liveness
    backoff = opts.backoff()
    try:
        if slot.proc is None and not await spawn_for(run, slot):
            return
        while not (run.stopping or slot.retire):
            if slot.proc is None or not slot.proc.alive:
                # Its job was abandoned (link lost) and the process killed:
                # join again only with a live process behind the slot.
                await ready_process(run, slot)
                if slot.proc is None:
                    break
            slot.state = "connecting"
            ended = "lost"
            try:
                async with open_link(endpoint, heartbeat=beat, liveness=lives) as link:
                    slot.link = link
                    await link.join(opts.type)
                    run.stats.joins += 1
                    backoff.reset()
                    ended = await _serve_link(run, slot, link)
                    if ended == "leave":
                        slot.state = "leaving"
                        with trio.move_on_after(LEAVE_TIMEOUT):
                            run.stats.returned += await link.leave()
                reason = link.lost
            except Unauthorized as exc:
                # The daemon's token changed under us: no retry can help.
                slot.link = None
                run.refused(slot, exc)
                break
            except (OSError, trio.TooSlowError, LinkLost, GloomError) as exc:
                reason = str(exc)
            slot.link = None
            if ended == "leave" or run.stopping or slot.retire:
                break
            delay = backoff.next()
            run.stats.reconnects += 1
            event(
                log, "link_lost", logging.WARNING, slot=slot.id, reason=reason,
                retry_in=round(delay, 2),
            )  # fmt: skip
            run.emit("link_lost", slot, reason=reason)
            slot.state = "reconnecting"
            await run.sleep_unless_stopping(delay)
    finally:
        await _close_slot(run, slot)


async def _close_slot(run: RunState, slot: Slot) -> None:
    with trio.CancelScope(shield=True):
        slot.state = "closing"
        for proc in (slot.proc, slot.successor):
            if proc is not None:
                await proc.retire(RETIRE_TIMEOUT)
        slot.proc = slot.successor = None
        del run.slots[slot.id]
        run.emit("slot_closed", slot)


async def _serve_link(run: RunState, slot: Slot, link: SlaveLink) -> str:
    """Take and run jobs until told to leave ("leave") or the link dies ("lost")."""
    while True:
        if run.stopping or slot.retire:
            return "leave"
        frame = await _wait_for_job(run, slot, link.next_job)
        if frame is LOST:
            return "lost"
        if frame is None:
            continue
        answer = await run_job(run, slot, link, frame)
        if answer is None:
            return "lost"
        if not run.stopping:
            await ready_process(run, slot)
        try:
            await link.answer(answer)
        except LinkLost:
            return "lost"
        run.stats.answers += 1


async def _servers_slot_task(run: RunState, slot: Slot) -> None:
    """`_slot_task` over several daemons (``--servers``): one `MultiLink`,
    whose connections reconnect one by one, so the slot never stops serving
    the daemons that are up."""
    opts = run.options

    def lost(peer: str, reason: str, delay: float) -> None:
        run.stats.reconnects += 1
        event(
            log, "link_lost", logging.WARNING, slot=slot.id, server=peer, reason=reason,
            retry_in=round(delay, 2),
        )  # fmt: skip
        run.emit("link_lost", slot, server=peer, reason=reason)

    try:
        if slot.proc is None and not await spawn_for(run, slot):
            return
        async with open_links(
            opts.slave_endpoints,
            heartbeat=opts.heartbeat,
            liveness=opts.liveness,
            backoff=opts.backoff,
            on_lost=lost,
        ) as links:
            await links.join(opts.type)
            run.stats.joins += 1
            await _serve_links(run, slot, links)
            slot.state = "leaving"
            with trio.move_on_after(LEAVE_TIMEOUT):
                await links.leave()
            run.stats.returned += links.returned
    except Unauthorized as exc:
        run.refused(slot, exc)
    finally:
        await _close_slot(run, slot)


async def _serve_links(run: RunState, slot: Slot, links: MultiLink) -> None:
    """`_serve_link` over several daemons, until told to leave.  A job whose
    daemon was lost is abandoned (that daemon requeued it) and the slot goes
    on serving the others."""
    while not (run.stopping or slot.retire):
        frame = await _wait_for_job(run, slot, links.next_job)
        if frame is None or frame is LOST:  # LOST: a MultiLink reconnects, never raises it
            continue
        answer = await run_job(run, slot, links, frame)
        if not run.stopping:
            await ready_process(run, slot)
        if answer is None:
            await links.release()
            continue
        try:
            await links.answer(answer)
        except LinkLost:
            continue
        run.stats.answers += 1


#: What `_wait_for_job` returns when the link was lost while idle.
LOST: Final[dict[str, Any]] = {}


async def _wait_for_job(
    run: RunState, slot: Slot, next_job: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any] | None:
    """Idle until `next_job` gives a job frame.  None when the slot's process
    died meanwhile (OOM killer, kill -9): no job to report, but the slot must
    not stay joined without a process, so a new one is readied.  `LOST` when
    the link was lost (`LinkLost`, caught inside the nursery so that it is
    not wrapped in an ExceptionGroup)."""
    slot.state = "idle"
    slot.idle_since = trio.current_time()
    run.emit("idle", slot)
    proc = slot.proc
    frame: dict[str, Any] | None = None
    with trio.CancelScope() as scope:
        slot.idle_scope = scope
        try:
            async with trio.open_nursery() as nursery:
                if proc is not None:
                    nursery.start_soon(_cancel_when_dead, proc, scope)
                try:
                    frame = await next_job()
                except LinkLost:
                    frame = LOST
                nursery.cancel_scope.cancel()
        finally:
            slot.idle_scope = None
    if frame is None and (proc is None or not proc.alive):
        slot.crashes += 1
        run.emit("died_idle", slot, pid=None if proc is None else proc.pid)
        if not run.stopping:
            await ready_process(run, slot)
    return frame


async def _cancel_when_dead(proc: PoolProcess, scope: trio.CancelScope) -> None:
    await proc.exited.wait()
    scope.cancel()
