"""The Gearman way for blocking code: `gloom.Masters`, `gloom.Master`'s calls over
several daemons.

It drives an `AsyncServers` (`gloom.open_masters`) in a trio loop of its own,
on a background thread, so every rule is the trio client's: round robin or
id hash, fail-over with back-off, routing by id, CRASH for a lost daemon's
attached jobs, ``after`` refused across daemons (`SpreadError`), summed
stats.  Results come back through `receive`, in completion order, as from
`gloom.Master`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, Unpack

import trio

from ._connect import Security
from ._servers import Address, AsyncServers, Spread, open_masters
from ._sync import Job
from ._trio_master import Job as AsyncJob
from ._trio_master import new_job_id
from .errors import GloomError, TransportError, WaitTimeout

__all__ = ["Masters"]

_DEFAULT: Any = object()
_T = TypeVar("_T")


class Masters:
    """A blocking master over several independent daemons.

    ``Masters("h1:9998,h2:9998")`` (or a list of "host:port" / (host,
    port)); `spread`, `retry_delay`, `max_retry_delay` and the security
    options as for `gloom.open_masters`; `timeout` is the default time limit
    of each call, as for `gloom.Master`.  Nothing connects until the first
    call.  Close it (or use ``with``) to end the loop thread.
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
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._servers: AsyncServers | None = None
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._closing: trio.Event | None = None
        options: dict[str, Any] = dict(spread=spread, retry_delay=retry_delay)
        options.update(max_retry_delay=max_retry_delay, **security)
        self._thread = threading.Thread(
            target=trio.run, args=(self._main, servers, options), daemon=True, name="gloom-masters"
        )
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    def __enter__(self) -> Masters:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection (each daemon drops this master's attached jobs)."""
        if self._token is not None and self._thread.is_alive():
            closing = self._closing
            assert closing is not None
            trio.from_thread.run_sync(closing.set, trio_token=self._token)
            self._thread.join()

    disconnect = close

    @property
    def servers(self) -> list[str]:
        return self._loop().servers

    def server_of(self, id: Any) -> str | None:
        """The daemon ("host:port") job `id` was sent to, if this client sent it."""
        return self._loop().server_of(id)

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
        servers = self._loop()

        async def submit() -> AsyncJob:
            job = await servers.submit(
                type, body, priority, job_id, job_timeout, after=after, detach=detach,
                delay=delay, retries=retries, backoff=backoff, unique=unique,
            )  # fmt: skip
            assert self._nursery is not None
            self._nursery.start_soon(self._deliver, job)
            return job

        self._call(submit, timeout)
        return job_id

    def receive(self, timeout: Any = _DEFAULT) -> Job:
        """The next result of this client's jobs, from whichever daemon: a `Job`
        with `.id` and `.body`; a failed job raises its `JobFailed`/`JobError`."""
        limit = self.timeout if timeout is _DEFAULT else timeout
        try:
            item = self._results.get(timeout=limit)
        except queue.Empty:
            raise WaitTimeout(f"no result within {limit} s") from None
        if isinstance(item, GloomError):
            raise item
        return item

    def cancel(self, id: Any, timeout: Any = _DEFAULT) -> bool:
        servers = self._loop()
        value: bool = self._call(lambda: servers.cancel(id), timeout)
        return value

    def result(self, id: Any, timeout: Any = _DEFAULT) -> Any:
        servers = self._loop()
        return self._call(lambda: servers.result(id), timeout)

    def stats(self, timeout: Any = _DEFAULT) -> dict[str, Any]:
        """The daemons' statistics, summed (`gloom.AsyncServers.stats`)."""
        servers = self._loop()
        value: dict[str, Any] = self._call(servers.stats, timeout)
        return value

    # -- internals ----------------------------------------------------------------

    def _loop(self) -> AsyncServers:
        if self._servers is None or not self._thread.is_alive():
            raise TransportError("gloom.Masters is closed")
        return self._servers

    def _call(self, call: Callable[[], Awaitable[_T]], timeout: Any) -> _T:
        limit = self.timeout if timeout is _DEFAULT else timeout

        async def bounded() -> _T:
            with trio.fail_after(float("inf") if limit is None else limit):
                return await call()

        try:
            return trio.from_thread.run(bounded, trio_token=self._token)
        except trio.TooSlowError:
            raise WaitTimeout(f"no answer from gloomd within {limit} s") from None

    async def _deliver(self, job: AsyncJob) -> None:
        try:
            body = await job.wait()
        except GloomError as exc:
            self._results.put(exc)
        else:
            self._results.put(Job(id=job.id, body=body))

    async def _main(self, servers: Any, options: dict[str, Any]) -> None:
        try:
            async with open_masters(servers, **options) as spread, trio.open_nursery() as nursery:
                self._servers = spread
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
