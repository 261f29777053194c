"""The Redis engine: the cluster's rules (`library.lua`) called from trio.

One `ClusterEngine` per daemon.  It owns two connections to Redis (coredis,
which runs on trio through anyio): one for steps, sent pipelined in the
order given, and one that blocks on the daemon's inbox.  Beside them run
three tasks: the lease (renewed every third of `--cluster-lease`, and the
reaping of daemons whose lease lapsed), the clock (the `tick` function at
the cluster's next deadline), and the reconnection.

What a step returns is data: a `steps.Reply` (what happened, the framed
replies for the requester in order) or a decoded answer (stats, jobs).
Frames for other peers of this daemon come from the inbox, in batches, to
`on_inbox`.  Nothing here knows about connections or peers beyond their
numbers: the daemon's adapter (`ClusterBroker`, phase 2) maps numbers to
peers and frames to outboxes.

Failures: while Redis is unreachable every step raises `BackendUnavailable`
at once (it was not sent), and the engine reconnects with back-off.  A step
whose answer was lost with the connection raises `BackendUncertain`; a
submit among them is withdrawn as soon as Redis is back (so a job answered
`backend_unavailable` does not run behind its master's back).  A step that
finds this daemon's record gone raises `Fenced`, and the engine joins the
cluster again under a new id after telling `on_fenced`.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, Final

import coredis
import trio
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import RedisError, ResponseError
from coredis.retry import NoRetryPolicy
from coredis.tokens import PureToken

from gloomwire import codec
from gloomwire.logformat import event

from . import steps
from .errors import BackendUnavailable, BackendUncertain, Fenced
from .keys import id_key, id_of_key, prefix, type_key, type_key_of
from .settings import ClusterLimits, ClusterSettings, masked
from .steps import Delivery, JobSpec, Reply, Step

__all__ = ["KICK_STEP", "LIBRARY_SOURCE", "STEP_LIMIT", "ClusterEngine", "probe"]

log = logging.getLogger("gloomd.cluster")

#: The library of Redis functions (`library.lua`), loaded at each connect.
LIBRARY_SOURCE: Final = resources.files(__package__).joinpath("library.lua").read_text()

#: What a broken or silent connection to Redis raises.
CONNECTION_ERRORS: Final = (RedisConnectionError, TimeoutError, OSError)
#: Seconds the inbox read blocks in Redis before it looks again.
INBOX_BLOCK: Final = 1.0
#: Inbox messages taken per read.
INBOX_BATCH: Final = 1000
#: Work of one call of tick, resume, master_gone.
STEP_LIMIT: Final = 1000
#: Dead jobs one call of a kick by type queues again.  Smaller than
#: STEP_LIMIT: each takes Redis ~50 us (measured), and every daemon's steps
#: wait while a call runs; 250 holds it ~12 ms, so a kick of many jobs adds
#: that much at most to anyone's round trip (the kick goes one call per
#: pipeline of its daemon, see `ClusterBroker.run`).
KICK_STEP: Final = 250


class Counters:
    """What the engine asked of Redis: for the benchmark and for stats."""

    __slots__ = ("calls", "inbox_reads", "messages", "round_trips")

    def __init__(self) -> None:
        self.round_trips = 0  # pipelines and single commands sent
        self.calls = 0  # function calls (FCALL) among them
        self.inbox_reads = 0
        self.messages = 0  # inbox messages received


class ClusterEngine:
    """One daemon's side of the cluster; see the module docstring."""

    def __init__(
        self,
        settings: ClusterSettings,
        limits: ClusterLimits | None = None,
        *,
        on_inbox: Callable[[list[Delivery]], None] | None = None,
        on_fenced: Callable[[], None] | None = None,
        counts: Callable[[], tuple[int, int]] | None = None,
        daemon_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.limits = limits or ClusterLimits()
        self.prefix = prefix(settings.name)
        self.daemon = daemon_id or secrets.token_hex(6)
        self.on_inbox = on_inbox or _ignore
        self.on_fenced = on_fenced or _nothing
        #: This daemon's (masters, slaves), written to Redis with the lease.
        self.counts = counts or _no_counts
        self.counters = Counters()
        self.up = False
        #: trio time of the last (re)connection: lapsed leases are reaped only
        #: a full lease after it, so that daemons that were cut off with this
        #: one have had the time to renew theirs.
        self.connected_at = math.inf
        self.started = 0.0
        self._seq_key = self.prefix + "seq"
        self._ops: coredis.Redis[bytes] | None = None
        self._inbox: coredis.Redis[bytes] | None = None
        self._up_event = trio.Event()
        self._recover_event = trio.Event()
        self._tick_event = trio.Event()
        self._tick_at = math.inf
        self._tokens = itertools.count(1)
        self._withdraws: list[Step] = []

    # ------------------------------------------------------------ lifecycle

    def _client(self, timeout: float) -> coredis.Redis[bytes]:
        options = self.settings.client_options()
        options["stream_timeout"] = timeout
        return coredis.Redis.from_url(
            self.settings.url,
            decode_responses=False,
            retry_policy=NoRetryPolicy(),
            **options,
        )

    async def run(
        self, *, task_status: trio.TaskStatus[ClusterEngine] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, join the cluster, and serve until cancelled.

        The first connection must succeed (else `BackendUnavailable`: a
        daemon does not start on a Redis it cannot reach); later losses are
        recovered with back-off.
        """
        op_timeout = self.settings.op_timeout
        failure: BaseException | None = None
        async with (
            self._client(op_timeout) as ops,
            self._client(op_timeout + INBOX_BLOCK) as inbox,
        ):
            self._ops, self._inbox = ops, inbox
            try:
                await self._connect(first=True)
            except (*CONNECTION_ERRORS, RedisError) as exc:
                # Unreachable, refused, or a wrong password: the daemon says
                # so and exits rather than serve without its queue.  Raised
                # outside the clients, whose task groups would wrap it.
                failure = exc
            else:
                self.started = trio.current_time()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._inbox_loop)
                    nursery.start_soon(self._lease_loop)
                    nursery.start_soon(self._tick_loop)
                    nursery.start_soon(self._recover_loop)
                    task_status.started(self)
        if failure is not None:
            raise BackendUnavailable(f"{masked(self.settings.url)}: {failure}") from failure

    async def _connect(self, *, first: bool = False) -> None:
        ops = self._ops
        assert ops is not None
        self.counters.round_trips += 3
        await ops.ping()
        await ops.function_load(LIBRARY_SOURCE, replace=True)
        if first:
            await self._register(ops)
        else:
            raw = await ops.fcall(
                steps.fn("renew"), [self._seq_key], self._with_context(self._renew_args())
            )
            if _code(raw) == "fenced":
                self._fenced()
                await self._register(ops)
        pending, self._withdraws = self._withdraws, []
        for step in pending:
            self.counters.round_trips += 1
            await ops.fcall(step.function, [self._seq_key], self._with_context(step.args))
        self.connected_at = trio.current_time()
        if not self.up:
            self.up = True
            self._up_event.set()
            if not first:
                event(log, "cluster_up", daemon=self.daemon, withdrawn=len(pending))

    async def _register(self, ops: coredis.Redis[bytes]) -> None:
        args = [round(self.settings.lease * 1000), *self.limits.as_args()]
        self.counters.round_trips += 1
        await ops.fcall(steps.fn("register"), [self._seq_key], self._with_context(args))
        event(log, "cluster_join", daemon=self.daemon, name=self.settings.name)

    def _fenced(self) -> None:
        """Our record is gone: every peer's state went with it."""
        old = self.daemon
        self.daemon = secrets.token_hex(6)
        self._withdraws.clear()
        event(log, "cluster_fenced", logging.WARNING, daemon=old, new=self.daemon)
        self.on_fenced()

    def _down(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            self._up_event = trio.Event()
            event(log, "cluster_down", logging.WARNING, daemon=self.daemon, error=_describe(exc))
        self._recover_event.set()

    async def _recover_loop(self) -> None:
        settings = self.settings
        while True:
            await self._recover_event.wait()
            self._recover_event = trio.Event()
            wait = settings.backoff_min
            while not self.up:
                try:
                    await self._connect()
                except (*CONNECTION_ERRORS, RedisError) as exc:
                    event(
                        log,
                        "cluster_retry",
                        logging.DEBUG,
                        wait=round(wait, 3),
                        error=_describe(exc),
                    )
                    await trio.sleep(wait)
                    wait = min(wait * 2, settings.backoff_max)

    async def wait_up(self) -> None:
        """Return once Redis answers again (tests, and the adapter's queue)."""
        while not self.up:
            await self._up_event.wait()

    # ------------------------------------------------------------ calls

    def _with_context(self, args: Sequence[Any]) -> list[Any]:
        return [self.prefix, self.daemon, *args]

    async def call_many(self, batch: Sequence[Step]) -> list[Any]:
        """Send steps in one pipeline, in order; their raw answers in order.

        Raises `BackendUnavailable` (not sent), `BackendUncertain` (sent,
        answer lost: submits among them are withdrawn once Redis is back) or
        `Fenced`.  A function missing from Redis (it restarted empty) means
        nothing ran: the library is loaded again and the steps resent once.
        """
        if not self.up:
            raise BackendUnavailable("redis unreachable")
        ops = self._ops
        assert ops is not None
        for attempt in range(2):
            daemon = self.daemon
            try:
                async with ops.pipeline(transaction=False, raise_on_error=False) as pipe:
                    requests = [
                        pipe.fcall(step.function, [self._seq_key], self._with_context(step.args))
                        for step in batch
                    ]
                self.counters.round_trips += 1
                self.counters.calls += len(batch)
                answers: list[Any] = []
                missing = False
                for request in requests:
                    try:
                        answers.append(await request)
                    except ResponseError as exc:
                        if "Function not found" not in str(exc):
                            raise
                        missing = True
            except CONNECTION_ERRORS as exc:
                self._uncertain(batch, daemon)
                self._down(exc)
                raise BackendUncertain(str(exc)) from exc
            if missing and attempt == 0:
                self.counters.round_trips += 1
                await ops.function_load(LIBRARY_SOURCE, replace=True)
                continue
            if any(_code(answer) == "fenced" for answer in answers):
                self._fenced()
                await self._register(ops)
                raise Fenced(daemon)
            return answers
        raise BackendUnavailable("the function library cannot be loaded")

    def _uncertain(self, batch: Sequence[Step], daemon: str) -> None:
        if daemon != self.daemon:
            return
        submit = steps.fn("submit")
        for step in batch:
            if step.function == submit:
                master, token, ik = step.args[:3]
                self._withdraws.append(Step(steps.fn("withdraw"), (master, ik, token)))

    async def call(self, step: Step) -> Any:
        return (await self.call_many([step]))[0]

    async def reply(self, step: Step) -> Reply:
        return steps.parse_reply(await self.call(step))

    # ------------------------------------------------------------ master steps

    def submit_step(self, master: int, spec: JobSpec) -> Step:
        """The step of a submit (its token lets a lost answer be withdrawn)."""
        return steps.submit(master, f"{self.daemon}:{next(self._tokens)}", spec)

    async def submit(self, master: int, spec: JobSpec) -> Reply:
        """`ok` (ack, and a DEPENDENCY failure if an `after` job failed),
        `attached` (unique), or `error` (id_exists, dependency_cycle,
        unknown_dependency, queue_full)."""
        return await self.reply(self.submit_step(master, spec))

    async def cancel(self, master: int, job_id: str | int) -> Reply:
        return await self.reply(steps.on_id("cancel", master, job_id))

    async def result(self, master: int, job_id: str | int) -> Reply:
        return await self.reply(steps.on_id("result", master, job_id))

    async def delete(self, master: int, job_id: str | int) -> Reply:
        return await self.reply(steps.on_id("delete", master, job_id))

    async def kick(self, job_id: str | int) -> Reply:
        return await self.reply(Step(steps.fn("kick"), (id_key(job_id), codec.dumps(job_id))))

    async def kick_type(self, job_type: Any, limit: int | None = None) -> int:
        """Kick the `limit` oldest dead jobs of a type (all: None), a bounded
        number per call so other steps run in between; returns how many."""
        tk = type_key(type_key_of(job_type))
        kicked = 0
        while limit is None or kicked < limit:
            want = KICK_STEP if limit is None else min(KICK_STEP, limit - kicked)
            raw = await self.call(Step(steps.fn("kick_type"), (tk, want)))
            kicked += int(raw[1])
            if raw[2] == 0 or int(raw[1]) == 0:
                break
        return kicked

    async def pause(self, job_type: Any) -> Reply:
        tk = type_key(type_key_of(job_type))
        return await self.reply(Step(steps.fn("pause"), (tk, codec.dumps(job_type))))

    async def resume(self, job_type: Any) -> Reply:
        tk = type_key(type_key_of(job_type))
        while True:
            reply = await self.reply(Step(steps.fn("resume"), (tk, STEP_LIMIT)))
            if reply.code != "more":
                return reply

    async def master_gone(self, master: int) -> None:
        """The master's connection is gone (Gloom's rule for its jobs)."""
        while _code(await self.call(Step(steps.fn("master_gone"), (master,)))) == "more":
            pass

    async def withdraw(self, master: int, step: Step) -> None:
        await self.call(Step(steps.fn("withdraw"), (master, step.args[2], step.args[1])))

    async def stats(self, job_type: Any = None, *, one: bool = False) -> dict[str, Any]:
        """The stats body (cluster totals; this daemon's uptime)."""
        masters, slaves = self.counts()
        tk = type_key(type_key_of(job_type)) if one else b""
        args = (tk, 1 if one else 0, self.limits.max_stats_types, masters, slaves)
        answer = steps.parse_stats(await self.call(Step(steps.fn("stats"), args)))
        answer["uptime_s"] = round(trio.current_time() - self.started, 3)
        return answer

    async def jobs(
        self,
        job_type: Any = None,
        state: str | None = None,
        limit: int = 100,
        cursor: Any = None,
        *,
        by_type: bool = False,
    ) -> tuple[list[dict[str, Any]], Any]:
        """A page of the jobs held, and the cursor of the next (None: done)."""
        tk = type_key(type_key_of(job_type)) if by_type else b""
        code = steps.STATE_CODES[state] if state is not None else ""
        where = cursor if cursor is not None else ["", "", ""]
        args = (tk, code, limit, *where)
        return steps.parse_jobs(await self.call(Step(steps.fn("jobs"), args)))

    # ------------------------------------------------------------ slave steps

    async def join(self, slave: int, job_type: Any, epoch: int) -> Reply:
        """`ok`, or `job` (the ok, then the slave's job frame)."""
        tk = type_key(type_key_of(job_type))
        return await self.reply(Step(steps.fn("join"), (slave, tk, codec.dumps(job_type), epoch)))

    async def respond(self, slave: int, body: Any) -> Reply:
        return await self.reply(Step(steps.fn("respond"), (slave, codec.dumps(body))))

    async def fail(self, slave: int, category: str, reason: Any = None) -> Reply:
        return await self.reply(Step(steps.fn("fail"), (slave, category, codec.dumps(reason))))

    async def progress(self, slave: int, body: Any) -> None:
        await self.call(Step(steps.fn("progress"), (slave, codec.dumps(body))))

    async def slave_gone(self, slave: int) -> Reply:
        return await self.reply(Step(steps.fn("slave_gone"), (slave,)))

    # ------------------------------------------------------------ daemon steps

    def _renew_args(self) -> list[Any]:
        masters, slaves = self.counts()
        return [round(self.settings.lease * 1000), masters, slaves]

    async def renew(self) -> list[str]:
        """Renew the lease; the daemons whose lease lapsed."""
        raw = await self.call(Step(steps.fn("renew"), tuple(self._renew_args())))
        return [d.decode() for d in raw[1:]]

    async def reap(self, daemon: str) -> tuple[int, int] | None:
        """Clean up after a daemon whose lease lapsed: (jobs requeued,
        masters removed), or None if it was not ours to do (renewed, or
        another daemon did it first)."""
        raw = await self.call(Step(steps.fn("reap"), (daemon,)))
        if _code(raw) != "reaped":
            return None
        requeued, masters = int(raw[1]), int(raw[2])
        event(
            log, "cluster_reap", logging.WARNING, daemon=daemon, requeued=requeued,
            masters=masters,
        )  # fmt: skip
        return requeued, masters

    async def tick(self) -> float:
        """Run the cluster's clock once; seconds to its next deadline (inf)."""
        while True:
            raw = await self.call(Step(steps.fn("tick"), (STEP_LIMIT,)))
            for job_id in raw[3:]:
                event(log, "dead_dropped", id=id_of_key(job_id))
            if int(raw[2]) == 0:
                wait = int(raw[1])
                return math.inf if wait < 0 else wait / 1000

    async def halt(self) -> list[tuple[int, bytes]]:
        """Leave the cluster: (master, HALTED frame) for this daemon's
        masters' attached jobs; slaves' jobs go back without a loss."""
        raw = await self.call(Step(steps.fn("halt"), ()))
        self.up = False
        return [(int(raw[i]), raw[i + 1]) for i in range(1, len(raw), 2)]

    # ------------------------------------------------------------ tasks

    async def _inbox_loop(self) -> None:
        while True:
            await self.wait_up()
            inbox = self._inbox
            assert inbox is not None
            key = self.prefix + "in:" + self.daemon
            try:
                got = await inbox.blmpop([key], INBOX_BLOCK, PureToken.LEFT, INBOX_BATCH)
            except CONNECTION_ERRORS as exc:
                self._down(exc)
                continue
            except RedisError as exc:
                # Redis answered an error (BUSY: a long function runs): the
                # inbox is read again shortly; the engine must not die of it.
                self._refused("inbox", exc)
                await trio.sleep(self.settings.backoff_min)
                continue
            self.counters.inbox_reads += 1
            self.counters.round_trips += 1
            if not got:
                continue
            messages = got[1]
            assert isinstance(messages, list)
            self.counters.messages += len(messages)
            batch: list[Delivery] = []
            for message in messages:
                parsed = steps.parse_delivery(message)
                if type(parsed) is float:
                    self._arm(parsed)
                else:
                    batch.append(parsed)  # type: ignore[arg-type]
            if batch:
                try:
                    self.on_inbox(batch)
                except Exception as exc:
                    # The adapter's bug costs this batch, never the engine.
                    event(
                        log, "internal_error", logging.ERROR, stage="inbox",
                        error=type(exc).__name__, exc_info=exc,
                    )  # fmt: skip

    def _arm(self, seconds: float) -> None:
        when = trio.current_time() + seconds
        if when < self._tick_at:
            self._tick_at = when
            self._tick_event.set()

    async def _tick_loop(self) -> None:
        fallback = self.settings.lease
        while True:
            deadline = min(self._tick_at, trio.current_time() + fallback)
            with trio.move_on_at(deadline):
                await self._tick_event.wait()
            self._tick_event = trio.Event()
            if trio.current_time() < deadline:
                continue  # a nearer deadline was armed: sleep to it instead
            await self.wait_up()
            self._tick_at = math.inf
            try:
                wait = await self.tick()
            except (BackendUnavailable, Fenced):
                continue
            except RedisError as exc:
                self._refused("tick", exc)
                wait = self.settings.backoff_max
            self._arm(wait)

    async def _lease_loop(self) -> None:
        lease = self.settings.lease
        while True:
            await trio.sleep(lease / 3)
            if not self.up:
                continue
            try:
                lapsed = await self.renew()
                if lapsed and trio.current_time() - self.connected_at >= lease:
                    for daemon in lapsed:
                        await self.reap(daemon)
            except (BackendUnavailable, Fenced):
                continue
            except RedisError as exc:
                self._refused("renew", exc)

    def _refused(self, task: str, exc: RedisError) -> None:
        """Redis answered one of the engine's own calls with an error (BUSY
        while a long function runs, OOM...): logged, and tried again later."""
        event(log, "cluster_refused", logging.WARNING, task=task, error=_describe(exc))


async def probe(settings: ClusterSettings) -> None:
    """Reach Redis once (connect, authenticate, PING) and leave, joining
    nothing: the daemon's check at start.  Raises `BackendUnavailable`
    (the password masked in its message)."""
    failure: BaseException | None = None
    try:
        async with ClusterEngine(settings)._client(settings.connect_timeout) as client:
            try:
                await client.ping()
            except (*CONNECTION_ERRORS, RedisError) as exc:
                failure = exc
    except (*CONNECTION_ERRORS, RedisError) as exc:
        failure = exc
    if failure is not None:
        # Raised outside the client, whose task group would wrap it.
        raise BackendUnavailable(f"{masked(settings.url)}: {failure}") from failure


def _describe(exc: BaseException) -> str:
    """An error for a log line: its type and message, never a password (a
    connection error may quote the URL)."""
    return masked(f"{type(exc).__name__}: {exc}")


def _code(raw: Any) -> str:
    if isinstance(raw, list) and raw and isinstance(raw[0], bytes):
        return raw[0].decode()
    return ""


def _ignore(batch: list[Delivery]) -> None:
    pass


def _nothing() -> None:
    pass


def _no_counts() -> tuple[int, int]:
    return (0, 0)
