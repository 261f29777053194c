"""The websocket job service: pykit wsjobd's protocol, served by trio in the gloomd process.

A client opens a websocket, sends one JSON job description and then listens:
progress reports (the job's data dict, or one value of it) arrive at once and then
every ``progress.interval`` seconds, a final report when the job returns (or a
``JobFailedError`` frame when it raises), then a normal close.  Clients naming the
same ``ident`` while the job runs attach to it instead of starting another.
The full contract, and how it differs from pykit, is in
``shared/reference/wsjobd.md`` section 12; the README section shows a session.

The module reads top to bottom in the order a request travels:

1. errors and the error frame shape;
2. :func:`parse_request`, sans-IO: one message in, a validated :class:`JobRequest`
   or an error out, checked in the order the reference fixes;
3. :class:`JobsDirectory`: the server-side directory job functions come from,
   imported as a private package so a client can never reach another module;
4. :class:`Job`: what a job function sees, and its per-listener wake-ups;
5. :class:`WsJobService`: trio-websocket I/O, one task per connection, one task
   per job, reports scheduled per listener; :func:`serve` wraps it for the CLI.

Every cap and timeout (connections, handshake, idle, running jobs, message
size) comes from :class:`gloomd.wslimits.WsLimits`; that module also holds the
descriptor budget the connection cap must fit in.  Frames are encoded by
:mod:`gloomd.report_encoding`, which never sends anything but JSON.

Threads: a plain ``def`` job runs in a worker thread (as in pykit), an ``async
def`` job runs in the service's nursery.  Everything else that could block
(importing job modules, psutil) also runs in threads, so the event loop only ever
encodes JSON and moves bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import importlib.machinery
import importlib.util
import inspect
import keyword
import logging
import math
import os
import re
import sys
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeAlias

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from gloomwire import codec
from gloomd.lograte import RateLimitedLog
from gloomd.load import (
    LoadSampler,
    LoadSamplingError,
    SystemLoad,
    SystemOverloadError,
    Thresholds,
    check_load,
)
from gloomd.report_encoding import encode_report
from gloomd.wslimits import WsLimits

__all__ = [
    "IdleTimeoutError",
    "InvalidMessageError",
    "InvalidProgressError",
    "Job",
    "JobError",
    "JobFailedError",
    "JobRequest",
    "JobsDirectory",
    "LoadingError",
    "ReportOptions",
    "SystemOverloadError",
    "WsJobService",
    "parse_request",
    "serve",
]

log = logging.getLogger(__name__)

# pykit's defaults.
DEFAULT_REPORT_INTERVAL = 5.0
DEFAULT_CPU_SAMPLE_INTERVAL = 0.02
MAX_CPU_SAMPLE_INTERVAL = 10.0
# A positive interval is valid, but one of a microsecond would have the server
# encode and send reports in a tight loop for one client; below this floor the
# reports simply come as fast as the floor allows.
MIN_REPORT_INTERVAL = 0.01
# How long a client may take over the closing handshake, and how long one report
# may sit unsent (a client that stopped reading) before the connection is
# dropped.  The opening handshake's limit is WsLimits.handshake_timeout.
CLOSE_TIMEOUT = 5.0
SEND_TIMEOUT = 30.0
# The answer to a connection over WsLimits.max_connections, written at once
# without reading the request, so the refusal costs no descriptor-time.
_TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n"
)
# Writing ~140 bytes to a socket just accepted only fills its empty send buffer;
# the bound is there so a refusal can never hold up the accept loop.
_REFUSE_SEND_TIMEOUT = 0.5


# --------------------------------------------------------------------------- errors
# pykit's tree (clients match on these class names), plus JobFailedError for the
# explicit failure frame.  SystemOverloadError lives in gloomd.load, outside it.


class JobError(Exception):
    """A job description was refused; args[0] is the message the client sees."""


class InvalidMessageError(JobError):
    """The job description is malformed or has a field of the wrong type."""


class InvalidProgressError(InvalidMessageError):
    """The ``progress`` field, or one of its keys, is malformed."""


class LoadingError(JobError):
    """The named job function cannot be found or imported in the jobs directory."""


class JobFailedError(JobError):
    """Sent, never raised: the job function raised; args[0] is "ExcType: message"."""


class IdleTimeoutError(JobError):
    """Sent, never raised: no job description came within WsLimits.idle_timeout."""


def error_frame(exc: Exception) -> dict[str, Any]:
    """pykit's error shape: the class name and the exception's args as a list."""
    return {"err": type(exc).__name__, "val": list(exc.args)}


# ----------------------------------------------------------------- parsing, sans-IO

IdentKey: TypeAlias = tuple[str, Any]

# ASCII only: Python would NFKC-normalise a non-ASCII identifier in source but
# not in a module file name, and nobody needs that ambiguity in a job name.
_FUNC_PART = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_THRESHOLD_NAMES = ("mem_low_threshold", "cpu_low_threshold", "max_client_number")
_EXCERPT = 200


@dataclass(frozen=True, slots=True)
class ReportOptions:
    """How one listener wants its reports; an attaching client brings its own."""

    enabled: bool = True
    interval: float = DEFAULT_REPORT_INTERVAL
    key: str | None = None
    system_load: bool = False
    cpu_sample_interval: float = DEFAULT_CPU_SAMPLE_INTERVAL


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A job description that passed every type check.

    ``data`` is the whole parsed message: it becomes ``job.data`` when this
    request starts the job, so extra keys reach the job function as in pykit.
    """

    ident: Any
    ident_key: IdentKey
    func: str
    func_parts: tuple[str, ...]
    data: dict[str, Any]
    report: ReportOptions
    thresholds: Thresholds | None


