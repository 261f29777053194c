"""The Gearman way for blocking code: `gloom.Masters` and `gloom.Slaves`,
`gloom.Master`'s and `gloom.Slave`'s calls over several daemons.

Each drives its trio twin (`gloom.open_masters`, `gloom.open_slaves`) in a
trio loop of its own, on a background thread (`_Loop`), so every rule is the
trio client's: round robin or id hash, fail-over with back-off, routing by
id, CRASH for a lost daemon's attached jobs, ``after`` refused across daemons
(`SpreadError`), summed stats, a reconnect per daemon.  Results come back
through `Masters.receive`, in completion order, as from `gloom.Master`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar, Unpack

import trio

from ._connect import Security
from ._servers import Address, AsyncServers, Spread, open_masters
from ._servers_slave import AsyncSlaves, open_slaves
from ._sync import Job
from ._trio_master import Job as AsyncJob
from ._trio_master import new_job_id
from ._trio_slave import SlaveJob
from .errors import GloomError, ProtocolError, TransportError, WaitTimeout

__all__ = ["Masters", "Slaves"]

_DEFAULT: Any = object()
_T = TypeVar("_T")
_R = TypeVar("_R")


class _Loop(Generic[_R]):
    """A trio loop on a thread of its own, holding one async context open.

    `call` runs a coroutine there and returns its value to the calling
    thread, bounded by a time limit (`WaitTimeout`); `close` leaves the
    context and ends the thread.  An error entering the context (a refused
    token, nothing reachable) is raised by the constructor.
    """

    def __init__(self, opener: Callable[[], AbstractAsyncContextManager[_R]], name: str) -> None:
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._value: _R | None = None
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._closing: trio.Event | None = None
        self._thread = threading.Thread(
            target=trio.run, args=(self._main, opener), daemon=True, name=name
        )
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    @property
    def value(self) -> _R:
        if self._value is None or not self._thread.is_alive():
            raise TransportError("closed")
        return self._value

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None
        return self._nursery

    def call(self, call: Callable[[], Awaitable[_T]], limit: float | None) -> _T:
        self.value  # noqa: B018 - raises once closed

        async def bounded() -> _T:
            with trio.fail_after(float("inf") if limit is None else limit):
                return await call()

        try:
            return trio.from_thread.run(bounded, trio_token=self._token)
        except trio.TooSlowError:
            raise WaitTimeout(f"no answer from gloomd within {limit} s") from None

    def close(self) -> None:
        if self._token is not None and self._thread.is_alive():
            closing = self._closing
            assert closing is not None
            try:
                trio.from_thread.run_sync(closing.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
            self._thread.join()

    async def _main(self, opener: Callable[[], AbstractAsyncContextManager[_R]]) -> None:
        try:
            async with opener() as value, trio.open_nursery() as nursery:
                self._value = value
                self._nursery = nursery
                self._token = trio.lowlevel.current_trio_token()
                self._closing = trio.Event()
                self._ready.set()
                await self._closing.wait()
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            if self._ready.is_set():
                raise
            self._failed = exc
        finally:
            self._ready.set()


class Masters:
    """A blocking master over several independent daemons.

    ``Masters("h1:9998,h2:9998")`` (or a list of "host:port" / (host,
    port)); `spread`, `retry_delay`, `max_retry_delay` and the security
    options as for `gloom.open_masters`; `timeout` is the default time limit
    of each call, as for `gloom.Master`.  Nothing connects until the first
    call.  Close it (or use ``with``) to end its loop thread.
    """

    def __init__(
        self,
        servers: str | Iterable[str | Address],
        *,
        spread: Spread = "round_robin",
        timeout: float | None = None,
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
        **security: Unpack[Security],
    ) -> None:
        self.timeout = timeout
        self._results: queue.SimpleQueue[Job | GloomError] = queue.SimpleQueue()
        listed = servers if isinstance(servers, str) else list(servers)

        def opener() -> AbstractAsyncContextManager[AsyncServers]:
            return open_masters(
                listed, spread=spread, retry_delay=retry_delay,
                max_retry_delay=max_retry_delay, **security,
            )  # fmt: skip

        self._loop = _Loop(opener, "gloom-masters")

    def __enter__(self) -> Masters:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection (each daemon drops this master's attached jobs)."""
        self._loop.close()

    disconnect = close

    @property
    def servers(self) -> list[str]:
        return self._loop.value.servers

    def server_of(self, id: Any) -> str | None:
        """The daemon ("host:port") job `id` was sent to, if this client sent it."""
        return self._loop.value.server_of(id)

    def new_job_id(self) -> str:
        return new_job_id()

    def submit(
        self,
        id: Any = None,
        type: Any = None,
        body: Any = None,
        *,
        priority: int = 0,
        job_timeout: float | None = None,
        detach: bool = False,
        after: Iterable[Any] | None = None,
        delay: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        unique: bool = False,
        timeout: Any = _DEFAULT,
    ) -> Any:
        """`gloom.Master.submit` on the next daemon (see `gloom.open_masters`): the id."""
        job_id = self.new_job_id() if id is None else id
        servers = self._loop.value

        async def submit() -> AsyncJob:
            job = await servers.submit(
                type, body, priority, job_id, job_timeout, after=after, detach=detach,
                delay=delay, retries=retries, backoff=backoff, unique=unique,
            )  # fmt: skip
            self._loop.nursery.start_soon(self._deliver, job)
            return job

        self._loop.call(submit, self._limit(timeout))
        return job_id

    def receive(self, timeout: Any = _DEFAULT) -> Job:
        """The next result of this client's jobs, from whichever daemon: a `Job`
        with `.id` and `.body`; a failed job raises its `JobFailed`/`JobError`."""
        limit = self._limit(timeout)
        try:
            item = self._results.get(timeout=limit)
        except queue.Empty:
            raise WaitTimeout(f"no result within {limit} s") from None
        if isinstance(item, GloomError):
            raise item
        return item

    def cancel(self, id: Any, timeout: Any = _DEFAULT) -> bool:
        servers = self._loop.value
        value: bool = self._loop.call(lambda: servers.cancel(id), self._limit(timeout))
        return value

    def result(self, id: Any, timeout: Any = _DEFAULT) -> Any:
        servers = self._loop.value
        return self._loop.call(lambda: servers.result(id), self._limit(timeout))

    def stats(self, timeout: Any = _DEFAULT) -> dict[str, Any]:
        """The daemons' statistics, summed (`gloom.AsyncServers.stats`)."""
        servers = self._loop.value
        value: dict[str, Any] = self._loop.call(servers.stats, self._limit(timeout))
        return value

    def _limit(self, timeout: Any) -> float | None:
        limit: float | None = self.timeout if timeout is _DEFAULT else timeout
        return limit

    async def _deliver(self, job: AsyncJob) -> None:
        try:
            body = await job.wait()
        except GloomError as exc:
            self._results.put(exc)
        else:
            self._results.put(Job(id=job.id, body=body))


