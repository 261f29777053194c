"""The trio master: `open_master`, `AsyncMaster` and the `Job` handle.

One reader task per connection turns frames into state changes on `Job`
handles and wakes whoever waits for them; the protocol state machine
(`MasterProtocol`) decides what each frame means.  Nothing here parses JSON.

The lifecycle's admin actions (kick, delete, jobs, pause, resume) are plain
calls; `jobs` is an async iterator that follows the daemon's cursor.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Unpack

import trio

from . import _lifecycle as lifecycle
from ._connect import Endpoint, Security, connect
from ._lifecycle import ANY_TYPE, JobInfo, JobsPage, ListedState
from ._master_protocol import (
    SUBMIT_KEYS,
    Answered,
    Finished,
    MasterProtocol,
    Notice,
    Progressed,
    check_specs,
    new_job_id,
)
from ._protocol import JobState, Request
from ._trio_connection import FrameConnection, running_beside, wake
from .errors import GloomError, JobCancelled, JobFailed, ServerError, TransportError, WaitTimeout

__all__ = [
    "SUBMIT_KEYS",
    "AsyncMaster",
    "Job",
    "JobsIterator",
    "master_session",
    "new_job_id",
    "open_master",
]

_TERMINAL = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class Job:
    """A submitted job, updated in place by the connection's reader task.

    `state` is ``queued`` once acked, ``running`` after its first progress
    frame (the protocol does not announce a start), then ``done``, ``failed``
    or ``cancelled``.  `result` holds the body of a done job, `error` the
    exception of a failed or cancelled one, `progress` the latest progress
    value (None before any).  `attached` is True when the submit was
    ``unique`` and joined a job that was already live (or finished and
    kept): this handle then follows that job, whoever submitted it.
    """

    def __init__(self, master: AsyncMaster, id: Any, type: Any) -> None:
        self.id = id
        self.type = type
        self.state = JobState.QUEUED
        self.result: Any = None
        self.error: GloomError | None = None
        self.progress: Any = None
        self.attached = False
        #: Submitted with ``detach``: the job outlives this connection.
        self.detached = False
        self._master = master
        self._seen_progress = False
        self._refused = False  # the daemon answered the submit with an error
        self._acked = trio.Event()
        self._done = trio.Event()
        self._watchers: list[trio.MemorySendChannel[Any]] = []

    def __repr__(self) -> str:
        return f"<gloom.Job id={self.id!r} type={self.type!r} state={self.state.value}>"

    @property
    def done(self) -> bool:
        """True once the job reached a final state."""
        return self.state in _TERMINAL

    @property
    def attempt(self) -> int | None:
        """How many times the job was delivered, as its final failure frame says.

        gloomd puts ``attempt`` on the final failure of a job submitted with
        ``retries`` (even 0) or kicked; None while the job is not finished,
        when it succeeded (a result frame carries no count), or when the frame
        had none (a job that used no lifecycle key fails with protocol.md's
        frame).
        """
        error = self.error
        return error.attempt if isinstance(error, JobFailed) else None

    async def wait(self, timeout: float | None = None) -> Any:
        """The job's result body, once it has one.

        Raises `JobFailed` / `JobError` if the job failed, `JobCancelled` if
        it was cancelled, `TransportError` if the connection was lost first,
        and `WaitTimeout` if `timeout` seconds pass (the job carries on).
        """
        if not self._done.is_set():
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await self._done.wait()
            if not self._done.is_set():
                raise WaitTimeout(f"job {self.id!r} not finished after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result

    def progress_updates(self) -> AsyncIterator[Any]:
        """Progress values as they arrive; ends when the job ends.

        Subscribes at the call (not at the first ``anext``), starting with the
        latest value if one arrived before.  Values are buffered per iterator,
        so a slow consumer still sees every one.
        """
        return _ProgressUpdates(self)

    async def cancel(self) -> bool:
        """Cancel this job while it is queued (see `AsyncMaster.cancel`)."""
        return await self._master.cancel(self.id)

    # -- called by the reader task ---------------------------------------------

    def _on_progress(self, value: Any) -> None:
        if self.done:
            return
        self.progress = value
        self._seen_progress = True
        if self.state is JobState.QUEUED:
            self.state = JobState.RUNNING
        for watcher in self._watchers:
            watcher.send_nowait(value)

    def _finish(self, state: JobState, result: Any = None, error: GloomError | None = None) -> None:
        if self.done:
            return
        self.state = state
        self.result = result
        self.error = error
        self._acked.set()
        self._done.set()
        for watcher in self._watchers:
            watcher.close()
        self._watchers.clear()


class _ProgressUpdates:
    """The iterator behind `Job.progress_updates`.

    A class rather than an async generator: an abandoned generator suspended
    in a cancelled task is finalized later by the garbage collector, while
    this needs no finalization at all.
    """

    def __init__(self, job: Job) -> None:
        self._pending_latest = job._seen_progress and not job.done
        self._latest = job.progress
        send, self._receive = trio.open_memory_channel[Any](math.inf)
        if job.done:
            send.close()
        else:
            job._watchers.append(send)

    def __aiter__(self) -> _ProgressUpdates:
        return self

    async def __anext__(self) -> Any:
        if self._pending_latest:
            self._pending_latest = False
            await trio.lowlevel.checkpoint()
            return self._latest
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class AsyncMaster:
    """A master connection.  Get one with `open_master`."""

    def __init__(
        self,
        connection: FrameConnection,
        lost_job: Callable[[Job, GloomError], GloomError] | None = None,
    ) -> None:
        self._conn = connection
        self._proto = MasterProtocol()
        self._notice: ServerError | None = None
        #: What a job still unfinished when the connection ends fails with
        #: (default: the connection's own `TransportError`); the --servers
        #: client (`gloom._servers`) reports attached ones as CRASH instead.
        self._lost_job = lost_job

    @property
    def connected(self) -> bool:
        return self._conn.alive

    async def submit(
        self,
        type: Any,
        body: Any,
        priority: int = 0,
        id: Any = None,
        timeout: float | None = None,
        *,
        after: Iterable[Any] | None = None,
        detach: bool = False,
        delay: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        unique: bool = False,
    ) -> Job:
        """Submit one job and return its handle once the daemon acked it.

        `timeout` is the job's run-time limit in seconds (the daemon fails it
        with category TIMEOUT); `after` lists ids that must complete first;
        `detach` keeps the job alive without this connection (fetch its
        result with `result`).  `delay` holds it back that many seconds;
        `retries` lets the daemon queue it again after a slave's ``fail``
        ERROR or TIMEOUT, or the daemon's own TIMEOUT, waiting `backoff`
        seconds (default 1) doubled at each retry, capped at 3600; `unique`
        attaches to a live job of the same id and type instead of failing with
        ``id_exists`` (then `Job.attached` is True).  Each is sent only when
        given, and gloomd checks it (``invalid_type`` / the key).  Raises
        `ServerError` if the daemon refused the job.
        """
        spec = {"type": type, "body": body, "priority": priority, "id": id, "timeout": timeout}
        spec.update(after=after, detach=detach, delay=delay, retries=retries, backoff=backoff)
        job = self._send_submit({**spec, "unique": unique})
        await job._acked.wait()
        if job._refused and job.error is not None:
            raise job.error
        return job

    async def submit_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[Job]:
        """Submit many jobs without waiting for each ack; handles in input order.

        Every dict takes the keyword arguments of `submit`.  A job the daemon
        refused comes back already failed, its `error` the `ServerError`.
        """
        specs = [dict(spec) for spec in jobs]
        check_specs(specs)
        if any("type" not in spec for spec in specs):
            raise TypeError("every job needs a 'type'")
        handles = [self._send_submit(spec) for spec in specs]
        for handle in handles:
            await handle._acked.wait()
        return handles

    async def cancel(self, id: Any) -> bool:
        """Remove a queued job.  True, or `ServerError` (``invalid_state`` if it
        is running, ``unknown_id`` if it is not this master's or is gone)."""
        value: bool = await self._call(*self._proto.cancel(id))
        return value

    async def stats(self) -> dict[str, Any]:
        """The daemon's statistics (the inner ``stats`` dict)."""
        value: dict[str, Any] = await self._call(*self._proto.stats())
        return value

    async def result(self, id: Any) -> Any:
        """A detached job's result body; raises its `JobFailed`/`JobError`, or
        `ServerError` ``not_ready`` while it is queued or running."""
        return await self._call(*self._proto.result(id))

    # -- the lifecycle's admin actions --------------------------------------------------

    async def kick(self, id: Any) -> bool:
        """Queue a dead job again (its retries reset, its attempt count kept): True.

        Raises `InvalidState` (`.state` says which) if the job is not dead,
        `UnknownJob` if gloomd holds no job by that id.
        """
        value: bool = await self._call(*self._proto.kick(id))
        return value

    async def kick_type(self, type: Any, limit: int | None = None) -> int:
        """Queue the `limit` oldest dead jobs of `type` again (all without one): how many."""
        value: int = await self._call(*self._proto.kick_type(type, limit))
        return value

    async def delete(self, id: Any) -> bool:
        """Remove a job that is not running: True.

        Any master may delete a detached job, in any state but running (jobs
        waiting on it fail with ``DEPENDENCY``); a job of this connection ends
        as by `cancel`.  Raises `InvalidState` (``running``) or `UnknownJob`.
        """
        value: bool = await self._call(*self._proto.delete(id))
        return value

    def jobs(
        self,
        type: Any = ANY_TYPE,
        *,
        state: ListedState | str | None = None,
        limit: int | None = None,
        page_size: int = lifecycle.MAX_PAGE,
    ) -> AsyncIterator[JobInfo]:
        """The jobs gloomd holds, as `JobInfo` rows: ``async for info in m.jobs(): ...``.

        Filtered by `type` (any JSON value; leave it out for every type) and
        `state`; queued jobs come in the order they will be dispatched.  Pages
        of `page_size` rows (1 to 1,000) are fetched as the loop needs them,
        following the daemon's cursor, until `limit` rows (None: all).
        """
        return JobsIterator(self, type, state, limit, page_size)

    async def jobs_page(
        self,
        type: Any = ANY_TYPE,
        *,
        state: ListedState | str | None = None,
        limit: int | None = None,
        cursor: Any = None,
    ) -> JobsPage:
        """One page of `jobs` (`limit` rows, at most 1,000; gloomd's default 100).

        `cursor` is the `next_cursor` of the previous page (None: the first page).
        """
        value: JobsPage = await self._call(*self._proto.jobs(type, state, limit, cursor))
        return value

    async def pause(self, type: Any) -> None:
        """Stop handing out jobs of `type`: they stay queued, its slaves stay joined."""
        await self._call(*self._proto.pause(type))

    async def resume(self, type: Any) -> None:
        """Hand out jobs of a paused `type` again."""
        await self._call(*self._proto.resume(type))

    # -- internals ----------------------------------------------------------------

    def _send_submit(self, spec: Mapping[str, Any]) -> Job:
        self._check_open()
        job_id = spec.get("id")
        if job_id is None:
            job_id = new_job_id()
        job = Job(self, job_id, spec["type"])
        job.detached = bool(spec.get("detach", False))
        request, data = self._proto.submit_spec(job_id, spec, token=job)
        request.waker = job
        self._conn.send_nowait(data)
        return job

    async def _call(self, request: Request, data: bytes) -> Any:
        self._check_open()
        return await self._conn.call(request, data)

    def _check_open(self) -> None:
        if not self._conn.alive:
            raise TransportError(str(self._conn.error))

    def _on_data(self, data: bytes) -> None:
        for event in self._proto.receive_data(data):
            if isinstance(event, Finished):
                job = event.token
                if isinstance(job, Job):
                    if event.error is None:
                        job._finish(JobState.DONE, result=event.body)
                    else:
                        job._finish(JobState.FAILED, error=event.error)
            elif isinstance(event, Progressed):
                if isinstance(event.token, Job):
                    event.token._on_progress(event.value)
            elif isinstance(event, Answered):
                self._wake(event.request)
                for cancelled in event.cancelled:
                    if isinstance(cancelled, Job):
                        cancelled._finish(JobState.CANCELLED, error=JobCancelled(cancelled.id))
            elif isinstance(event, Notice):
                # Sent just before the daemon closes on us (too_many_connections):
                # keep it as the reason the connection ends.
                self._notice = event.error
                self._conn.close_with(
                    TransportError(f"gloomd refused the connection: {event.error}")
                )

    def _wake(self, request: Request) -> None:
        waker = request.waker
        if isinstance(waker, Job):
            if request.error is not None:
                waker._refused = True
                waker._finish(JobState.FAILED, error=request.error)
            else:
                waker.attached = request.value is True
                waker._acked.set()
        else:
            wake(request)

    async def _run(self) -> None:
        error = await self._conn.run(self._on_data)
        requests, tokens = self._proto.connection_lost(error)
        for request in requests:
            self._wake(request)
        for job in tokens:
            if isinstance(job, Job):
                lost: GloomError = TransportError(str(error))
                if self._lost_job is not None:
                    lost = self._lost_job(job, lost)
                job._finish(JobState.FAILED, error=lost)


class JobsIterator:
    """The iterator behind `AsyncMaster.jobs`: one page at a time, by cursor.

    A class rather than an async generator, for the reason `_ProgressUpdates`
    gives: nothing to finalize when a loop is abandoned half way.
    """

    def __init__(
        self,
        master: AsyncMaster,
        job_type: Any,
        state: ListedState | str | None,
        limit: int | None,
        page_size: int,
    ) -> None:
        # Checked at the call, not at the first page: a bad argument is the
        # caller's bug and should point at the call.
        self._master = master
        self._type = job_type
        self._state = None if state is None else lifecycle.listed_state(state)
        self._left = lifecycle.check_limit(limit)
        self._page_size = lifecycle.check_page_size(page_size)
        self._rows: list[JobInfo] = []
        self._cursor: Any = None
        self._started = False

    def __aiter__(self) -> JobsIterator:
        return self

    async def __anext__(self) -> JobInfo:
        if self._left == 0:
            raise StopAsyncIteration
        while not self._rows:
            if self._started and self._cursor is None:
                raise StopAsyncIteration
            size = self._page_size if self._left is None else min(self._page_size, self._left)
            page = await self._master.jobs_page(
                self._type, state=self._state, limit=size, cursor=self._cursor
            )
            self._started = True
            self._cursor = page.next_cursor
            # Popped from the end, so in order.  An empty page that is not the
            # last (its rows went away meanwhile) just leads to the next one.
            self._rows = page.jobs[::-1]
        if self._left is not None:
            self._left -= 1
        return self._rows.pop()


@asynccontextmanager
async def open_master(
    host: str = "127.0.0.1",
    port: int = 9998,
    *,
    connect_timeout: float | None = 10.0,
    **security: Unpack[Security],
) -> AsyncIterator[AsyncMaster]:
    """Connect to gloomd's master port for the duration of the block.

    Raises `TransportError` at once if the daemon cannot be reached.  Leaving
    the block closes the connection; gloomd then drops this master's queued
    jobs (detached ones excepted).

    Security (both off unless asked for): `token`, else `token_file`'s first
    line, else $GLOOMD_TOKEN is presented in an auth frame before anything
    else, and a refusal raises `Unauthorized`.  `ssl_context`, or `tls=True`
    with an optional CA file `tls_ca`, wraps the connection in TLS with the
    daemon's certificate checked against `host`.
    """
    endpoint = Endpoint.configure(host, port, connect_timeout, **security)
    async with master_session(endpoint) as master:
        yield master


@asynccontextmanager
async def master_session(endpoint: Endpoint) -> AsyncIterator[AsyncMaster]:
    """`open_master` for an `Endpoint` already resolved (the worker runner's)."""
    stream = await connect(endpoint)
    master = AsyncMaster(FrameConnection(stream, endpoint.peer, endpoint.tls_hint))
    async with running_beside(master._run):
        yield master