def _is_number(value: Any) -> bool:
    # JSON booleans decode to bool, a subclass of int: they are not numbers here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _excerpt(message: str | bytes) -> str:
    text = message if isinstance(message, str) else message.decode("utf-8", "replace")
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


def ident_key(ident: Any) -> IdentKey:
    """The registry key of an ident: JSON type plus value, so ``true`` and ``1`` differ.

    Python's ``True == 1`` would otherwise merge them; ``1`` and ``1.0`` are the same
    JSON number and stay the same key, as they were in pykit.
    """
    if isinstance(ident, bool):
        return ("boolean", ident)
    if isinstance(ident, int | float):
        return ("number", ident)
    if isinstance(ident, str):
        return ("string", ident)
    return ("null", None)


def _parse_progress(data: dict[str, Any]) -> tuple[bool, float, str | None]:
    progress = data.get("progress", {})
    # `progress is False`, not `== False`: pykit's 0 == False turned reports off.
    if progress is None or progress is False:
        return False, DEFAULT_REPORT_INTERVAL, None
    if not isinstance(progress, dict):
        raise InvalidProgressError("the progress in message is not a dictionary")
    interval = progress.get("interval", DEFAULT_REPORT_INTERVAL)
    if not _is_number(interval) or interval <= 0:
        raise InvalidProgressError("progress interval is not a number greater than 0")
    key = progress.get("key")
    if key is not None and not isinstance(key, str):
        raise InvalidProgressError("progress key is not a string")
    return True, max(float(interval), MIN_REPORT_INTERVAL), key


def _parse_check_load(data: dict[str, Any]) -> Thresholds | None:
    check = data.get("check_load")
    if check is None:
        return None
    if not isinstance(check, dict):
        raise InvalidMessageError("check_load is not a dictionary")
    given: dict[str, float] = {}
    for name in _THRESHOLD_NAMES:
        if name in check:
            if not _is_number(check[name]):
                raise InvalidMessageError(f"{name} is not a number")
            given[name] = check[name]
    return Thresholds(**given)


