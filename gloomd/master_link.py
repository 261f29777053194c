"""A small master connection to gloomd, for the scheduler's `submit` jobs.

`MasterLink.call(id, type, body)` submits one job and returns its result
body, so a submitted job looks to the scheduler like any other coroutine: it
is "running" (and counts against `concurrence_n`) until gloomd answers for its
id.  The link connects lazily and reconnects on the next call after a failure,
so a daemon that is down at fire time costs one failed fire, never the
scheduler.

Submits go one at a time (send, then wait for the ack), which is what lets an
error frame without an `id` (`invalid_type`/`"priority"`) be matched to its
submit; results still arrive by id in any order, as the protocol allows.
Jobs are submitted attached, so when the connection drops gloomd forgets them
and every waiting call fails with `MasterLinkError`.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import trio

from gloomwire import codec
from .firetime import ScheduleError
from gloomwire.framing import FrameDecoder, encode_frame

__all__ = ["MasterLink", "MasterLinkError", "RemoteJobError", "SubmitRejected"]

log = logging.getLogger(__name__)


class MasterLinkError(ScheduleError):
    """gloomd could not be reached, or the connection was lost before the answer."""


class SubmitRejected(ScheduleError):
    """gloomd refused the submit (`id_exists`, `queue_full`, a bad field...)."""

    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(f"submit rejected: {frame.get('error')}: {frame.get('reason')!r}")
        self.frame = frame


class RemoteJobError(ScheduleError):
    """The job ended with `job_error` (the slave failed it) or `job_failed` (lost, timed out)."""

    def __init__(self, frame: dict[str, Any]) -> None:
        category = frame.get("category")
        detail = f" ({category})" if category else ""
        super().__init__(f"{frame.get('error')}{detail}: {frame.get('reason')!r}")
        self.frame = frame


def _why(exc: OSError) -> str:
    """The useful part of a connect error ("Connection refused").

    trio wraps the per-address errors in an ExceptionGroup behind a generic
    "all attempts to connect ... failed".
    """
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        reasons = {getattr(e, "strerror", None) or str(e) for e in cause.exceptions}
        return "; ".join(sorted(reasons))
    return exc.strerror or str(exc)


class _Outcome:
    """Where the reader leaves the answer for one id."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.value, self.error = value, error
            self.done.set()


class _Connection:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.closed = False
        self.results: dict[Any, _Outcome] = {}
        self.ack: tuple[Any, _Outcome] | None = None

    def fail_all(self, error: BaseException) -> None:
        self.closed = True
        if self.ack is not None:
            self.ack[1].set(error=error)
        for outcome in self.results.values():
            outcome.set(error=error)
        self.results.clear()

    def dispatch(self, frame: Any) -> None:
        if not isinstance(frame, dict):
            log.warning("gloomd sent a non-object frame: %.200r", frame)
            return
        error = frame.get("error")
        if error is not None:
            # job_failed carried only `reason: ID` in Gloom; gloomd adds `id`.
            job_id = frame.get("id", frame.get("reason"))
            if error in ("job_error", "job_failed") and job_id in self.results:
                self.results.pop(job_id).set(error=RemoteJobError(frame))
            elif self.ack is not None:
                self.ack[1].set(error=SubmitRejected(frame))
            else:
                log.warning("unexpected error frame from gloomd: %.200r", frame)
            return
        if frame.get("ok") is True and self.ack is not None and frame.get("id") == self.ack[0]:
            self.ack[1].set()
            return
        if "id" in frame and "body" in frame and frame["id"] in self.results:
            self.results.pop(frame["id"]).set(value=frame["body"])
        # progress frames and anything else: nothing to do.


