"""The websocket job service: trio-websocket I/O around the sans-IO parts.

One task per connection, one task per job, reports scheduled per listener.
`WsJobdService` is what `gloomd --ws-port` runs (a `gloomd.service.Service`);
`serve` runs it on its own.  Every cap and timeout comes from
`limits.WsLimits`; frames are encoded by `report_encoding`.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from gloomwire.auth import token_matches
from gloomwire.logformat import event

from ..attach import Registry
from ..logs import RateLimitedLog
from ..service import Service
from .directory import JobFunction, JobsDirectory
from .errors import IdleTimeoutError, JobError, error_frame, job_failed_frame
from .job import Job
from .limits import DEFAULT_LIMITS, WsLimits
from .load import LoadSampler, LoadSamplingError, SystemLoad, SystemOverloadError, check_load
from .report_encoding import encode_report
from .request import IdentKey, JobRequest, ReportOptions, ident_key, parse_request

__all__ = ["CLOSE_TIMEOUT", "SEND_TIMEOUT", "WsJobService", "WsJobdService", "serve"]

# The logger of the service as a whole: operators filter on "gloomd.wsjobd".
log = logging.getLogger("gloomd.wsjobd")

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


class _Client:
    """Keeps one connection counted in ``client_number`` until its close begins."""

    __slots__ = ("_service", "closing", "counted")

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
        on running jobs and the message size (see :class:`gloomd.wsjobd.limits.WsLimits`).
    :param send_timeout: seconds one report may take to send before the client is
        considered stuck and dropped.
    :param ssl_context: when not None, the port is TLS-only (``wss://``): the
        TLS handshake must finish within the opening handshake's timeout, and a
        plaintext client is closed without an answer (the daemon passes the
        context of ``--tls-cert``/``--tls-key``, so the ``?token=`` never
        travels in clear).
    """

    def __init__(
        self,
        jobs_dir: str | os.PathLike[str],
        *,
        token: str | None = None,
        limits: WsLimits = DEFAULT_LIMITS,
        send_timeout: float = SEND_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.jobs = JobsDirectory(jobs_dir)
        self.limits = limits
        self._token = token
        self._ssl_context = ssl_context
        self._send_timeout = send_timeout
        # Jobs are capped as a whole (limits.max_jobs, refused over it), so every
        # admitted plain-function job gets its thread at once.
        self._job_threads = trio.CapacityLimiter(limits.max_jobs)
        self._running: Registry[IdentKey, Job] = Registry()
        self._client_number = 0
        # Accepted TCP connections, handshakes included (what limits.max_connections caps).
        self._open_connections = 0
        self._nursery: trio.Nursery | None = None
        self._sampler: LoadSampler | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None
        # Lines a client can cause by connecting go through here (`gloomd.logs`).
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
            event(
                log, "wsjobd_listening", host=host, port=bound, jobs_dir=str(self.jobs.path),
                tls="on" if self._ssl_context is not None else "off",
                auth="on" if self._token is not None else "off",
                max_connections=self.limits.max_connections, max_jobs=self.limits.max_jobs,
            )  # fmt: skip
            task_status.started(bound)

    # -- one connection

    async def _refuse_connection(self, stream: trio.SocketStream) -> None:
        remote = _remote(stream)
        # Under TLS a plaintext answer would be garbage: just close (as the
        # Gloom ports and the HTTP port do).
        if self._ssl_context is None:
            with trio.move_on_after(_REFUSE_SEND_TIMEOUT):
                try:
                    await stream.send_all(_TOO_MANY_CONNECTIONS)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        await stream.aclose()
        self._events.log(
            logging.WARNING, "wsjobd_too_many_connections", remote=remote,
            cap=self.limits.max_connections,
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
        carried: trio.abc.Stream | None = watched
        try:
            async with trio.open_nursery() as nursery:
                request: WebSocketRequest | None = None
                with trio.move_on_after(self.limits.handshake_timeout) as handshake:
                    watched.on_hang_up = handshake.cancel
                    if self._ssl_context is not None:
                        carried = await self._tls_handshake(watched, remote)
                    if carried is not None:
                        request = await wrap_server_stream(
                            nursery, carried, max_message_size=self.limits.max_message
                        )
                watched.on_hang_up = None
                if request is not None:
                    await self._handle_connection(request, remote)
                elif carried is not None and trio.current_time() >= handshake.deadline:
                    self._events.log(
                        logging.INFO, "wsjobd_handshake_timeout", remote=remote,
                        seconds=self.limits.handshake_timeout,
                    )  # fmt: skip
                # Ends trio-websocket's reader task, whatever state it is in.
                nursery.cancel_scope.cancel()
        except Exception as exc:
            self._events.log(
                logging.ERROR, "wsjobd_connection_failed", remote=remote,
                error=type(exc).__name__, exc_info=exc,
            )  # fmt: skip
        finally:
            self._open_connections -= 1
            await stream.aclose()

    async def _tls_handshake(
        self, watched: _HangUpWatch, remote: str
    ) -> trio.SSLStream[Any] | None:
        """The server side of TLS over an accepted connection, done before the upgrade.

        Done here rather than left to the first read, so that a plaintext
        client (or a bad certificate) is one rate-limited line and a close,
        not an exception out of trio-websocket's reader.  None: it failed.
        """
        assert self._ssl_context is not None
        tls = trio.SSLStream(watched, self._ssl_context, server_side=True)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__ or exc
            self._events.log(
                logging.WARNING, "wsjobd_tls_error", remote=remote,
                error=str(cause) or type(cause).__name__,
            )  # fmt: skip
            return None
        return tls

    def _authorized(self, target: str) -> bool:
        assert self._token is not None
        query = urllib.parse.urlsplit(target).query
        given = urllib.parse.parse_qs(query, keep_blank_values=True).get("token", [])
        if len(given) != 1:
            return False
        return token_matches(given[0], self._token)

    async def _handle_connection(self, request: WebSocketRequest, remote: str) -> None:
        if self._token is not None and not self._authorized(request.path):
            self._events.log(logging.INFO, "wsjobd_unauthorized", remote=remote)
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
                logging.INFO, "wsjobd_idle_timeout", remote=remote,
                seconds=self.limits.idle_timeout,
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
            event(log, "wsjobd_refused", logging.DEBUG, err=type(exc).__name__, val=list(exc.args))
            return error_frame(exc)
        # No await between the lookup and the registration: two clients with the
        # same ident can never both start a job, nor two clients the last free slot.
        _, job = self._running.claim(request.ident_key)  # a live ident attaches (gloomd.attach)
        if job is not None:
            event(log, "wsjobd_attached", logging.DEBUG, ident=request.ident, func=request.func)
        elif len(self._running) >= self.limits.max_jobs:
            # Attaching is still fine: it starts nothing.  Refused rather than
            # queued, so a flood costs no memory for jobs that are not running.
            self._events.log(
                logging.WARNING, "wsjobd_too_many_jobs", remote=remote, cap=self.limits.max_jobs
            )
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
        self._nursery.start_soon(self._run_job, request.ident_key, job, func, request.func)
        event(log, "wsjobd_started", logging.DEBUG, ident=request.ident, func=request.func)
        return job

    async def _run_job(self, key: IdentKey, job: Job, func: JobFunction, name: str) -> None:
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
            self._events.log(
                logging.INFO, "wsjobd_job_failed", ident=job.ident, func=name,
                error=f"{type(exc).__name__}: {exc}", exc_info=exc,
            )  # fmt: skip
            # The traceback's frames hold `job`: kept in job.err, it would make
            # a cycle that only a full garbage collection frees.
            job.err = exc.with_traceback(None)
        finally:
            # Deduplication lasts while the job runs: a later client with this
            # ident starts a fresh job (pykit's test_same_ident_different_job).
            if self._running.get(key) is job:
                del self._running[key]
            job._finish()
            event(log, "wsjobd_ended", logging.DEBUG, ident=job.ident, func=name)

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
            event(log, "wsjobd_listener_gone", logging.DEBUG, ident=job.ident)

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
    limits: WsLimits = DEFAULT_LIMITS,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the websocket job service on its own until cancelled.

    ``task_status.started(bound_port)`` is called once it is listening, so
    ``port=0`` works with ``await nursery.start(serve, host, 0, jobs_dir)``.
    With `ssl_context` it serves ``wss://`` only.  (``gloomd --ws-port``
    runs the same service through `WsJobdService`.)
    """
    service = WsJobService(jobs_dir, token=token, limits=limits, ssl_context=ssl_context)
    await service.run(host, port, task_status=task_status)


class WsJobdService(Service):
    """The websocket job service as one of the daemon's services (``gloomd --ws-port``).

    `jobs` is built here, before the service runs, so that the HTTP port can
    count its connections (`WsJobService.open_connections`).
    """

    name = "ws"

    def __init__(
        self,
        host: str,
        port: int,
        jobs_dir: str | os.PathLike[str],
        *,
        token: str | None = None,
        limits: WsLimits = DEFAULT_LIMITS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.jobs = WsJobService(jobs_dir, token=token, limits=limits, ssl_context=ssl_context)

    async def run(
        self, *, task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            bound: int = await nursery.start(self.jobs.run, self.host, self.port)
            task_status.started(f"ws={self.host}:{bound}")