def parse_request(message: str | bytes) -> JobRequest:
    """Validate the first message of a connection, in the reference's order.

    JSON object, ``ident``, ``func``, then the other fields' types (``progress``,
    ``check_load``, ``report_system_load``, ``cpu_sample_interval``, no
    ``jobs_dir``).  The load check and loading the function come later, in the
    service, because they need the machine.
    """
    raw = message.encode("utf-8", "surrogatepass") if isinstance(message, str) else message
    try:
        data = codec.loads(raw)
    except (codec.DecodeError, RecursionError):
        raise InvalidMessageError(
            f"message is not a valid json string: {_excerpt(message)}"
        ) from None
    if not isinstance(data, dict):
        raise InvalidMessageError("message is not dictionary")

    if "ident" not in data:
        raise InvalidMessageError("'ident' is not in message")
    ident = data["ident"]
    if ident is not None and not isinstance(ident, str | int | float):
        raise InvalidMessageError("ident is not a string, number, boolean or null")

    if "func" not in data:
        raise InvalidMessageError("'func' is not in message")
    func = data["func"]
    if not isinstance(func, str):
        raise InvalidMessageError("func is not a string")
    parts = tuple(func.split("."))
    for part in parts:
        if _FUNC_PART.match(part) is None or keyword.iskeyword(part):
            raise InvalidMessageError(
                "func is not a dotted name of identifiers that do not start with '_': "
                + _excerpt(func)
            )

    enabled, interval, key = _parse_progress(data)
    thresholds = _parse_check_load(data)

    report_system_load = data.get("report_system_load")
    if report_system_load is not None and not isinstance(report_system_load, bool):
        raise InvalidMessageError("report_system_load is not a boolean")

    cpu_sample_interval = data.get("cpu_sample_interval", DEFAULT_CPU_SAMPLE_INTERVAL)
    if not _is_number(cpu_sample_interval):
        raise InvalidMessageError("cpu_sample_interval is not a number")
    if not 0 <= cpu_sample_interval <= MAX_CPU_SAMPLE_INTERVAL:
        raise InvalidMessageError(
            f"cpu_sample_interval is not between 0 and {MAX_CPU_SAMPLE_INTERVAL:g}"
        )

    if "jobs_dir" in data:
        raise InvalidMessageError("jobs_dir is set by the server")

    return JobRequest(
        ident=ident,
        ident_key=ident_key(ident),
        func=func,
        func_parts=parts,
        data=data,
        report=ReportOptions(
            enabled=enabled,
            interval=interval,
            key=key,
            system_load=bool(report_system_load),
            cpu_sample_interval=float(cpu_sample_interval),
        ),
        thresholds=thresholds,
    )


# ------------------------------------------------------------------- jobs directory

JobFunction: TypeAlias = Callable[["Job"], Any]


class JobsDirectory:
    """The server-side directory that job functions are loaded from, and only from.

    The directory is imported as a package under a private name derived from its
    real path (``_gloomd_wsjobs_<hash>``), found through its own ``__path__``
    rather than ``sys.path``: ``func="a.b.run"`` can only ever mean
    ``<dir>/a/b.py`` (or ``<dir>/a/b/__init__.py``), function ``run``.  Together
    with the name rules of :func:`parse_request` (no ``_``-prefixed parts, so no
    dunders; no ``..``, slashes or keywords) and the check that the function was
    *defined* in the directory, a client cannot reach ``os.system`` even through a
    job module that imported it.  Job modules import their neighbours relatively
    (``from . import helpers``).

    As in pykit, modules are imported once and stay cached: edit a job module,
    restart the daemon.  Every method here may block (it imports), so the service
    calls them in a worker thread.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        real = os.path.realpath(os.fspath(path))
        if not os.path.isdir(real):
            raise NotADirectoryError(f"jobs directory {os.fspath(path)!r} is not a directory")
        self.path = real
        digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()
        self.package = f"_gloomd_wsjobs_{digest[:16]}"
        self._lock = threading.Lock()

    def _package_module(self) -> ModuleType:
        with self._lock:
            module = sys.modules.get(self.package)
            if module is not None:
                return module
            init = os.path.join(self.path, "__init__.py")
            spec: importlib.machinery.ModuleSpec | None
            if os.path.isfile(init):
                spec = importlib.util.spec_from_file_location(
                    self.package, init, submodule_search_locations=[self.path]
                )
            else:
                # No __init__.py: an empty package whose only content is its path.
                spec = importlib.machinery.ModuleSpec(self.package, None, is_package=True)
                spec.submodule_search_locations = [self.path]
            assert spec is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[self.package] = module
            if spec.loader is not None:
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[self.package]
                    raise
            return module

    def load_module(self, relative_name: str) -> ModuleType:
        """Import ``<dir>/<relative/name>.py``; the empty name is the directory's package."""
        package = self._package_module()
        if not relative_name:
            return package
        return importlib.import_module(f"{self.package}.{relative_name}")

    def _client_text(self, text: str) -> str:
        # Say "jobs.x" to the client, as pykit did, not the private package name.
        return text.replace(self.package, "jobs")

    def load_function(self, parts: Sequence[str]) -> JobFunction:
        """Resolve validated `func` parts to a plain or ``async`` function, or raise LoadingError."""
        module_parts, name = parts[:-1], parts[-1]
        module_path = ".".join(("jobs", *module_parts))
        try:
            module = self.load_module(".".join(module_parts))
        except Exception as exc:  # ImportError, SyntaxError, anything the module raised
            raise LoadingError(
                f"failed to import {module_path}: {self._client_text(repr(exc))}"
            ) from exc
        missing = object()
        func = getattr(module, name, missing)
        # A submodule is an attribute of its package only once something imported
        # it; treating it as absent keeps the answer independent of that history.
        if func is missing or inspect.ismodule(func):
            raise LoadingError(f"function not found: {name!r}")
        if (
            not inspect.isfunction(func)
            or inspect.isgeneratorfunction(func)
            or inspect.isasyncgenfunction(func)
        ):
            raise LoadingError(f"{module_path}.{name} is not a function")
        defined_in = getattr(func, "__module__", None) or ""
        if defined_in != self.package and not defined_in.startswith(self.package + "."):
            # Imported into a job module from elsewhere (`from shutil import rmtree`).
            raise LoadingError(f"{module_path}.{name} is not defined in the jobs directory")
        return func