class MasterLink:
    """Submit jobs to gloomd's master port and wait for their results.

    :param host, port: gloomd's master address.
    :param connect_timeout: seconds to wait for the TCP connection.
    :param ack_timeout: seconds to wait for gloomd to acknowledge a submit;
        past it the connection is treated as dead.
    :param token: sent as the first frame when the daemon requires one.
    :param ssl_context: speak TLS (the daemon runs with `--tls-cert`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 5.0,
        ack_timeout: float = 30.0,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.token = token
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self._conn: _Connection | None = None
        self._nursery: trio.Nursery | None = None
        self._submit_lock = trio.Lock()

    async def run(
        self, *, task_status: trio.TaskStatus[MasterLink] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the reader tasks; cancel this to close the connection."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _connect(self) -> _Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._nursery is None:
            raise RuntimeError("MasterLink.run() is not running")
        where = f"{self.host}:{self.port}"
        try:
            with trio.fail_after(self.connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(self.host, self.port)
                if self.ssl_context is not None:
                    stream = trio.SSLStream(stream, self.ssl_context, server_hostname=self.host)
                    await stream.do_handshake()
                if self.token is not None:
                    # The daemon answers {"ok":true} (ignored by dispatch) or
                    # refuses and closes, which fails the next call clearly.
                    await stream.send_all(encode_frame({"action": "auth", "token": self.token}))
        except trio.TooSlowError as exc:
            raise MasterLinkError(f"cannot reach gloomd at {where}: timed out") from exc
        except OSError as exc:
            raise MasterLinkError(f"cannot reach gloomd at {where}: {_why(exc)}") from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise MasterLinkError(f"cannot reach gloomd at {where}: {exc!r}") from exc
        conn = self._conn = _Connection(stream)
        self._nursery.start_soon(self._read, conn)
        return conn

    async def _read(self, conn: _Connection) -> None:
        decoder = FrameDecoder()
        reason = "connection to gloomd closed"
        try:
            async with conn.stream:
                while True:
                    data = await conn.stream.receive_some(65536)
                    if not data:
                        break
                    for payload in decoder.feed(data):
                        try:
                            conn.dispatch(codec.loads(payload))
                        except codec.DecodeError:
                            log.warning("gloomd sent undecodable JSON: %.200r", payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ValueError) as exc:
            reason = f"connection to gloomd lost: {exc!r}"
        finally:
            conn.fail_all(MasterLinkError(reason))

    async def call(
        self,
        job_id: Any,
        job_type: Any,
        body: Any,
        *,
        priority: int = 0,
        timeout: float | None = None,
    ) -> Any:
        """Submit one job and return the body of its result.

        Raises `MasterLinkError` (unreachable or lost), `SubmitRejected`, or
        `RemoteJobError`.
        """
        frame: dict[str, Any] = {
            "action": "submit", "id": job_id, "type": job_type, "priority": priority, "body": body,
        }  # fmt: skip
        if timeout is not None:
            frame["timeout"] = timeout
        result = _Outcome()
        async with self._submit_lock:
            conn = await self._connect()
            if job_id in conn.results:
                # gloomd would answer id_exists too; refusing here keeps the
                # waiting call's result slot from being overwritten.
                raise SubmitRejected({"error": "id_exists", "reason": job_id})
            ack = _Outcome()
            conn.ack = (job_id, ack)
            conn.results[job_id] = result
            try:
                await conn.stream.send_all(encode_frame(frame))
                with trio.fail_after(self.ack_timeout):
                    await ack.done.wait()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                conn.fail_all(MasterLinkError(f"connection to gloomd lost: {exc!r}"))
                await conn.stream.aclose()
            except trio.TooSlowError:
                conn.fail_all(
                    MasterLinkError(f"gloomd did not acknowledge within {self.ack_timeout} s")
                )
                await conn.stream.aclose()
            finally:
                conn.ack = None
            if ack.error is not None:
                conn.results.pop(job_id, None)
                raise ack.error
        try:
            await result.done.wait()
        finally:
            if conn.results.get(job_id) is result:  # cancelled while waiting
                del conn.results[job_id]
        if result.error is not None:
            raise result.error
        return result.value
