"""What every part of a run shares: the slots, the counters, the event log, stopping.

The runner's parts (the slots in `slots`, one job in `jobrun`, scaling and
burst in `autoscale`, signals in `signals`) each take the `RunState` and
nothing else, so they never import one another's internals and the runner
itself (`runner.Runner`, a `RunState`) only wires them up.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from gloomwire.logformat import event

from ..errors import Unauthorized
from .link import SlaveLink
from .options import WorkerOptions
from .pool import PoolProcess, ProcessFactory

__all__ = ["EVENT_LOG", "RunState", "RunnerStats", "Slot", "WorkerEvent"]

log = logging.getLogger("gloom.worker")

#: How many events `Runner.events` keeps.
EVENT_LOG = 10_000


@dataclass
class RunnerStats:
    """Counters of one run.  `credits` is every job the runner offered to take:
    one per join plus one per answer, so at rest it equals answers + slots."""

    jobs_started: int = 0
    succeeded: int = 0
    errors: int = 0
    retries: int = 0  # handlers that raised Retry (reported as ERROR; not in `errors`)
    timeouts: int = 0
    crashes: int = 0
    halted: int = 0
    abandoned: int = 0  # running when their connection was lost; never reported
    joins: int = 0
    answers: int = 0
    returned: int = 0  # job frames handed back when a slot left
    spawned: int = 0
    spawn_waits: int = 0  # answers that had to wait for a replacement process
    reconnects: int = 0
    max_busy: int = 0

    @property
    def credits(self) -> int:
        return self.joins + self.answers


@dataclass(frozen=True)
class WorkerEvent:
    """One thing that happened, in order; tests and logs read these."""

    time: float
    kind: str
    slot: int | None = None
    pid: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class Slot:
    """One pool position: a process, a connection, and what it is doing."""

    def __init__(self, ident: int, proc: PoolProcess | None) -> None:
        self.id = ident
        self.proc = proc
        self.successor: PoolProcess | None = None
        self.successor_ready: trio.Event | None = None
        self.state = "starting"
        self.idle_since = 0.0
        self.idle_scope: trio.CancelScope | None = None
        self.job_scope: trio.CancelScope | None = None
        self.cancel_reason: str | None = None
        self.retire = False
        self.crashes = 0  # consecutive unplanned deaths, for the back-off
        self.link: SlaveLink | None = None

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<Slot {self.id} {self.state} pid={pid}>"


class RunState:
    """The shared state of one run, and the few rules every part applies to it."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.stats = RunnerStats()
        #: The latest events (bounded: a long-running worker must not grow).
        self.events: deque[WorkerEvent] = deque(maxlen=EVENT_LOG)
        self.slots: dict[int, Slot] = {}
        #: Every pool process pid this runner started (for orphan checks).
        self.pids_ever: list[int] = []
        #: An error that ended the run from inside (a refused token): raised by `run`.
        self.fatal: BaseException | None = None
        self.procs: set[PoolProcess] = set()  # alive, whatever slot (if any) holds them
        self.factory: ProcessFactory | None = None
        self.slot_nursery: trio.Nursery | None = None
        #: Where background chores run (retiring, pre-spawning, scaling, the halt timer).
        self.aux_nursery: trio.Nursery | None = None
        self.next_slot = 0
        self._changed = trio.Event()
        self._stop_event = trio.Event()
        self._force_event = trio.Event()
        self._stopping = False
        self._halt_at = math.inf

    # ------------------------------------------------------------ observing

    def emit(
        self, kind: str, slot: Slot | None = None, pid: int | None = None, **detail: Any
    ) -> None:
        if pid is None and slot is not None and slot.proc is not None:
            pid = slot.proc.pid
        slot_id = None if slot is None else slot.id
        self.events.append(WorkerEvent(trio.current_time(), kind, slot_id, pid, detail))
        event(log, kind, logging.DEBUG, slot=slot_id, pid=pid, **detail)
        self._changed.set()
        self._changed = trio.Event()

    @property
    def changed(self) -> trio.Event:
        """Set at the next event (take it before reading the state it guards)."""
        return self._changed

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` is true; re-checked after every event."""
        while True:
            changed = self._changed
            if predicate():
                return
            await changed.wait()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def live_pids(self) -> list[int]:
        """Pids of the pool processes serving slots now (successors excluded)."""
        return [s.proc.pid for s in self.slots.values() if s.proc is not None and s.proc.alive]

    def busy(self) -> int:
        return sum(1 for s in self.slots.values() if s.state == "busy")

    def size(self) -> int:
        return sum(1 for s in self.slots.values() if not s.retire)

    def all_idle(self) -> bool:
        return all(s.state == "idle" for s in self.slots.values())

    # ------------------------------------------------------------ processes

    def register(self, proc: PoolProcess, slot: Slot | None) -> None:
        self.stats.spawned += 1
        self.pids_ever.append(proc.pid)
        if proc.alive:
            self.procs.add(proc)
        self.emit("spawned", slot, pid=proc.pid)

    def on_exit(self, proc: PoolProcess) -> None:
        self.procs.discard(proc)
        self.emit("exited", pid=proc.pid, exitcode=proc.exitcode)

    # ------------------------------------------------------------ stopping

    def stop(self, *, force: bool = False) -> None:
        """Stop taking jobs; running ones get `grace` seconds (none with `force`)."""
        if not self._stopping:
            self._stopping = True
            self._halt_at = trio.current_time() + self.options.grace
            self._stop_event.set()
            event(log, "stopping", busy=self.busy(), grace=self.options.grace)
            self.emit("stopping", force=force)
            if self.aux_nursery is not None:
                self.aux_nursery.start_soon(self._halt_timer)
        if force:
            self._halt_at = trio.current_time()
            self._force_event.set()
        for slot in self.slots.values():
            if slot.idle_scope is not None:
                slot.idle_scope.cancel()

    def stop_before_start(self) -> None:
        """Cancelled before anything ran: only the flag, nothing to drain."""
        self._stopping = True
        self._stop_event.set()

    def refused(self, slot: Slot | None, error: Unauthorized) -> None:
        """Stop the run because the daemon refused our token; `run` raises it."""
        slot_id = None if slot is None else slot.id
        event(log, "unauthorized", logging.ERROR, slot=slot_id, reason=error.reason)
        self.emit("unauthorized", slot, reason=error.reason)
        if self.fatal is None:
            self.fatal = error
        self.stop()

    async def _halt_timer(self) -> None:
        with trio.move_on_at(self._halt_at):
            await self._force_event.wait()
        for slot in list(self.slots.values()):
            if slot.job_scope is not None:
                slot.cancel_reason = "halt"
                slot.job_scope.cancel()

    async def sleep_unless_stopping(self, seconds: float) -> bool:
        """Sleep `seconds`, less if the run stops meanwhile; True when stopping."""
        with trio.move_on_after(seconds):
            await self._stop_event.wait()
        return self._stopping
