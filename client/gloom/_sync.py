"""The blocking client: `Master`, `Slave` and `Job`, with Gloom's shapes.

Code written for Gloom's Python client keeps working after changing the
import: same class names, same positional arguments, same `Job` dict with
`.id`/`.type`/`.body`, same exceptions.  What changes underneath:

* Frames go through the same state machine as the trio client, so a result
  that arrives before its submit's ack is buffered for `receive()` instead of
  being mistaken for the ack (Gloom's client raised ProtocolError there).
* A short read no longer corrupts the stream: partial frames are kept, so a
  `timeout` that fires mid-frame leaves the connection usable.
* `timeout=` is the per-call socket timeout as in Gloom, but bounds the whole
  call, and raises `WaitTimeout` (a `TimeoutError`, as `socket.timeout` was).
* The slave reconnects with back-off when the daemon goes away, and re-joins.
* The lifecycle's admin actions (kick, delete, jobs, pause, resume) are
  blocking calls; `Master.jobs` is a generator that follows the cursor.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar, Unpack

from . import _lifecycle as lifecycle
from ._connect import Backoff, Endpoint, Security, connect_blocking
from ._lifecycle import ANY_TYPE, JobInfo, JobsPage, ListedState
from ._master_protocol import Finished, MasterProtocol, Notice, Progressed, check_specs, new_job_id
from ._protocol import Request
from ._slave_protocol import JobOffered, SlaveProtocol, attempt_of
from ._slave_protocol import Notice as SlaveNotice
from .errors import GloomError, TransportError, WaitTimeout

__all__ = ["Job", "Master", "Slave"]

_DEFAULT: Any = object()
_READ_SIZE = 256 * 1024

Address = tuple[str, int]


class Job(dict[str, Any]):
    """A job or result frame, as a dict (Gloom's shape) with attribute access."""

    @property
    def id(self) -> Any:
        return self.get("id")

    @property
    def type(self) -> Any:
        return self.get("type")

    @property
    def body(self) -> Any:
        return self.get("body")

    @property
    def attempt(self) -> int | None:
        """Delivery count of a job given to a slave: 1 for the first, whose
        frame carries no ``attempt`` (gloomd sends it only on a redelivery).
        None for a result, which has no delivery count."""
        if self.get("action") != "job":
            return self.get("attempt")
        return attempt_of(self)

    @property
    def timeout(self) -> float | None:
        """The job's run-time limit in seconds, if it has one."""
        return self.get("timeout")


def _address(addr: Any, port: int | None, default_port: int) -> Address:
    if isinstance(addr, str):
        return (addr, default_port if port is None else port)
    if port is not None:
        raise TypeError("give either an (host, port) tuple or host and port, not both")
    host, addr_port = addr
    return (host, addr_port)


class _Connection:
    """A blocking socket plus deadline bookkeeping shared by Master and Slave.

    `open` connects through `connect_blocking`, TLS and auth included, so a
    reconnecting slave is wrapped and authenticated exactly like the first
    connection was.  `timeout`, the default limit of each call, also bounds
    the connect (10 s when None).
    """

    def __init__(self, endpoint: Endpoint, timeout: float | None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.error: GloomError | None = None
        self._leftover = b""  # bytes read past the auth reply
        self._heard = False  # a byte came back since `open`

    @property
    def peer(self) -> str:
        return self.endpoint.peer

    def open(self) -> None:
        self.sock, self._leftover = connect_blocking(self.endpoint)
        self.error = None
        self._heard = bool(self._leftover)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def deadline(self, timeout: Any) -> float | None:
        if timeout is _DEFAULT:
            timeout = self.timeout
        return None if timeout is None else time.monotonic() + timeout

    def _lost(self, reason: str) -> TransportError:
        error = TransportError(f"connection to gloomd at {self.peer} {reason}")
        self.error = error
        self.close()
        return error

    def check(self) -> socket.socket:
        if self.sock is None:
            raise TransportError(str(self.error or f"not connected to gloomd at {self.peer}"))
        return self.sock

    def send(self, data: bytes, deadline: float | None) -> None:
        sock = self.check()
        try:
            sock.settimeout(_remaining(deadline))
            sock.sendall(data)
        except TimeoutError:
            # Part of a frame may be out: the stream cannot be trusted any more.
            raise self._lost("timed out while sending; connection closed") from None
        except OSError as exc:
            raise self._lost(f"lost: {exc}") from None

    def recv(self, deadline: float | None) -> bytes:
        sock = self.check()
        if self._leftover:
            data, self._leftover = self._leftover, b""
            return data
        try:
            sock.settimeout(_remaining(deadline))
            data = sock.recv(_READ_SIZE)
        except TimeoutError:
            raise WaitTimeout(f"no answer from gloomd at {self.peer} in time") from None
        except OSError as exc:
            raise self._lost(f"lost: {exc}") from None
        if not data:
            hint = "" if self._heard else self.endpoint.tls_hint
            raise self._lost(f"closed by gloomd{hint}")
        self._heard = True
        return data


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise WaitTimeout("timed out waiting for gloomd")
    return left


class _Receiver(Protocol):
    """What `_Endpoint` needs of a sans-IO protocol."""

    def receive_data(self, data: bytes | bytearray) -> Sequence[object]: ...

    def connection_lost(self, error: GloomError) -> object: ...


_P = TypeVar("_P", bound=_Receiver)


class _Endpoint(Generic[_P]):
    """What the blocking master and slave share: a request sent, then frames
    pumped until its answer arrives (each subclass handles what else comes)."""

    _conn: _Connection
    _proto: _P

    def _pump(self, deadline: float | None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _receive(self, deadline: float | None) -> list[object]:
        """The protocol's events for the next bytes read; a lost connection
        fails every outstanding request first."""
        try:
            data = self._conn.recv(deadline)
        except TransportError as exc:
            self._proto.connection_lost(exc)
            raise
        return list(self._proto.receive_data(data))

    def _refused(self, error: GloomError) -> None:
        """A notice before the daemon closes: the reason the connection ends."""
        self._conn.error = TransportError(f"gloomd refused the connection: {error}")

    def _call(self, request: Request, data: bytes, timeout: Any) -> Any:
        deadline = self._conn.deadline(timeout)
        self._conn.send(data, deadline)
        while not request.answered:
            self._pump(deadline)
        if request.error is not None:
            raise request.error
        return request.value


class Master(_Endpoint[MasterProtocol]):
    """A blocking master connection (Gloom's `Master`, extended).

    ``Master()`` connects to 127.0.0.1:9998; ``Master(("host", port))`` or
    ``Master("host", port)`` elsewhere.  `timeout` is the default time limit
    of each call, in seconds (None waits forever).  `token` / `token_file` /
    $GLOOMD_TOKEN and `ssl_context` / `tls` / `tls_ca` work as for
    `gloom.open_master`; a refused token raises `Unauthorized`.
    """

    def __init__(
        self,
        addr: Address | str = ("127.0.0.1", 9998),
        port: int | None = None,
        *,
        timeout: float | None = None,
        **security: Unpack[Security],
    ) -> None:
        host, port = _address(addr, port, 9998)
        self._conn = _Connection(Endpoint.configure(host, port, timeout, **security), timeout)
        self._proto = MasterProtocol()
        self._results: deque[Job | GloomError] = deque()
        #: Latest progress value per job id still running (progress frames
        #: never reach `receive`, which returns results only).
        self.progress: dict[Any, Any] = {}
        #: Whether the last `submit` attached to a live job (``unique``), as
        #: DB-API's ``cursor.lastrowid`` tells about the last insert: `submit`
        #: keeps returning the id, as Gloom's did.
        self.last_attached = False
        self._conn.open()

    def __enter__(self) -> Master:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the daemon drops this master's queued jobs."""
        self._conn.close()

    disconnect = close  # Gloom's name

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
        """Submit a job and return its id once acked (`ServerError` if refused).

        `delay`, `retries`, `backoff` and `unique` are the trio client's
        (`gloom.AsyncMaster.submit`); whether a unique submit attached to a
        live job is in `last_attached` afterwards.
        """
        job_id = self.new_job_id() if id is None else id
        spec = {"type": type, "body": body, "priority": priority, "timeout": job_timeout}
        spec.update(detach=detach, after=after, delay=delay, retries=retries, backoff=backoff)
        spec["unique"] = unique
        request, data = self._proto.submit_spec(job_id, spec, True)
        self.last_attached = False
        self._call(request, data, timeout)
        self.last_attached = request.value is True
        return job_id

    def receive(self, timeout: Any = _DEFAULT) -> Job:
        """The next result of this master's jobs, as a `Job` with `.id` and `.body`.

        Results come in completion order.  A failed job raises its `JobFailed`
        or `JobError` (``.id`` says which job).
        """
        deadline = self._conn.deadline(timeout)
        while not self._results:
            self._pump(deadline)
        item = self._results.popleft()
        if isinstance(item, GloomError):
            raise item
        return item

    def do_many(self, jobs: Iterable[Mapping[str, Any]], timeout: Any = _DEFAULT) -> Iterator[Job]:
        """Submit every job (dicts of `submit`'s arguments), then yield the results
        as they complete.  The submits are pipelined, not sent one ack at a time.
        """
        deadline = self._conn.deadline(timeout)
        specs = [dict(spec) for spec in jobs]
        check_specs(specs, also=frozenset({"job_timeout"}))
        requests: list[tuple[Any, Request]] = []
        frames: list[bytes] = []
        for spec in specs:
            if "job_timeout" in spec:  # the blocking client's name for the job's limit
                spec["timeout"] = spec.pop("job_timeout")
            job_id = spec.get("id")
            job_id = self.new_job_id() if job_id is None else job_id
            request, data = self._proto.submit_spec(job_id, spec, True)
            requests.append((job_id, request))
            frames.append(data)
        self._conn.send(b"".join(frames), deadline)
        for _, request in requests:
            while not request.answered:
                self._pump(deadline)
        for _, request in requests:
            if request.error is not None:
                raise request.error
        return self._yield_results({_key(job_id) for job_id, _ in requests}, timeout)

    def _yield_results(self, wanted: set[Any], timeout: Any) -> Iterator[Job]:
        while wanted:
            job = self.receive(timeout)
            wanted.discard(_key(job.id))
            yield job

    def cancel(self, id: Any, timeout: Any = _DEFAULT) -> bool:
        """Remove a queued job: True, or `ServerError` (running, or unknown)."""
        value: bool = self._call(*self._proto.cancel(id), timeout)
        return value

    def stats(self, timeout: Any = _DEFAULT) -> dict[str, Any]:
        """The daemon's statistics (the inner ``stats`` dict)."""
        value: dict[str, Any] = self._call(*self._proto.stats(), timeout)
        return value

    def result(self, id: Any, timeout: Any = _DEFAULT) -> Any:
        """A detached job's result body (raises its failure, or ``not_ready``)."""
        return self._call(*self._proto.result(id), timeout)

    # -- the lifecycle's admin actions (see gloom.AsyncMaster for the rules) --------------

    def kick(self, id: Any, timeout: Any = _DEFAULT) -> bool:
        """Queue a dead job again: True; `InvalidState` if not dead, `UnknownJob` if unknown."""
        value: bool = self._call(*self._proto.kick(id), timeout)
        return value

    def kick_type(self, type: Any, limit: int | None = None, timeout: Any = _DEFAULT) -> int:
        """Queue the `limit` oldest dead jobs of `type` again (all without one): how many."""
        value: int = self._call(*self._proto.kick_type(type, limit), timeout)
        return value

    def delete(self, id: Any, timeout: Any = _DEFAULT) -> bool:
        """Remove a job that is not running: True; `InvalidState` if running, else `UnknownJob`."""
        value: bool = self._call(*self._proto.delete(id), timeout)
        return value

    def jobs(
        self,
        type: Any = ANY_TYPE,
        *,
        state: ListedState | str | None = None,
        limit: int | None = None,
        page_size: int = lifecycle.MAX_PAGE,
        timeout: Any = _DEFAULT,
    ) -> Iterator[JobInfo]:
        """The jobs gloomd holds, as `JobInfo` rows, fetched a page at a time.

        Filters and paging as `gloom.AsyncMaster.jobs`; `timeout` bounds each
        page's request.  Arguments are checked at the call, not at the first row.
        """
        checked_state = None if state is None else lifecycle.listed_state(state)
        lifecycle.check_limit(limit)
        lifecycle.check_page_size(page_size)
        return self._follow_jobs(type, checked_state, limit, page_size, timeout)

    def _follow_jobs(
        self,
        job_type: Any,
        state: ListedState | None,
        left: int | None,
        page_size: int,
        timeout: Any,
    ) -> Iterator[JobInfo]:
        cursor: Any = None
        while left is None or left > 0:
            size = page_size if left is None else min(page_size, left)
            page = self.jobs_page(job_type, state=state, limit=size, cursor=cursor, timeout=timeout)
            for info in page.jobs:
                if left is not None:
                    if left == 0:
                        return
                    left -= 1
                yield info
            cursor = page.next_cursor
            if cursor is None:
                return

    def jobs_page(
        self,
        type: Any = ANY_TYPE,
        *,
        state: ListedState | str | None = None,
        limit: int | None = None,
        cursor: Any = None,
        timeout: Any = _DEFAULT,
    ) -> JobsPage:
        """One page of `jobs`; `cursor` is the previous page's `next_cursor` (None: first)."""
        value: JobsPage = self._call(*self._proto.jobs(type, state, limit, cursor), timeout)
        return value

    def pause(self, type: Any, timeout: Any = _DEFAULT) -> None:
        """Stop handing out jobs of `type` (they stay queued, its slaves stay joined)."""
        self._call(*self._proto.pause(type), timeout)

    def resume(self, type: Any, timeout: Any = _DEFAULT) -> None:
        """Hand out jobs of a paused `type` again."""
        self._call(*self._proto.resume(type), timeout)

    def _pump(self, deadline: float | None) -> None:
        for event in self._receive(deadline):
            if isinstance(event, Finished):
                _forget(self.progress, event.job_id)
                if event.token is None:
                    continue  # a duplicate of an outcome already delivered
                if event.error is not None:
                    self._results.append(event.error)
                else:
                    self._results.append(Job(id=event.job_id, body=event.body))
            elif isinstance(event, Notice):
                self._refused(event.error)
            elif isinstance(event, Progressed) and isinstance(event.job_id, (str, int)):
                self.progress[event.job_id] = event.value
            # Answered: the request object now holds its answer.


def _key(job_id: Any) -> tuple[type, Any]:
    return (type(job_id), job_id)


def _forget(progress: dict[Any, Any], job_id: Any) -> None:
    if isinstance(job_id, (str, int)):
        progress.pop(job_id, None)


class Slave(_Endpoint[SlaveProtocol]):
    """A blocking slave connection (Gloom's `Slave`, extended).

    `job()` waits for the next job and `respond(body)` answers it.  If the
    daemon goes away while the slave waits for a job, it reconnects after
    `reconnect_delay` seconds, doubling up to `max_reconnect_delay`, and
    re-joins; a job held when the connection died cannot be answered
    (`TransportError`): the daemon requeues it.  Security options as for
    `Master`; every reconnect authenticates again, and a token refused then
    raises `Unauthorized` from `job()`.
    """

    def __init__(
        self,
        addr: Address | str = ("127.0.0.1", 9999),
        port: int | None = None,
        *,
        timeout: float | None = None,
        reconnect: bool = True,
        reconnect_delay: float = 1.0,
        max_reconnect_delay: float = 30.0,
        **security: Unpack[Security],
    ) -> None:
        host, port = _address(addr, port, 9999)
        self._conn = _Connection(Endpoint.configure(host, port, timeout, **security), timeout)
        self._proto = SlaveProtocol()
        self._offers: deque[Job] = deque()
        self._backoff = Backoff(reconnect_delay, max_reconnect_delay) if reconnect else None
        self._type: Any = _DEFAULT
        self._generation = 0
        self._holding: int | None = None  # generation of the connection that gave the current job
        self.reconnects = 0
        self._conn.open()

    def __enter__(self) -> Slave:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Job]:
        while True:
            yield self.job()

    def close(self) -> None:
        self._conn.close()

    disconnect = close  # Gloom's name

    def join(self, type: Any, timeout: Any = _DEFAULT) -> bool:
        """Serve jobs of `type` (re-joined automatically after a reconnect)."""
        self._type = type
        self._call(*self._proto.join(type), timeout)
        return True

    def job(self, timeout: Any = _DEFAULT) -> Job:
        """Wait for the next job (reconnecting if the daemon went away)."""
        deadline = self._conn.deadline(timeout)
        while not self._offers:
            try:
                self._pump(deadline)
            except TransportError:
                if self._backoff is None:
                    raise
                self._reopen(self._backoff, deadline)
        self._holding = self._generation
        return self._offers.popleft()

    def respond(self, body: Any = None, timeout: Any = _DEFAULT) -> bool:
        """Send the current job's result."""
        self._check_holding()
        self._holding = None
        self._call(*self._proto.respond(body), timeout)
        return True

    def fail(self, category: str = "ERROR", reason: Any = None, timeout: Any = _DEFAULT) -> bool:
        """Report the current job as failed (``ERROR``, ``TIMEOUT``, ``CRASH``, ``HALTED``)."""
        self._check_holding()
        request, data = self._proto.fail(category, reason)
        self._holding = None
        self._call(request, data, timeout)
        return True

    def progress(self, value: Any, timeout: Any = _DEFAULT) -> None:
        """Send a progress value for the current job (no reply is awaited)."""
        self._check_holding()
        self._conn.send(self._proto.progress(value), self._conn.deadline(timeout))

    def _check_holding(self) -> None:
        if self._holding is not None and self._holding != self._generation:
            self._holding = None
            raise TransportError("connection lost while holding the job; the daemon requeues it")

    def _pump(self, deadline: float | None) -> None:
        for event in self._receive(deadline):
            if isinstance(event, JobOffered):
                self._offers.append(Job(event.frame))
            elif isinstance(event, SlaveNotice):
                self._refused(event.error)

    def _reopen(self, backoff: Backoff, deadline: float | None) -> None:
        """`reconnect`'s blocking twin, bounded by the caller's deadline; re-joins."""
        self._offers.clear()  # jobs of the dead connection were requeued by the daemon
        backoff.reset()
        while True:
            delay = backoff.next()
            if deadline is not None and time.monotonic() + delay > deadline:
                raise WaitTimeout("gloomd unreachable until the deadline")
            time.sleep(delay)
            try:
                self._conn.open()
            except TransportError:
                continue
            self._proto = SlaveProtocol()
            self._generation += 1
            self.reconnects += 1
            if self._type is not _DEFAULT:
                try:
                    self._call(*self._proto.join(self._type), _remaining_timeout(deadline))
                except TransportError:
                    continue
            return


def _remaining_timeout(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.001)