# ------------------------------------------------------------------------------ jobs


class ProgressAvailable:
    """pykit's ``job.progress_available``, kept so pykit job functions run unchanged.

    pykit made it a ``threading.Event`` that senders waited on and cleared, which
    let one sender swallow another's wake-up.  Here ``set()`` wakes every listener
    at once through their own events, so there is nothing to clear.
    """

    __slots__ = ("_job",)

    def __init__(self, job: Job) -> None:
        self._job = job

    def set(self) -> None:
        self._job.report_now()

    def clear(self) -> None:
        """Nothing to clear: wake-ups are delivered, not stored."""

    def is_set(self) -> bool:
        return False


class Job:
    """What a job function receives: pykit's surface plus :meth:`report_now`.

    * ``data``: the creating client's job description; the job writes its
      progress and results into it (``job.data["result"] = ...``).  Listeners
      only ever send copies of it.
    * ``ident``, ``ctx`` (a dict for the job's own use), ``err`` (the exception
      the job raised, once it has).
    * ``report_now()`` / ``progress_available.set()``: send every listener a report
      now instead of at its next interval.  Safe from the job's thread and from
      trio.
    """

    def __init__(self, ident: Any, data: dict[str, Any], trio_token: trio.lowlevel.TrioToken):
        self.ident = ident
        self.data = data
        self.ctx: dict[str, Any] = {}
        self.err: BaseException | None = None
        self.done = False
        self.finished = trio.Event()
        self._trio_token = trio_token
        self._wakeups: set[trio.Event] = set()
        # Coalesces report_now() bursts from a thread into one loop callback.
        self._wake_scheduled = False

    @property
    def progress_available(self) -> ProgressAvailable:
        """pykit's event, made on demand.

        Stored, it would be a reference cycle (job -> event -> job): a finished
        job, with the client's whole description in ``data``, would then wait
        for a full garbage collection (every --gc-interval, 300 s) instead of
        being freed when its last reference goes.  Measured: 600 finished 1 MB
        jobs of clients that hung up kept the daemon at 708 MB.
        """
        return ProgressAvailable(self)

    def report_now(self) -> None:
        """Ask every listener for an immediate report (callable from any thread)."""
        if self._wake_scheduled:
            return
        self._wake_scheduled = True
        try:
            self._trio_token.run_sync_soon(self._wake_listeners)
        except trio.RunFinishedError:
            pass  # the daemon is gone; nobody is listening

    def _wake_listeners(self) -> None:
        self._wake_scheduled = False
        for wakeup in self._wakeups:
            wakeup.set()

    def _subscribe(self) -> trio.Event:
        wakeup = trio.Event()
        self._wakeups.add(wakeup)
        return wakeup

    def _unsubscribe(self, wakeup: trio.Event) -> None:
        self._wakeups.discard(wakeup)

    def _finish(self) -> None:
        self.done = True
        self.finished.set()
        self._wake_listeners()


