"""The supervisor: slots of (pool process, slave connection), kept honest.

Rules the code below keeps (each one is a bug of EventMQ or myjobs, fixed):

* **Credit = idle processes.**  A slot's connection is joined only while its
  process is alive, free and not due for retirement.  Every answer (respond or
  fail) re-offers the slot, so a slot answers only once its process can take
  the next job: after a crash or a timeout the replacement is started *before*
  the failure is reported; a process due for recycling gets its successor
  spawned while it runs its last job, so recycling costs no capacity.
* **One job per process; the connection is held while it runs.**  Closing it
  would make the daemon requeue the job.
* **Outcomes, always through the slave protocol.**  A result is ``respond``;
  an exception, an unencodable result, a timeout and a crash are ``fail``
  frames (ERROR, ERROR, TIMEOUT, CRASH); a job killed because the runner is
  stopping is HALTED.  A job whose connection was lost is killed and never
  reported: the daemon has already requeued it.
* **Leaving without losing.**  A slot that stops taking jobs (shutdown,
  scale-down) re-joins a type nobody uses before it closes, so a job already
  on its way is put back by the daemon without counting as a loss.
* **A refused token is final.**  Every connection (the start-up probe, each
  slot's link, the master connection for scaling and burst) uses the same
  TLS context and token.  Reconnecting cannot fix a token the daemon refuses,
  so a refusal stops the runner (running jobs get `grace`) and `run` raises
  `Unauthorized`, instead of retrying forever.
* **Kill for real.**  Timeouts SIGTERM the job's process group and SIGKILL it
  after `grace`; shutdown lets running jobs finish until `grace` runs out and
  then SIGKILLs them; no pool process outlives `run`.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from gloomwire import codec
from gloomwire.framing import DEFAULT_MAX_FRAME, FrameDecoder, FrameTooLarge, encode_frame

from .._security import client_ssl_context, resolve_token
from .._trio_connection import connect
from ..errors import GloomError, TransportError, Unauthorized
from . import scaling
from .handler import HandlerError, HandlerSpec, split_path
from .link import LinkLost, SlaveLink, open_link
from .pool import Exited, PoolProcess, ProcessFactory, SpawnFailed

__all__ = ["Runner", "RunnerStats", "WorkerEvent", "WorkerOptions"]

log = logging.getLogger("gloom.worker")

#: Seconds a leaving slot waits for the daemon to confirm its parking join.
LEAVE_TIMEOUT = 5.0
#: Seconds an idle process gets to exit by itself when retired.
RETIRE_TIMEOUT = 5.0
#: Burst mode re-reads the daemon's stats this often while another runner's
#: jobs of our type are still running (our own state changes wake it at once).
BURST_POLL = 0.2
#: How many events `Runner.events` keeps.
EVENT_LOG = 10_000


@dataclass
class WorkerOptions:
    """The runner's knobs; see `gloom.worker.run` for what each one means."""

    type: Any
    handler: str
    host: str = "127.0.0.1"
    slave_port: int = 9999
    master_port: int = 9998
    concurrency: int | None = None
    min: int | None = None
    max: int | None = None
    timeout: float = 300.0
    grace: float = 10.0
    max_jobs_per_process: int = 1000
    import_path: tuple[str, ...] = ()
    class_args: tuple[Any, ...] = ()
    class_kwargs: dict[str, Any] | None = None
    burst: bool = False
    heartbeat: float = 5.0
    liveness: int = 3
    reconnect_delay: float = 1.0
    max_reconnect_delay: float = 30.0
    scale_interval: float = 1.0
    idle_grace: float = 10.0
    crash_backoff: float = 0.5
    max_crash_backoff: float = 30.0
    connect_timeout: float = 10.0
    handle_signals: bool = False
    #: Security, as for `gloom.open_master`: `token`, else `token_file`'s first
    #: line, else $GLOOMD_TOKEN; `ssl_context`, else `tls`/`tls_ca`.  Resolved
    #: once here, so a bad token file fails before anything starts, and every
    #: connection of the run presents the same credentials.
    token: str | None = field(default=None, repr=False)
    token_file: str | os.PathLike[str] | None = None
    ssl_context: ssl.SSLContext | None = None
    tls: bool = False
    tls_ca: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        self.token = resolve_token(self.token, self.token_file)
        self.ssl_context = client_ssl_context(self.ssl_context, tls=self.tls, tls_ca=self.tls_ca)
        split_path(self.handler)  # a malformed path is a HandlerNotFound right away
        self.import_path = tuple(os.path.abspath(p) for p in self.import_path)
        self.class_args = tuple(self.class_args)
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.scaling:
            low, high = self.bounds
            if low < 1 or high < low:
                raise ValueError(f"need 1 <= min <= max, got min={low} max={high}")
        for name in ("timeout", "grace", "heartbeat", "scale_interval", "idle_grace"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_jobs_per_process < 1:
            raise ValueError("max_jobs_per_process must be at least 1")
        if self.liveness < 1:
            raise ValueError("liveness must be at least 1")

    @property
    def scaling(self) -> bool:
        return self.min is not None or self.max is not None

    @property
    def bounds(self) -> tuple[int, int]:
        fixed = self.concurrency or os.cpu_count() or 1
        if not self.scaling:
            return fixed, fixed
        low = 1 if self.min is None else self.min
        high = max(fixed, low) if self.max is None else self.max
        return low, high

    def spec(self) -> HandlerSpec:
        return HandlerSpec(self.handler, self.import_path, self.class_args, dict(self.class_kwargs or {}))


@dataclass
class RunnerStats:
    """Counters of one run.  `credits` is every job the runner offered to take:
    one per join plus one per answer, so at rest it equals answers + slots."""

    jobs_started: int = 0
    succeeded: int = 0
    errors: int = 0
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


class Runner:
    """Runs one worker pool until stopped.  Use `gloom.worker.serve` / `run`."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.stats = RunnerStats()
        #: The latest events (bounded: a long-running worker must not grow).
        self.events: deque[WorkerEvent] = deque(maxlen=EVENT_LOG)
        self.slots: dict[int, Slot] = {}
        #: Every pool process pid this runner started (for orphan checks).
        self.pids_ever: list[int] = []
        self._procs: set[PoolProcess] = set()  # alive, whatever slot (if any) holds them
        self._type_key = codec.canonical(options.type)
        self._changed = trio.Event()
        self._stop_event = trio.Event()
        self._force_event = trio.Event()
        self._stopping = False
        self._halt_at = math.inf
        self._next_slot = 0
        self._factory: ProcessFactory | None = None
        self._slot_nursery: trio.Nursery | None = None
        self._aux_nursery: trio.Nursery | None = None
        #: An error that ended the run from inside (a refused token): raised by `run`.
        self.fatal: BaseException | None = None

    # ------------------------------------------------------------ observing

    def _emit(self, kind: str, slot: Slot | None = None, pid: int | None = None, **detail: Any) -> None:
        if pid is None and slot is not None and slot.proc is not None:
            pid = slot.proc.pid
        self.events.append(WorkerEvent(trio.current_time(), kind, None if slot is None else slot.id, pid, detail))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("event=%s slot=%s pid=%s %s", kind, None if slot is None else slot.id, pid, detail)
        self._changed.set()
        self._changed = trio.Event()

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

    # ------------------------------------------------------------ stopping

    def stop(self, *, force: bool = False) -> None:
        """Stop taking jobs; running ones get `grace` seconds (none with `force`)."""
        if not self._stopping:
            self._stopping = True
            self._halt_at = trio.current_time() + self.options.grace
            self._stop_event.set()
            log.info("event=stopping busy=%d grace=%s", self.busy(), self.options.grace)
            self._emit("stopping", force=force)
            if self._aux_nursery is not None:
                self._aux_nursery.start_soon(self._halt_timer)
        if force:
            self._halt_at = trio.current_time()
            self._force_event.set()
        for slot in self.slots.values():
            if slot.idle_scope is not None:
                slot.idle_scope.cancel()

    async def _halt_timer(self) -> None:
        with trio.move_on_at(self._halt_at):
            await self._force_event.wait()
        for slot in list(self.slots.values()):
            if slot.job_scope is not None:
                slot.cancel_reason = "halt"
                slot.job_scope.cancel()

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._stop_event.wait()

    # ------------------------------------------------------------ main

    async def run(self, *, task_status: trio.TaskStatus[Runner] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until stopped (`stop`, a signal, burst end, or a trio cancel).

        A cancel from outside is treated like SIGTERM: the pool is drained
        under a shield (bounded by `grace` plus the kill), then the cancel
        goes on.
        """
        error: BaseException | None = None
        async with trio.open_nursery() as guard:
            guard.start_soon(self._stop_on_cancel)
            try:
                with trio.CancelScope(shield=True):
                    await self._main(task_status)
            except BaseException as exc:
                error = _unwrap(exc)
            guard.cancel_scope.cancel()
        if error is None:
            error = self.fatal
        if error is not None:
            try:
                raise error
            finally:
                error = None

    async def _stop_on_cancel(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            if not self._stopping and self._aux_nursery is not None:
                self.stop()
            elif self._aux_nursery is None:
                self._stopping = True
                self._stop_event.set()

    async def _main(self, task_status: trio.TaskStatus[Runner]) -> None:
        opts = self.options
        async with trio.open_nursery() as proc_nursery:
            self._factory = ProcessFactory(opts.spec(), proc_nursery, on_exit=self._on_exit)
            try:
                await self._start(task_status)
            finally:
                # Normally none is left; this catches one caught mid-way by a
                # cancel (e.g. a successor that finished starting as we stopped).
                with trio.CancelScope(shield=True):
                    for proc in list(self._procs):
                        await proc.kill()
                proc_nursery.cancel_scope.cancel()

    async def _start(self, task_status: trio.TaskStatus[Runner]) -> None:
        opts = self.options
        low, _ = opts.bounds
        # The handler first: a path that does not resolve is a usage error
        # whether or not the daemon is up.
        procs = await self._spawn_initial(low)
        try:
            await self._probe()
            if opts.scaling or opts.burst:
                # Fail fast on a master port that is wrong or refuses us; once
                # running, scaling and burst ride out a daemon restart.
                async with _open_master(opts) as master:
                    await master.stats()
            async with trio.open_nursery() as aux:
                self._aux_nursery = aux
                if opts.handle_signals:
                    aux.start_soon(self._signals)
                async with trio.open_nursery() as slot_nursery:
                    self._slot_nursery = slot_nursery
                    for proc in procs:
                        self._add_slot(proc)
                    procs = []
                    await self.wait_for(
                        lambda: self._stopping or all(s.state == "idle" for s in self.slots.values())
                    )
                    log.info("event=ready type=%s slots=%d", _short(opts.type), len(self.slots))
                    self._emit("ready", slots=len(self.slots))
                    task_status.started(self)
                    if opts.scaling:
                        aux.start_soon(self._scaler)
                    if opts.burst:
                        aux.start_soon(self._burst)
                aux.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for proc in procs:
                    await proc.kill()
        log.info(
            "event=stopped jobs=%d ok=%d error=%d timeout=%d crash=%d halted=%d",
            self.stats.jobs_started,
            self.stats.succeeded,
            self.stats.errors,
            self.stats.timeouts,
            self.stats.crashes,
            self.stats.halted,
        )

    async def _probe(self) -> None:
        """Fail fast when the daemon is not there, or will not have us, at
        startup (later losses reconnect).

        One full exchange, not just a TCP connect: a plaintext client on a
        TLS-only port, or one without a token on a daemon that wants one, gets
        its connection accepted and then closed, which only a reply can tell.
        ``ping`` is answered on the slave port by gloomd (an error frame from
        older daemons is an answer too).
        """
        opts = self.options
        where = f"{opts.host}:{opts.slave_port}"
        # A plaintext hello on a TLS-only port is closed (or reset) unanswered.
        hint = "" if opts.ssl_context is not None else " (is it TLS-only? try --tls)"
        try:
            stream = await connect(
                opts.host, opts.slave_port, opts.connect_timeout, ssl_context=opts.ssl_context, token=opts.token
            )
        except TransportError as exc:
            # "cannot reach ..." is TCP itself failing; anything later (a close
            # during auth) is what a TLS-only port does to plaintext.
            if not hint or str(exc).startswith("cannot reach"):
                raise
            raise TransportError(f"{exc}{hint}") from None
        try:
            with trio.move_on_after(opts.connect_timeout) as scope:
                await stream.send_all(encode_frame({"action": "ping"}))
                reply = await _read_frame(stream)
            if scope.cancelled_caught:
                raise TransportError(f"gloomd at {where} did not answer a ping in {opts.connect_timeout:g} s")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise TransportError(f"gloomd at {where} dropped the start-up check ({exc}){hint}") from None
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
        if reply is None:
            raise TransportError(f"gloomd at {where} closed the connection without a reply{hint}")
        if isinstance(reply, dict) and reply.get("error") == "unauthorized":
            raise Unauthorized(reply.get("reason", "auth"))

    async def _spawn_initial(self, count: int) -> list[PoolProcess]:
        """Start the first process alone (it proves the handler resolves, so a
        bad path fails once, not N times), then the rest side by side."""
        assert self._factory is not None
        first = await self._factory.spawn()
        self._register(first, None)
        procs = [first]
        errors: list[BaseException] = []

        async def one() -> None:
            assert self._factory is not None
            try:
                proc = await self._factory.spawn()
            except (HandlerError, SpawnFailed) as exc:
                errors.append(exc)
                return
            self._register(proc, None)
            procs.append(proc)

        async with trio.open_nursery() as nursery:
            for _ in range(count - 1):
                nursery.start_soon(one)
        if errors:
            for proc in procs:
                await proc.kill()
            raise errors[0]
        return procs

    def _register(self, proc: PoolProcess, slot: Slot | None) -> None:
        self.stats.spawned += 1
        self.pids_ever.append(proc.pid)
        if proc.alive:
            self._procs.add(proc)
        self._emit("spawned", slot, pid=proc.pid)

    def _on_exit(self, proc: PoolProcess) -> None:
        self._procs.discard(proc)
        self._emit("exited", pid=proc.pid, exitcode=proc.exitcode)

    def _add_slot(self, proc: PoolProcess | None) -> Slot:
        assert self._slot_nursery is not None
        slot = Slot(self._next_slot, proc)
        self._next_slot += 1
        self.slots[slot.id] = slot
        self._slot_nursery.start_soon(self._slot_task, slot)
        return slot

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            count = 0
            async for signum in signals:
                count += 1
                log.info("event=signal signal=%s count=%d", signal.Signals(signum).name, count)
                self.stop(force=count > 1)

    # ------------------------------------------------------------ one slot

    async def _slot_task(self, slot: Slot) -> None:
        opts = self.options
        delay = opts.reconnect_delay
        try:
            if slot.proc is None and not await self._spawn_for(slot):
                return
            while not (self._stopping or slot.retire):
                if slot.proc is None or not slot.proc.alive:
                    # Its job was abandoned (link lost) and the process killed:
                    # join again only with a live process behind the slot.
                    await self._ready_process(slot)
                    if slot.proc is None:
                        break
                slot.state = "connecting"
                ended = "lost"
                try:
                    async with open_link(
                        opts.host,
                        opts.slave_port,
                        heartbeat=opts.heartbeat,
                        liveness=opts.liveness,
                        connect_timeout=opts.connect_timeout,
                        ssl_context=opts.ssl_context,
                        token=opts.token,
                    ) as link:
                        slot.link = link
                        await link.join(opts.type)
                        self.stats.joins += 1
                        delay = opts.reconnect_delay
                        ended = await self._serve_link(slot, link)
                        if ended == "leave":
                            slot.state = "leaving"
                            with trio.move_on_after(LEAVE_TIMEOUT):
                                returned = await link.leave()
                                self.stats.returned += returned
                    reason = link.lost
                except Unauthorized as exc:
                    # The daemon's token changed under us: no retry can help.
                    slot.link = None
                    self._refused(slot, exc)
                    break
                except (OSError, trio.TooSlowError, LinkLost, GloomError) as exc:
                    reason = str(exc)
                slot.link = None
                if ended == "leave" or self._stopping or slot.retire:
                    break
                self.stats.reconnects += 1
                log.warning("event=link_lost slot=%d reason=%s retry_in=%.2f", slot.id, reason, delay)
                self._emit("link_lost", slot, reason=reason)
                slot.state = "reconnecting"
                await self._sleep_unless_stopping(delay)
                delay = min(delay * 2, opts.max_reconnect_delay)
        finally:
            with trio.CancelScope(shield=True):
                slot.state = "closing"
                for proc in (slot.proc, slot.successor):
                    if proc is not None:
                        await proc.retire(RETIRE_TIMEOUT)
                slot.proc = slot.successor = None
                del self.slots[slot.id]
                self._emit("slot_closed", slot)

    def _refused(self, slot: Slot | None, error: Unauthorized) -> None:
        """Stop the run because the daemon refused our token; `run` raises it."""
        log.error("event=unauthorized slot=%s reason=%s", None if slot is None else slot.id, error.reason)
        self._emit("unauthorized", slot, reason=error.reason)
        if self.fatal is None:
            self.fatal = error
        self.stop()

    async def _serve_link(self, slot: Slot, link: SlaveLink) -> str:
        """Take and run jobs until told to leave ("leave") or the link dies ("lost")."""
        while True:
            if self._stopping or slot.retire:
                return "leave"
            slot.state = "idle"
            slot.idle_since = trio.current_time()
            self._emit("idle", slot)
            proc = slot.proc
            frame: dict[str, Any] | None = None
            lost = False
            with trio.CancelScope() as scope:
                slot.idle_scope = scope
                try:
                    async with trio.open_nursery() as nursery:
                        if proc is not None:
                            nursery.start_soon(_cancel_when_dead, proc, scope)
                        try:
                            frame = await link.next_job()
                        except LinkLost:
                            lost = True
                        nursery.cancel_scope.cancel()
                finally:
                    slot.idle_scope = None
            if lost:
                return "lost"
            if frame is None:
                if proc is None or not proc.alive:
                    # Died while idle (OOM killer, kill -9): no job to report,
                    # but the slot must not stay joined without a process.
                    slot.crashes += 1
                    self._emit("died_idle", slot, pid=None if proc is None else proc.pid)
                    if not self._stopping:
                        await self._ready_process(slot)
                continue
            answer = await self._run_job(slot, link, frame)
            if answer is None:
                return "lost"
            if not self._stopping:
                await self._ready_process(slot)
            try:
                await link.request(answer)
            except LinkLost:
                return "lost"
            self.stats.answers += 1

    # ------------------------------------------------------------ processes

    async def _spawn_for(self, slot: Slot) -> bool:
        """Give the slot a fresh process, backing off while it crash-loops."""
        opts = self.options
        assert self._factory is not None
        while True:
            if slot.crashes > 1:
                backoff = min(opts.crash_backoff * 2 ** (slot.crashes - 2), opts.max_crash_backoff)
                self._emit("backoff", slot, delay=backoff)
                log.warning("event=crash_loop slot=%d crashes=%d backoff=%.2f", slot.id, slot.crashes, backoff)
                await self._sleep_unless_stopping(backoff)
            if self._stopping:
                return False
            slot.state = "starting"
            try:
                proc = await self._factory.spawn()
            except (HandlerError, SpawnFailed) as exc:
                slot.crashes += 1
                log.error("event=spawn_failed slot=%d error=%s", slot.id, exc)
                continue
            slot.proc = proc
            self._register(proc, slot)
            return True

    async def _ready_process(self, slot: Slot) -> None:
        """Make sure the slot's process can take the next job before we answer."""
        proc = slot.proc
        if proc is not None and proc.alive and proc.jobs_started < self.options.max_jobs_per_process:
            return
        if proc is not None and proc.alive:
            # Recycled after its quota: let it exit in the background.
            self._emit("recycled", slot, jobs=proc.jobs_started)
            assert self._aux_nursery is not None
            self._aux_nursery.start_soon(proc.retire, RETIRE_TIMEOUT)
        slot.proc = None
        if slot.successor_ready is not None:
            await slot.successor_ready.wait()
            slot.successor_ready = None
            successor, slot.successor = slot.successor, None
            if successor is not None and successor.alive:
                slot.proc = successor
                return
        self.stats.spawn_waits += 1
        await self._spawn_for(slot)

    async def _prespawn(self, slot: Slot, ready: trio.Event) -> None:
        assert self._factory is not None
        try:
            proc = await self._factory.spawn()
        except (HandlerError, SpawnFailed) as exc:
            log.error("event=spawn_failed slot=%d error=%s", slot.id, exc)
        else:
            self._register(proc, slot)
            if self._stopping or slot.retire:
                with trio.CancelScope(shield=True):
                    await proc.retire(RETIRE_TIMEOUT)
            else:
                slot.successor = proc
        finally:
            ready.set()

    # ------------------------------------------------------------ one job

    async def _run_job(self, slot: Slot, link: SlaveLink, frame: dict[str, Any]) -> dict[str, Any] | None:
        """Run `frame` on the slot's process; the frame to answer with, or None
        when the link was lost (the job is killed and not reported)."""
        opts = self.options
        proc = slot.proc
        assert proc is not None
        proc.jobs_started += 1
        if proc.jobs_started >= opts.max_jobs_per_process and slot.successor_ready is None:
            slot.successor_ready = trio.Event()
            assert self._aux_nursery is not None
            self._aux_nursery.start_soon(self._prespawn, slot, slot.successor_ready)
        slot.state = "busy"
        slot.cancel_reason = None
        self.stats.jobs_started += 1
        self.stats.max_busy = max(self.stats.max_busy, self.busy())
        limit = _effective_timeout(opts.timeout, frame.get("timeout"))
        job_id = frame.get("id")
        self._emit("job_started", slot, id=job_id, attempt=frame.get("attempt"))
        started = trio.current_time()
        await proc.send(
            {
                "op": "job",
                "id": job_id,
                "type": frame.get("type"),
                "body": frame.get("body"),
                "attempt": frame.get("attempt"),
                "timeout": limit,
            }
        )
        outcome: dict[str, Any] | Exited | None = None
        with trio.CancelScope() as scope:
            slot.job_scope = scope
            if limit is not None:
                scope.deadline = started + limit
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_link, link, slot, scope)
                outcome = await self._job_outcome(proc, link)
                nursery.cancel_scope.cancel()
        slot.job_scope = None
        elapsed = trio.current_time() - started
        pid = proc.pid

        if isinstance(outcome, dict):
            ok = outcome.get("action") == "respond"
            if ok:
                self.stats.succeeded += 1
            else:
                self.stats.errors += 1
            slot.crashes = 0
            self._emit("job_finished", slot, id=job_id, outcome="ok" if ok else "error", seconds=elapsed)
            return outcome

        if isinstance(outcome, Exited):
            slot.crashes += 1
            self.stats.crashes += 1
            message = f"pool process {pid} {outcome.text()} while running job {job_id!r}"
            log.warning("event=crash id=%r pid=%d %s", job_id, pid, outcome.describe())
            self._emit("job_finished", slot, id=job_id, outcome="crash", seconds=elapsed, **outcome.describe())
            reason = {"type": "WorkerCrashed", "message": message, "pid": pid, **outcome.describe()}
            return {"action": "fail", "error": "CRASH", "reason": reason}

        why = slot.cancel_reason or "timeout"
        if why == "halt":
            await proc.kill()
            self.stats.halted += 1
            ended = Exited(proc.exitcode if proc.exitcode is not None else -signal.SIGKILL)
            self._emit("job_finished", slot, id=job_id, outcome="halted", seconds=elapsed)
            message = f"the worker stopped; job {job_id!r} was still running after the {opts.grace:g} s grace period and was killed"
            reason = {"type": "WorkerShutdown", "message": message, "pid": pid, **ended.describe()}
            return {"action": "fail", "error": "HALTED", "reason": reason}

        await proc.terminate(opts.grace)
        ended = Exited(proc.exitcode if proc.exitcode is not None else -signal.SIGKILL)
        if why == "lost":
            self.stats.abandoned += 1
            log.warning("event=abandoned id=%r pid=%d reason=connection_lost", job_id, pid)
            self._emit("job_finished", slot, id=job_id, outcome="abandoned", seconds=elapsed)
            return None
        self.stats.timeouts += 1
        log.warning("event=timeout id=%r pid=%d limit=%s", job_id, pid, limit)
        self._emit("job_finished", slot, id=job_id, outcome="timeout", seconds=elapsed, **ended.describe())
        message = (
            f"job {job_id!r} ran past its {limit:g} s timeout; process group {pid} was sent SIGTERM"
            f" and {ended.text()}"
        )
        reason = {"type": "JobTimeout", "message": message, "pid": pid, **ended.describe()}
        return {"action": "fail", "error": "TIMEOUT", "reason": reason}

    async def _job_outcome(self, proc: PoolProcess, link: SlaveLink) -> dict[str, Any] | Exited:
        while True:
            message = await proc.receive()
            if isinstance(message, Exited):
                return message
            op = message.get("op")
            if op == "progress":
                link.send_nowait({"action": "progress", "body": message.get("body")})
            elif op == "done":
                frame: dict[str, Any] = message["frame"]
                return frame

    async def _watch_link(self, link: SlaveLink, slot: Slot, scope: trio.CancelScope) -> None:
        await link.wait_lost()
        slot.cancel_reason = "lost"
        scope.cancel()

    # ------------------------------------------------------------ scaling, burst

    def _queue_entry(self, stats: dict[str, Any]) -> dict[str, Any] | None:
        for entry in stats.get("types", []):
            if codec.canonical(entry.get("type")) == self._type_key:
                return dict(entry)
        return None

    async def _with_daemon(self, body: Callable[[Any], Awaitable[None]]) -> None:
        """Run `body(master)` over a master connection until it returns or the
        runner stops, connecting again after the daemon is lost.

        Scaling and burst mode thereby outlive a daemon restart the way the slot
        links do.  Each connection is opened and closed in this one frame, so
        its reader task nests inside the caller's cancel scopes as trio needs.
        A refused token is not a lost daemon and still raises.
        """
        while not self._stopping:
            try:
                async with _open_master(self.options) as master:
                    await body(master)
                    return
            except TransportError as exc:
                log.info("event=stats_unavailable error=%s", exc)
                await self._sleep_unless_stopping(self.options.reconnect_delay)

    async def _scaler(self) -> None:
        await self._with_daemon(self._scale_loop)

    async def _scale_loop(self, master: Any) -> None:
        while not self._stopping:
            await self._sleep_unless_stopping(self.options.scale_interval)
            if self.stopping:  # the property: mypy would keep the loop's narrowing of _stopping
                return
            self._scale(await master.stats())

    def _scale(self, stats: dict[str, Any]) -> None:
        """One scaling decision from one reading of the daemon's stats."""
        opts = self.options
        low, high = opts.bounds
        entry = self._queue_entry(stats)
        queued = entry["queued"] if entry else 0
        idle = [(s.id, s.idle_since) for s in self.slots.values() if s.state == "idle" and not s.retire]
        decision = scaling.plan(
            size=self.size(),
            queued=queued,
            idle=idle,
            now=trio.current_time(),
            minimum=low,
            maximum=high,
            idle_grace=opts.idle_grace,
        )
        if decision.grow:
            log.info("event=scale_up by=%d queued=%d size=%d", decision.grow, queued, self.size())
            self._emit("scale_up", by=decision.grow, queued=queued)
            for _ in range(decision.grow):
                self._add_slot(None)
        elif decision.shrink is not None:
            slot = self.slots[decision.shrink]
            log.info("event=scale_down slot=%d size=%d", slot.id, self.size())
            slot.retire = True
            self._emit("scale_down", slot)
            if slot.idle_scope is not None:
                slot.idle_scope.cancel()

    async def _burst(self) -> None:
        await self._with_daemon(self._burst_loop)

    async def _burst_loop(self, master: Any) -> None:
        """Stop once nothing of our type is queued or running anywhere.

        While the daemon cannot be reached that cannot be known, so the runner
        keeps serving until `_with_daemon` has it back.
        """
        while not self._stopping:
            await self.wait_for(
                lambda: self._stopping or all(s.state == "idle" for s in self.slots.values())
            )
            if self.stopping:  # the property: mypy would keep the loop's narrowing of _stopping
                return
            changed = self._changed
            entry = self._queue_entry(await master.stats())
            if entry is None or (entry["queued"] == 0 and entry["running"] == 0):
                log.info("event=burst_done jobs=%d", self.stats.jobs_started)
                self.stop()
                return
            with trio.move_on_after(BURST_POLL):
                await changed.wait()


def _unwrap(exc: BaseException) -> BaseException:
    """The one real error inside nested single-exception groups (startup errors
    such as `HandlerNotFound` cross a few nurseries on their way out)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _effective_timeout(default: float, requested: Any) -> float | None:
    """The runner's timeout (0 = none), or the job's own when that is smaller."""
    limits = [t for t in (default,) if t and t > 0]
    if isinstance(requested, (int, float)) and not isinstance(requested, bool) and requested > 0:
        limits.append(float(requested))
    return min(limits) if limits else None


async def _cancel_when_dead(proc: PoolProcess, scope: trio.CancelScope) -> None:
    await proc.exited.wait()
    scope.cancel()


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _open_master(opts: WorkerOptions) -> Any:
    from .. import open_master

    return open_master(
        opts.host,
        opts.master_port,
        connect_timeout=opts.connect_timeout,
        token=opts.token,
        ssl_context=opts.ssl_context,
    )


async def _read_frame(stream: trio.abc.Stream) -> Any:
    """One decoded frame from `stream`, or None if it closed first."""
    decoder = FrameDecoder(DEFAULT_MAX_FRAME)
    while True:
        data = await stream.receive_some(64 * 1024)
        if not data:
            return None
        try:
            payloads = decoder.feed(data)
        except FrameTooLarge as exc:
            raise TransportError(f"gloomd's reply is not a frame: {exc}") from None
        if payloads:
            try:
                return codec.loads(payloads[0])
            except codec.DecodeError as exc:
                raise TransportError(f"gloomd's reply is not JSON: {exc}") from None
