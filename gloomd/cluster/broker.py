"""`ClusterBroker`: the embedded broker's interface over the cluster's engine.

With ``--cluster`` the server is built over this instead of `gloomd.broker.Broker`:
ingest, the reactor, the flush, `gloomd.local` and the services call the same
methods and read the same fields (`dirty`, outboxes, `caps`, `masters`...),
and nothing above the broker changes.  The embedded broker pays nothing for
it: this class overrides, it adds no test to the embedded path.

What it keeps (docs/cluster.md, "Phase 2"): numbers for its peers (Redis
knows them as `DAEMON:N`), each slave's join epoch, and whether a slave holds
a job (`SlavePeer.job`, which ingest's state check reads, set to `HOLDING`).
Nothing else: Redis is the state.

How a request is answered.  `master_message` and `slave_message` are called
inside a reactor batch and must not await, so they queue a step and put a
`Slot` in the peer's outbox, held (`gloomd.holds`: the same mechanism as the
journal's acks).  Everything the peer is sent after it (an `invalid_json`
error ingest answers at once, a job from the inbox) waits behind it.  One
task, `run`, takes everything queued, seals the holds and closes a ticket,
sends the steps as one pipeline (`ClusterEngine.call_many`), fills each
slot with its answer's frames, then releases the ticket: each peer's frames
leave in request order.  While a pipeline is in flight the next batch
gathers, so under load one round trip carries a whole reactor batch.

Failures: Redis unreachable, or the answer lost, is `backend_unavailable`
for a master's step (reason: the id, or the action); a slave's step then
closes that slave (what it held is requeued with one loss once Redis is
back, `slave_gone`).  `Fenced` (this daemon was reaped, or Redis lost its
data) closes every connection: their state is gone.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

import trio

from gloomwire import codec
from gloomwire.framing import encode_frame
from gloomwire.logformat import event
from gloomwire.vocabulary import error, jobs_page, kicked
from gloomwire.vocabulary import stats as stats_frame

from .. import messages as m
from ..broker import Broker, BrokerLimits
from ..counters import TypeTally
from ..durable import Durable
from ..holds import Holds
from ..state import DICT_FRAME_BYTES, Job, MasterPeer, Peer, SlavePeer, TypeQueue
from . import steps
from .engine import KICK_STEP, STEP_LIMIT, ClusterEngine
from .errors import BackendUnavailable, Fenced
from .keys import id_key, type_key
from .settings import ClusterLimits, ClusterSettings
from .steps import Delivery, JobSpec, Step

__all__ = ["HOLDING", "ClusterBroker", "Slot", "cluster_limits"]

log = logging.getLogger("gloomd.cluster")

#: What `SlavePeer.job` holds while a slave holds a cluster job: ingest's
#: state check reads only `is not None`; the job itself lives in Redis.
#: Built through `__init__`: compiled, `Job.__new__(Job)` runs it without arguments.
HOLDING: Final = Job(
    m.Submit("", None, "", 0, None), 0, None, 0.0, TypeQueue(None, "", 0, TypeTally(""))
)
#: `jobs` cursors kept for the next page (`messages` takes a short list of
#: integers; the cluster's cursor is three strings): the oldest go first.
MAX_CURSORS: Final = 10_000

Frame = bytes | dict[str, Any]


class Slot:
    """The place of a step's answer in a peer's outbox: filled with its
    frames when the answer is applied, before the ticket is released."""

    __slots__ = ("frames",)

    def __init__(self) -> None:
        self.frames: list[Frame] = []


class _Item:
    """One queued step: whose, what kind of answer, where the answer goes."""

    __slots__ = ("done", "kind", "limit", "peer", "reason", "slot", "step")

    def __init__(
        self,
        kind: str,
        peer: Peer | None,
        step: Step,
        slot: Slot | None,
        reason: Any = None,
        limit: int | None = None,
    ) -> None:
        self.kind = kind
        self.peer = peer
        self.step = step
        self.slot = slot
        #: The `reason` of this step's backend_unavailable (an id, an action).
        self.reason = reason
        self.limit = limit
        #: Jobs kicked so far by the earlier chunks of a kick by type.
        self.done = 0


def cluster_limits(limits: BrokerLimits) -> ClusterLimits:
    """The cluster-wide rules' knobs from the daemon's flags."""
    return ClusterLimits(
        max_queued=limits.max_queued,
        max_retries=limits.max_retries,
        result_ttl=limits.result_ttl,
        max_results=limits.max_results,
        max_dead=limits.max_dead,
        max_stats_types=limits.max_stats_types,
    )


class ClusterBroker(Broker):
    """The broker a server runs in cluster mode; see the module docstring."""

    def __init__(
        self,
        settings: ClusterSettings,
        limits: BrokerLimits | None = None,
        clock: Callable[[], float] | None = None,
        max_outbox: int = 64 * 1024 * 1024,
    ) -> None:
        super().__init__(limits, clock, max_outbox)
        self.holds = Holds()
        # `gloomd.local` reads held answers through `journal.holds`: an
        # in-process master's answer waits for its step as for a commit.
        self.journal = Durable(self.holds)
        self.engine = ClusterEngine(
            settings,
            cluster_limits(self.limits),
            on_inbox=self.on_inbox,
            on_fenced=self.on_fenced,
            counts=self.counts,
        )
        self._numbers: dict[Peer, int] = {}
        self._by_number: dict[int, Peer] = {}
        self._epochs: dict[SlavePeer, int] = {}
        self._serial = itertools.count(1)
        self._queue: list[_Item] = []
        #: Steps of peers that left, to send once Redis is back.
        self._later: list[_Item] = []
        self._wake = trio.Event()
        self._cursors: OrderedDict[int, list[str]] = OrderedDict()
        self._cursor_serial = itertools.count(1)
        #: The server's side, given by `run`: write released frames, flush.
        self._write: Callable[[Peer, list[Frame]], None] = _no_write
        self._flush: Callable[[], None] = _nothing

    # ------------------------------------------------------------ peers

    def counts(self) -> tuple[int, int]:
        """This daemon's (masters, slaves), for the cluster's stats."""
        return len(self.masters), len(self.slaves)

    def connect_master(
        self, name: str, transport: Any = None, *, internal: bool = False
    ) -> MasterPeer:
        peer = super().connect_master(name, transport, internal=internal)
        self._number(peer)
        return peer

    def connect_slave(self, name: str, transport: Any = None) -> SlavePeer:
        peer = super().connect_slave(name, transport)
        self._number(peer)
        self._epochs[peer] = 0
        return peer

    def _number(self, peer: Peer) -> None:
        number = next(self._serial)
        self._numbers[peer] = number
        self._by_number[number] = peer

    def disconnect(self, peer: Peer) -> None:
        """The peer's connection is gone: Redis hears it (Gloom's rule for a
        master's jobs; one loss for what a slave held)."""
        self.dirty.pop(peer, None)
        peer.outbox = []
        peer.pending = 0
        number = self._numbers.pop(peer, None)
        if number is None:
            return
        del self._by_number[number]
        if isinstance(peer, SlavePeer):
            self.slaves.discard(peer)
            self._epochs.pop(peer, None)
            peer.job = None
            self._queue_item(_Item("gone", None, Step(steps.fn("slave_gone"), (number,)), None))
        elif isinstance(peer, MasterPeer):
            self.masters.discard(peer)
            self.internal.discard(peer)
            self._queue_item(_Item("more", None, Step(steps.fn("master_gone"), (number,)), None))

    # ------------------------------------------------------------ requests in

    def slave_message(self, slave: SlavePeer, msg: m.SlaveRequest) -> None:
        number = self._numbers[slave]
        cls = type(msg)
        if cls is m.Respond:
            slave.job = None
            body = codec.dumps(msg.body)  # type: ignore[union-attr]
            self._ask(slave, "reply", Step(steps.fn("respond"), (number, body)))
        elif cls is m.Fail:
            slave.job = None
            category, reason = msg.category, codec.dumps(msg.reason)  # type: ignore[union-attr]
            self._ask(slave, "reply", Step(steps.fn("fail"), (number, category, reason)))
        elif cls is m.Progress:
            body = codec.dumps(msg.body)  # type: ignore[union-attr]
            self._queue_item(_Item("none", None, Step(steps.fn("progress"), (number, body)), None))
        elif cls is m.Join:
            slave.job = None
            epoch = self._epochs[slave] + 1
            self._epochs[slave] = epoch
            join: m.Join = msg  # type: ignore[assignment]
            tk = type_key(join.key)
            args = (number, tk, codec.dumps(join.type), epoch)
            self._ask(slave, "reply", Step(steps.fn("join"), args))
        else:
            raise TypeError(f"not a slave request: {cls.__name__}")

    def master_message(self, master: MasterPeer, msg: m.MasterRequest) -> None:
        number = self._numbers[master]
        cls = type(msg)
        if cls is m.Submit:
            sub: m.Submit = msg  # type: ignore[assignment]
            spec = JobSpec(
                sub.id,
                sub.type,
                sub.body,
                sub.priority,
                sub.timeout,
                sub.detach,
                sub.after,
                sub.delay or 0.0,
                sub.retries,
                1.0 if sub.backoff is None else sub.backoff,
                sub.unique,
            )
            self._ask(master, "reply", self.engine.submit_step(number, spec), sub.id)
        elif cls is m.Cancel or cls is m.Result or cls is m.Delete:
            name = "cancel" if cls is m.Cancel else "result" if cls is m.Result else "delete"
            job_id = msg.id  # type: ignore[union-attr]
            self._ask(master, "reply", steps.on_id(name, number, job_id), job_id)
        elif cls is m.Kick:
            job_id = msg.id  # type: ignore[union-attr]
            step = Step(steps.fn("kick"), (id_key(job_id), codec.dumps(job_id)))
            self._ask(master, "reply", step, job_id)
        elif cls is m.KickType:
            kick: m.KickType = msg  # type: ignore[assignment]
            want = KICK_STEP if kick.limit is None else min(KICK_STEP, kick.limit)
            step = Step(steps.fn("kick_type"), (type_key(kick.key), want))
            self._ask(master, "kick", step, "kick", kick.limit)
        elif cls is m.Pause:
            pause: m.Pause = msg  # type: ignore[assignment]
            step = Step(steps.fn("pause"), (type_key(pause.key), codec.dumps(pause.type)))
            self._ask(master, "reply", step, "pause")
        elif cls is m.Resume:
            resume: m.Resume = msg  # type: ignore[assignment]
            step = Step(steps.fn("resume"), (type_key(resume.key), STEP_LIMIT))
            self._ask(master, "more", step, "resume")
        elif cls is m.Stats:
            self._ask(master, "stats", self._stats_step(msg), "stats")  # type: ignore[arg-type]
        elif cls is m.Jobs:
            self._jobs(master, msg)  # type: ignore[arg-type]
        else:
            raise TypeError(f"not a master request: {cls.__name__}")

    def _stats_step(self, msg: m.Stats) -> Step:
        one = msg.key is not None
        tk = type_key(msg.key) if msg.key is not None else b""
        masters, slaves = self.counts()
        args = (tk, 1 if one else 0, self.limits.max_stats_types, masters, slaves)
        return Step(steps.fn("stats"), args)

    def _jobs(self, master: MasterPeer, msg: m.Jobs) -> None:
        where = ["", "", ""]
        if msg.cursor is not None:
            kept = self._cursors.get(msg.cursor[0]) if len(msg.cursor) == 1 else None
            if kept is None:
                self.send(master, error("invalid_type", "cursor"))
                return
            where = kept
        tk = type_key(msg.key) if msg.key is not None else b""
        code = steps.STATE_CODES[msg.state] if msg.state is not None else ""
        self._ask(master, "jobs", Step(steps.fn("jobs"), (tk, code, msg.limit, *where)), "jobs")

    def _ask(
        self, peer: Peer, kind: str, step: Step, reason: Any = None, limit: int | None = None
    ) -> None:
        """Queue `step`; its answer's place in `peer`'s outbox is held."""
        slot = Slot()
        self.holds.hold(peer, reason)
        peer.outbox.append(slot)  # type: ignore[arg-type]
        peer.pending += DICT_FRAME_BYTES
        self.dirty[peer] = None
        self._queue_item(_Item(kind, peer, step, slot, reason, limit))

    def _queue_item(self, item: _Item) -> None:
        self._queue.append(item)
        self._wake.set()

    # ------------------------------------------------------------ frames in from Redis

    def on_inbox(self, batch: list[Delivery]) -> None:
        """Frames the cluster made for this daemon's peers (results, jobs)."""
        for delivery in batch:
            peer = self._by_number.get(delivery.peer)
            if peer is None:
                continue  # gone: Redis heard it, or will
            if delivery.kind == "job":
                if not isinstance(peer, SlavePeer) or self._epochs.get(peer) != delivery.epoch:
                    continue  # a re-join was sent since: Redis put the job back
                peer.job = HOLDING
            self.send(peer, delivery.frame)
        self._flush()

    def on_fenced(self) -> None:
        """This daemon's record is gone: every connection's state went with it."""
        event(log, "cluster_closing", logging.WARNING, connections=len(self._numbers))
        for peer in list(self._numbers):
            self._close(peer)

    def _close(self, peer: Peer) -> None:
        transport: Any = peer.transport
        if transport is not None:
            transport.abort()

    # ------------------------------------------------------------ the runner

    async def run(
        self,
        write: Callable[[Peer, list[Frame]], None],
        flush: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send what is queued, one pipeline at a time, and answer in order."""
        self._write, self._flush = write, flush
        task_status.started()
        engine = self.engine
        while True:
            if not self._queue:
                self._wake = trio.Event()
                if self._later:
                    # Steps of peers that left wait for Redis: look again soon.
                    with trio.move_on_after(engine.settings.backoff_max):
                        await self._wake.wait()
                else:
                    await self._wake.wait()
            if self._later and engine.up:
                self._queue[:0], self._later = self._later, []
            if not self._queue:
                continue
            # One scheduling round more: the reactor reads what arrived
            # meanwhile, and its steps join this pipeline.
            await trio.lowlevel.checkpoint()
            self.holds.seal()
            ticket = self.holds.close()
            batch, self._queue = self._queue, []
            unfinished = await self._send(batch)
            if unfinished:
                # Steps done in chunks (a kick, a resume, a master's leaving):
                # the next chunk goes with the next pipeline, so other peers'
                # steps run in between; the requester's answer (and all it is
                # sent after it) waits for the last chunk.
                for item in unfinished:
                    if item.peer is not None:
                        self.holds.defer(item.peer, ticket)
                self._queue[:0] = unfinished
            for peer, frames in self.holds.release(ticket, False):
                self._write(peer, _expand(frames))
            self._flush()

    async def _send(self, batch: list[_Item]) -> list[_Item]:
        """Send `batch` as one pipeline and apply the answers; returns the
        items whose step must be called again (the next chunk)."""
        engine = self.engine
        unfinished: list[_Item] = []
        try:
            answers = await engine.call_many([item.step for item in batch])
        except Fenced:
            # Nothing ran; `on_fenced` closes every connection.
            for item in batch:
                self._unavailable(item, later=False)
            return unfinished
        except BackendUnavailable:
            # Not sent, or its answer lost (`BackendUncertain`: the engine
            # withdraws the submits among them once Redis is back).
            for item in batch:
                self._unavailable(item, later=True)
            return unfinished
        except Exception as exc:
            # A bug, or an error Redis answered for the whole pipeline: the
            # batch is answered internal_error, the daemon goes on (issue 18).
            self._internal_error(batch, exc)
            return unfinished
        for item, raw in zip(batch, answers, strict=True):
            try:
                if self._apply(item, raw):
                    unfinished.append(item)
            except Exception as exc:
                self._internal_error([item], exc)
        return unfinished

    def _internal_error(self, items: list[_Item], exc: Exception) -> None:
        event(
            log, "internal_error", logging.ERROR, stage="cluster", steps=len(items),
            error=type(exc).__name__, exc_info=exc,
        )  # fmt: skip
        for item in items:
            if isinstance(item.peer, SlavePeer):
                self._close(item.peer)
            elif item.slot is not None:
                item.slot.frames = [error("internal_error", type(exc).__name__)]

    def _unavailable(self, item: _Item, *, later: bool) -> None:
        peer, slot = item.peer, item.slot
        if peer is None:
            if later and item.kind != "none":
                self._later.append(item)  # a peer's leaving; a progress is moot by then
            return
        if isinstance(peer, SlavePeer):
            # Its step may or may not have run: the connection ends, and
            # Redis hears `slave_gone` once it is back (one loss at most).
            self._close(peer)
        elif slot is not None:
            slot.frames = [error("backend_unavailable", item.reason)]

    def _apply(self, item: _Item, raw: Any) -> bool:
        """Fill the item's slot from its step's answer; True when the step
        must be called again first (its next chunk: see `run`)."""
        kind, slot, peer = item.kind, item.slot, item.peer
        if kind == "reply" or kind == "gone":
            reply = steps.parse_reply(raw)
            for job_id in reply.dropped:
                event(log, "dead_dropped", id=job_id)
            if slot is not None:
                slot.frames = list(reply.frames)
            if reply.code == "job" and isinstance(peer, SlavePeer) and peer in self._numbers:
                peer.job = HOLDING
        elif kind == "more":
            reply = steps.parse_reply(raw)
            if reply.code == "more":
                return True
            if slot is not None:
                slot.frames = list(reply.frames)
        elif kind == "kick":
            got, more = int(raw[1]), int(raw[2])
            item.done += got
            done, limit = item.done, item.limit
            if more and got and (limit is None or done < limit):
                want = KICK_STEP if limit is None else min(KICK_STEP, limit - done)
                item.step = Step(steps.fn("kick_type"), (item.step.args[0], want))
                return True
            assert slot is not None
            slot.frames = [kicked(done)]
        elif kind == "stats":
            answer = steps.parse_stats(raw)
            answer["uptime_s"] = round(self._clock() - self.started, 3)
            answer["journal"] = None
            self.totals = dict(answer["totals"])
            assert slot is not None
            slot.frames = [encode_frame(stats_frame(answer))]
        elif kind == "jobs":
            rows, cursor = steps.parse_jobs(raw)
            assert slot is not None
            slot.frames = [encode_frame(jobs_page(rows, self._keep_cursor(cursor)))]
        return False

    def _keep_cursor(self, cursor: list[str] | None) -> list[int] | None:
        if cursor is None:
            return None
        number = next(self._cursor_serial)
        self._cursors[number] = cursor
        if len(self._cursors) > MAX_CURSORS:
            self._cursors.popitem(last=False)
        return [number]

    # ------------------------------------------------------------ shutdown and stats

    async def leave(self) -> int:
        """Leave the cluster (shutdown): HALTED for this daemon's masters'
        attached jobs; its slaves' jobs go back without a loss, detached jobs
        and the other daemons' jobs stay.  Returns how many were failed."""
        self.halted = True
        counters = self.engine.counters
        event(
            log, "cluster_leave", round_trips=counters.round_trips, calls=counters.calls,
            inbox_reads=counters.inbox_reads, messages=counters.messages,
        )  # fmt: skip
        try:
            halted = await self.engine.halt()
        except (BackendUnavailable, Fenced) as exc:
            event(log, "cluster_halt", logging.WARNING, error=str(exc))
            return 0
        for number, frame in halted:
            peer = self._by_number.get(number)
            if peer is not None:
                self.send(peer, frame)
        return len(halted)

    def halt(self, keep_detached: bool = False) -> int:
        """Nothing to do here: the jobs live in Redis (see `leave`)."""
        self.halted = True
        return 0


def _expand(frames: list[Any]) -> list[Frame]:
    out: list[Frame] = []
    for frame in frames:
        if type(frame) is Slot:
            out.extend(frame.frames)
        else:
            out.append(frame)
    return out


def _no_write(peer: Peer, frames: list[Frame]) -> None:
    raise RuntimeError("the cluster broker is not running")


def _nothing() -> None:
    pass