def job_failed_frame(exc: BaseException) -> dict[str, Any]:
    """The explicit failure frame that replaces pykit's silently stored ``job.err``."""
    return error_frame(JobFailedError(f"{type(exc).__name__}: {exc}"))


# --------------------------------------------------------------------------- service


class _Client:
    """Keeps one connection counted in ``client_number`` until its close begins."""

    __slots__ = ("_service", "counted", "closing")

    def __init__(self, service: WsJobService) -> None:
        self._service = service
        self.counted = True
        self.closing = False
        service._client_number += 1

    def release(self) -> None:
        if self.counted:
            self.counted = False
            self._service._client_number -= 1


@dataclass(frozen=True, slots=True)
class _Admitted:
    job: Job
    report: ReportOptions


class _CappedListener(trio.abc.Listener[trio.SocketStream]):
    """A TCP listener that hands out at most ``max_connections`` streams at a time.

    The count starts at ``accept``, before any handshake, because a connection
    holds its descriptor from then on; the service's stream handler gives the
    slot back when the stream closes.  A connection over the cap is answered
    with HTTP 503 and closed in the accept loop itself, so refusing a flood
    never holds more than one extra descriptor.
    """

    def __init__(self, inner: trio.SocketListener, service: WsJobService) -> None:
        self._inner = inner
        self._service = service

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._inner.socket

    async def accept(self) -> trio.SocketStream:
        service = self._service
        while True:
            stream = await self._inner.accept()
            if service._open_connections < service.limits.max_connections:
                service._open_connections += 1
                return stream
            await service._refuse_connection(stream)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _HangUpWatch(trio.abc.Stream):
    """The connection's stream, calling ``on_hang_up`` when the peer closes or resets it.

    trio-websocket waits for the opening handshake's request even after its
    reader saw the peer hang up, so a client that connects and leaves would
    keep its slot (and its descriptor) until the handshake timeout; ten
    thousand of those a second would fill any cap.  The service points
    ``on_hang_up`` at the handshake's cancel scope instead.  Costs one call
    per receive.
    """

    __slots__ = ("_stream", "on_hang_up")

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self.on_hang_up: Callable[[], None] | None = None

    def _hung_up(self) -> None:
        if self.on_hang_up is not None:
            self.on_hang_up()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._hung_up()
            raise
        if not data:
            self._hung_up()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