class Slaves:
    """A blocking slave over several independent daemons (`gloom.Slave`'s calls).

    ``Slaves("h1:9999,h2:9999")``; reconnecting and security as for
    `gloom.open_slaves` (at least one daemon must answer at the start).
    `job()` returns the next job any daemon offers; answer it with `respond`
    or `fail` before taking the next (the other daemons' offers wait, held
    by them, meanwhile).
    """

    def __init__(
        self,
        servers: str | Iterable[str | Address],
        *,
        timeout: float | None = None,
        reconnect_delay: float = 1.0,
        max_reconnect_delay: float = 30.0,
        **security: Unpack[Security],
    ) -> None:
        self.timeout = timeout
        self._current: SlaveJob | None = None
        listed = servers if isinstance(servers, str) else list(servers)

        def opener() -> AbstractAsyncContextManager[AsyncSlaves]:
            return open_slaves(
                listed, reconnect_delay=reconnect_delay,
                max_reconnect_delay=max_reconnect_delay, **security,
            )  # fmt: skip

        self._loop = _Loop(opener, "gloom-slaves")

    def __enter__(self) -> Slaves:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Job]:
        while True:
            yield self.job()

    def close(self) -> None:
        self._loop.close()

    disconnect = close

    def join(self, type: Any, timeout: Any = _DEFAULT) -> bool:
        """Serve jobs of `type` on every daemon (re-joined after reconnects)."""
        slaves = self._loop.value
        self._loop.call(lambda: slaves.join(type), self._limit(timeout))
        return True

    def job(self, timeout: Any = _DEFAULT) -> Job:
        """Wait for the next job from any daemon."""
        if self._current is not None and not self._current.answered:
            raise ProtocolError(f"job {self._current.id!r} is not answered yet")
        self._current = self._loop.call(self._loop.value.next_job, self._limit(timeout))
        return Job(self._current.frame)

    def respond(self, body: Any = None, timeout: Any = _DEFAULT) -> bool:
        """Send the current job's result (to the daemon that sent the job)."""
        job = self._held()
        self._loop.call(lambda: job.respond(body), self._limit(timeout))
        return True

    def fail(self, category: str = "ERROR", reason: Any = None, timeout: Any = _DEFAULT) -> bool:
        """Report the current job as failed (``ERROR``, ``TIMEOUT``, ``CRASH``, ``HALTED``)."""
        job = self._held()
        self._loop.call(lambda: job.fail(category, reason), self._limit(timeout))
        return True

    def progress(self, value: Any, timeout: Any = _DEFAULT) -> None:
        """Send a progress value for the current job."""
        job = self._held()
        self._loop.call(lambda: job.progress(value), self._limit(timeout))

    def _held(self) -> SlaveJob:
        if self._current is None:
            raise ProtocolError("no job is held")
        return self._current

    def _limit(self, timeout: Any) -> float | None:
        limit: float | None = self.timeout if timeout is _DEFAULT else timeout
        return limit