def _remote(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


class WsJobService:
    """The websocket job service; ``await nursery.start(service.run, host, port)``.

    :param jobs_dir: the directory job functions are loaded from (see
        :class:`JobsDirectory`).
    :param token: when not None, the upgrade request must carry ``?token=<token>``
        (URL-encoded); anything else is refused with HTTP 401.
    :param limits: the connection cap, the handshake and idle timeouts, the cap
        on running jobs and the message size (see :class:`gloomd.wslimits.WsLimits`).
    :param send_timeout: seconds one report may take to send before the client is
        considered stuck and dropped.
    """

    def __init__(
        self,
        jobs_dir: str | os.PathLike[str],
        *,
        token: str | None = None,
        limits: WsLimits = WsLimits(),
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.jobs = JobsDirectory(jobs_dir)
        self.limits = limits
        self._token = token
        self._send_timeout = send_timeout
        # Jobs are capped as a whole (limits.max_jobs, refused over it), so every
        # admitted plain-function job gets its thread at once.
        self._job_threads = trio.CapacityLimiter(limits.max_jobs)
        self._running: dict[IdentKey, Job] = {}
        self._client_number = 0
        # Accepted TCP connections, handshakes included (what limits.max_connections caps).
        self._open_connections = 0
        self._nursery: trio.Nursery | None = None
        self._sampler: LoadSampler | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None
        # Lines a client can cause by connecting go through here (lograte's docstring).
        self._events = RateLimitedLog(log)

    @property
    def client_number(self) -> int:
        """Open websocket connections whose close has not begun (pykit's count)."""
        return self._client_number

    @property
    def open_connections(self) -> int:
        """Accepted TCP connections not yet closed, the ones in their handshake included."""
        return self._open_connections

    @property
    def running_jobs(self) -> int:
        """Jobs started and not yet ended (what limits.max_jobs caps)."""
        return len(self._running)

    def running_job(self, ident: Any) -> Job | None:
        """The job running under `ident`, if any (for tests and introspection)."""
        return self._running.get(ident_key(ident))

    async def run(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; ``task_status.started(bound_port)`` once listening.

        Cancelling stops the listener, every connection and every async job.
        Threads running plain-function jobs cannot be interrupted: they are
        abandoned and die with the process, as pykit's daemon threads did.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._sampler = LoadSampler(nursery)
            self._trio_token = trio.lowlevel.current_trio_token()
            listeners = [
                _CappedListener(listener, self)
                for listener in await trio.open_tcp_listeners(port, host=host)
            ]
            await nursery.start(trio.serve_listeners, self._serve_stream, listeners)
            # With a host name resolving to several addresses there is one listener
            # each; the first one's port is the answer (all share it unless port 0).
            bound = listeners[0].socket.getsockname()[1]
            log.info(
                "event=wsjobd_listening host=%s port=%d jobs_dir=%s max_connections=%d"
                " max_jobs=%d",
                host, bound, self.jobs.path, self.limits.max_connections, self.limits.max_jobs,
            )  # fmt: skip
            task_status.started(bound)

    # -- one connection

    async def _refuse_connection(self, stream: trio.SocketStream) -> None:
        remote = _remote(stream)
        with trio.move_on_after(_REFUSE_SEND_TIMEOUT):
            try:
                await stream.send_all(_TOO_MANY_CONNECTIONS)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await stream.aclose()
        self._events.log(
            logging.WARNING, "wsjobd_too_many_connections", "remote=%s cap=%d",
            remote, self.limits.max_connections,
        )  # fmt: skip

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        """One accepted connection, from the opening handshake to the closed socket.

        trio-websocket's own server does the same in ``WebSocketServer``; doing
        it here lets the connection count start at accept (:class:`_CappedListener`)
        and end only when the descriptor is closed.  Nothing may escape: an
        exception here would tear down the listener and every connection.
        """
        remote = _remote(stream)
        watched = _HangUpWatch(stream)
        try:
            async with trio.open_nursery() as nursery:
                request: WebSocketRequest | None = None
                with trio.move_on_after(self.limits.handshake_timeout) as handshake:
                    watched.on_hang_up = handshake.cancel
                    request = await wrap_server_stream(
                        nursery, watched, max_message_size=self.limits.max_message
                    )
                watched.on_hang_up = None
                if request is not None:
                    await self._handle_connection(request, remote)
                elif trio.current_time() >= handshake.deadline:
                    self._events.log(
                        logging.INFO, "wsjobd_handshake_timeout", "remote=%s seconds=%g",
                        remote, self.limits.handshake_timeout,
                    )  # fmt: skip
                # Ends trio-websocket's reader task, whatever state it is in.
                nursery.cancel_scope.cancel()
        except Exception:
            self._events.log(
                logging.ERROR, "wsjobd_connection_failed", "remote=%s", remote, exc_info=True
            )
        finally:
            self._open_connections -= 1
            await stream.aclose()

    def _authorized(self, target: str) -> bool:
        assert self._token is not None
        query = urllib.parse.urlsplit(target).query
        given = urllib.parse.parse_qs(query, keep_blank_values=True).get("token", [])
        if len(given) != 1:
            return False
        return hmac.compare_digest(given[0].encode("utf-8"), self._token.encode("utf-8"))

    async def _handle_connection(self, request: WebSocketRequest, remote: str) -> None:
        if self._token is not None and not self._authorized(request.path):
            self._events.log(logging.INFO, "wsjobd_unauthorized", "remote=%s", remote)
            await request.reject(401, body=b"missing or wrong token\n")
            return
        ws = await request.accept()
        client = _Client(self)
        try:
            await self._converse(ws, client, remote)
        except (ConnectionClosed, trio.TooSlowError):
            pass  # the client went away or stopped reading
        finally:
            client.release()
            with trio.move_on_after(CLOSE_TIMEOUT):
                await ws.aclose()

    async def _converse(self, ws: WebSocketConnection, client: _Client, remote: str) -> None:
        message: str | bytes | None = None
        with trio.move_on_after(self.limits.idle_timeout):
            message = await ws.get_message()
        if message is None:
            self._events.log(
                logging.INFO, "wsjobd_idle_timeout", "remote=%s seconds=%g",
                remote, self.limits.idle_timeout,
            )  # fmt: skip
            timeout = f"{self.limits.idle_timeout:g}"
            await self._close(
                ws, client, error_frame(IdleTimeoutError(f"no job description within {timeout} s"))
            )
            return
        # Admission is not tied to the connection: a client may send its job and
        # hang up at once (pykit's tests do), and the job must still start.
        outcome = await self._admit(message, remote)
        if not isinstance(outcome, _Admitted):
            await self._close(ws, client, outcome)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ignore_further_messages, ws, client, nursery.cancel_scope)
            await self._watch(ws, client, outcome.job, outcome.report)
            nursery.cancel_scope.cancel()

    async def _ignore_further_messages(
        self, ws: WebSocketConnection, client: _Client, watching: trio.CancelScope
    ) -> None:
        """Drop later messages (pykit ignored them) and notice a client close at once.

        pykit only noticed a vanished client at its next failed send, up to an
        interval later, and meanwhile still counted it against max_client_number.
        """
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed:
            client.release()
            if not client.closing:
                watching.cancel()

    async def _admit(self, message: str | bytes, remote: str) -> _Admitted | dict[str, Any]:
        """Validate, check the load, load the function, then start or attach."""
        assert self._sampler is not None
        try:
            request = parse_request(message)
            if request.thresholds is not None:
                try:
                    mem, idle = await self._sampler.sample(request.report.cpu_sample_interval)
                except LoadSamplingError as exc:
                    # Cannot tell whether the machine is overloaded: refuse, as
                    # an overloaded machine would be refused.
                    raise SystemOverloadError(str(exc)) from exc
                load = SystemLoad(mem, idle, self._client_number)
                check_load(load, request.thresholds)
            func = await trio.to_thread.run_sync(self.jobs.load_function, request.func_parts)
        except (JobError, SystemOverloadError) as exc:
            log.debug("event=wsjobd_refused err=%s val=%r", type(exc).__name__, exc.args)
            return error_frame(exc)
        # No await between the lookup and the registration: two clients with the
        # same ident can never both start a job, nor two clients the last free slot.
        job = self._running.get(request.ident_key)
        if job is not None:
            log.debug("event=wsjobd_attached ident=%r", request.ident)
        elif len(self._running) >= self.limits.max_jobs:
            # Attaching is still fine: it starts nothing.  Refused rather than
            # queued, so a flood costs no memory for jobs that are not running.
            self._events.log(
                logging.WARNING, "wsjobd_too_many_jobs", "remote=%s cap=%d",
                remote, self.limits.max_jobs,
            )  # fmt: skip
            return error_frame(
                SystemOverloadError(
                    f"running_jobs: {len(self._running)} is at the limit: {self.limits.max_jobs}"
                )
            )
        else:
            job = self._start(request, func)
        return _Admitted(job, request.report)

    # -- jobs

    def _start(self, request: JobRequest, func: JobFunction) -> Job:
        assert self._nursery is not None and self._trio_token is not None
        job = Job(request.ident, request.data, self._trio_token)
        self._running[request.ident_key] = job
        self._nursery.start_soon(self._run_job, request.ident_key, job, func)
        log.debug("event=wsjobd_started ident=%r func=%s", request.ident, request.func)
        return job

    async def _run_job(self, key: IdentKey, job: Job, func: JobFunction) -> None:
        try:
            if inspect.iscoroutinefunction(func):
                await func(job)
            else:
                # abandon_on_cancel: a thread cannot be interrupted, and shutting the
                # service down must not wait for a job that never returns.
                await trio.to_thread.run_sync(
                    func, job, limiter=self._job_threads, abandon_on_cancel=True
                )
        except Exception as exc:
            # A failing job is the job author's business, and the client is told;
            # the traceback is kept for whoever debugs the job (at most a burst
            # of them per window: a client can make a failing job fail at will).
            self._events.log(logging.INFO, "wsjobd_job_failed", "ident=%r", job.ident, exc_info=exc)
            # The traceback's frames hold `job`: kept in job.err, it would make
            # a cycle that only a full garbage collection frees.
            job.err = exc.with_traceback(None)
        finally:
            # Deduplication lasts while the job runs: a later client with this
            # ident starts a fresh job (pykit's test_same_ident_different_job).
            if self._running.get(key) is job:
                del self._running[key]
            job._finish()
            log.debug("event=wsjobd_ended ident=%r", job.ident)

    # -- reports

    async def _watch(
        self, ws: WebSocketConnection, client: _Client, job: Job, report: ReportOptions
    ) -> None:
        try:
            if report.enabled:
                await self._report_until_done(ws, job, report)
            else:
                await job.finished.wait()
            final: dict[str, Any] | str | None = None
            if job.err is not None:
                final = job_failed_frame(job.err)
            elif report.enabled:
                final = await self._report_text(job, report)
            await self._close(ws, client, final)
        except (ConnectionClosed, trio.TooSlowError):
            log.debug("event=wsjobd_listener_gone ident=%r", job.ident)

    async def _report_until_done(
        self, ws: WebSocketConnection, job: Job, report: ReportOptions
    ) -> None:
        """Report at once, then on a fixed schedule, plus whenever the job asks.

        The schedule is ``first + k * interval`` (pykit slept `interval` after each
        send, so its reports drifted by the send and sampling time every round).
        A listener that fell more than a whole interval behind skips the missed
        slots instead of sending a burst.
        """
        interval = report.interval
        due = trio.current_time()
        while not job.done:
            # Subscribed before the snapshot is taken: a report_now() that comes
            # while this report is being built or sent triggers another one.
            wakeup = job._subscribe()
            try:
                await self._send(ws, await self._report_text(job, report))
                due += interval
                now = trio.current_time()
                if due < now:
                    due += math.ceil((now - due) / interval) * interval
                with trio.CancelScope(deadline=due):
                    await wakeup.wait()
                if wakeup.is_set():
                    due = trio.current_time()
            finally:
                job._unsubscribe(wakeup)

    async def _report_text(self, job: Job, report: ReportOptions) -> str:
        system_load: dict[str, Any] | None = None
        if report.system_load:
            assert self._sampler is not None
            try:
                mem, idle = await self._sampler.sample(report.cpu_sample_interval)
            except LoadSamplingError:
                pass  # already logged; this report goes out without system_load
            else:
                system_load = SystemLoad(mem, idle, self._client_number).as_dict()
        # The snapshot is taken after sampling so it is as fresh as possible.
        # dict() is a single C call and cannot interleave with the job's thread.
        data = job.data
        payload: Any
        if report.key is None:
            payload = dict(data) if isinstance(data, dict) else data
        else:
            payload = data.get(report.key) if isinstance(data, dict) else None
        if system_load is not None and isinstance(payload, dict):
            payload["system_load"] = system_load
        return encode_report(payload)

    async def _send(self, ws: WebSocketConnection, text: str) -> None:
        # A bare CancelScope rather than fail_after: this runs once per report
        # per listener, and fail_after's generator-based context manager costs
        # several times more.
        with trio.CancelScope(deadline=trio.current_time() + self._send_timeout) as scope:
            await ws.send_message(text)
        if scope.cancelled_caught:
            raise trio.TooSlowError

    async def _close(
        self, ws: WebSocketConnection, client: _Client, last: dict[str, Any] | str | None
    ) -> None:
        """Send an optional last frame, then close normally (code 1000).

        The connection stops counting as a client before anything else, so a
        client arriving meanwhile is not refused because of one that is leaving.
        """
        client.closing = True
        client.release()
        if last is not None:
            await self._send(ws, last if isinstance(last, str) else encode_report(last))
        with trio.move_on_after(CLOSE_TIMEOUT):
            await ws.aclose(1000)


async def serve(
    host: str,
    port: int,
    jobs_dir: str | os.PathLike[str],
    *,
    token: str | None = None,
    limits: WsLimits = WsLimits(),
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the websocket job service until cancelled (what ``gloomd --ws-port`` starts).

    ``task_status.started(bound_port)`` is called once it is listening, so
    ``port=0`` works with ``await nursery.start(serve, host, 0, jobs_dir)``.
    """
    service = WsJobService(jobs_dir, token=token, limits=limits)
    await service.run(host, port, task_status=task_status)

