"""In-process masters: a peer of the broker whose connection is a Python object.

A service that lives in the daemon's own process (the scheduler's `submit`
jobs, the HTTP port's admin API) reaches the broker as any master does,
through a `MasterIngest`: the same validation, check order and error frames
as the master port, byte for byte.  It needs no socket, no TLS and no token:
there is nobody to authenticate in one's own process, and no reason to dial
it over loopback (the scheduler used to, with TLS verification off).

Two ways in:

* `request(frame)`, synchronous: the frames the broker answered at once
  (`stats`, `jobs`, an attached submit);
* `ask(frame)`: the one frame answering an action (the HTTP admin API:
  `stats`, `jobs`, `kick`...), or, when the journal holds that answer until
  its commit (`kick`, `delete`, `pause`... of detached jobs, with
  ``--journal``), a `HeldAnswer` to await: the answer the master port would
  send, an ack once stored or `journal_error` (`gloomd.holds`, the same
  mechanism as a connection's; the held frame is released through `write`);
* `await call(id, type, body, priority=, timeout=, ...)`: submit one job
  and wait for its result by id (the scheduler).  Submits are answered at
  once (the ack, or why not), so no error frame can be matched to the wrong
  one.  A `unique` call may attach to a job this seat already waits on: the
  calls then share one outcome, which outlives any one of them.

Frames the broker queues later (results, `job_error`, `job_failed`) reach
it through the server's flush, like any peer's: `write` below is this
connection's end of it, and `role`, `paused`, `closed` and `abort` are what
the flush reads of a connection.  The peer is registered `internal`: a
master in every rule (its jobs are HALTED at shutdown, removed when it
leaves) that `stats` does not count among connections.

A seat belongs to one run of the server: when the server stops, its
in-process masters are aborted (every waiting call fails, as over a
connection that closed), and the next request takes a new seat.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from gloomwire import codec
from gloomwire.framing import FrameDecoder
from gloomwire.logformat import event
from gloomwire.vocabulary import describe_failure, error, submit

from .broker import Broker
from .holds import Holds
from .ingest import MasterIngest

if TYPE_CHECKING:
    from .server import GloomServer

__all__ = ["HeldAnswer", "LocalMaster", "LocalMasterError", "RemoteJobError", "SubmitRejected"]

log = logging.getLogger("gloomd.local")

#: Frames from our own broker are trusted: no cap but the length prefix's.
_NO_CAP: Final = 1 << 32


class LocalMasterError(RuntimeError):
    """gloomd is not running, or stopped before it answered."""


class SubmitRejected(LocalMasterError):
    """gloomd refused the submit (`id_exists`, `queue_full`, a bad field...)."""

    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(f"submit rejected: {frame.get('error')}: {frame.get('reason')!r}")
        self.frame = frame


class RemoteJobError(LocalMasterError):
    """The job ended with `job_error` (the slave failed it) or `job_failed` (lost, timed out)."""

    def __init__(self, frame: dict[str, Any]) -> None:
        category = frame.get("category")
        detail = f" ({category})" if category else ""
        if frame.get("error") == "job_failed":
            # Its reason is only the id again: say why instead.
            why = describe_failure(category, frame.get("dependency"))
        else:
            why = repr(frame.get("reason"))
        super().__init__(f"{frame.get('error')}{detail}: {why}")
        self.frame = frame


class _Outcome:
    """Where a result (or the error that ends a call) is left for one id.

    `callers` counts the calls waiting on it (more than one when `unique`
    calls attached to one job), so that one of them being cancelled does not
    take the outcome from the others.
    """

    __slots__ = ("callers", "done", "error", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.callers = 0

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.value, self.error = value, error
            self.done.set()


class HeldAnswer:
    """The answer to an `ask` that waits for the journal's commit (`gloomd.holds`)."""

    __slots__ = ("_outcome",)

    def __init__(self, outcome: _Outcome) -> None:
        self._outcome = outcome

    async def wait(self) -> dict[str, Any]:
        """The answer once the commit returned: the ack, or `journal_error`.

        Raises `LocalMasterError` if gloomd stopped before.
        """
        outcome = self._outcome
        await outcome.done.wait()
        if outcome.error is not None:
            raise outcome.error
        answer: dict[str, Any] = outcome.value
        return answer


class LocalMaster:
    """An in-process master of a `GloomServer`'s broker (see the module docstring).

    :param server: the server whose broker to sit at; it need not be running
        yet (a request then raises `LocalMasterError`).
    :param name: the peer's name in the daemon's logs.
    """

    #: What the server's flush reads of a connection: written like a master's
    #: (it may wait for the end of a busy spell), never paused.
    role: Final = "master"
    paused: Final = False
    #: What `GloomServer.write_frames` reads of a connection: never hung up.
    hangup: Final = None

    def __init__(self, server: GloomServer, name: str) -> None:
        self._server = server
        self.name = name
        self.closed = False
        self.overflowed = False
        self._broker: Broker | None = None
        self._ingest: MasterIngest | None = None
        self._decoder = FrameDecoder(_NO_CAP)
        self._waiting: dict[Any, _Outcome] = {}
        #: Answers held by the journal, in the order the broker queued them:
        #: `write` hands the held frames to them as commits release them.
        self._held: deque[_Outcome] = deque()

    # ------------------------------------------------------------ the seat

    def _seat(self) -> tuple[Broker, MasterIngest]:
        broker = self._server.broker
        if broker is None:
            raise LocalMasterError("gloomd is not running")
        if broker is not self._broker or self._ingest is None or self.closed:
            # A broker per server run: take a fresh seat if it was replaced.
            self._broker = broker
            peer = broker.connect_master(self.name, self, internal=True)
            self._ingest = MasterIngest(broker, peer)
            self.closed = self.overflowed = False
        return broker, self._ingest

    def close(self) -> None:
        """Leave the broker, as a master that disconnects: its queued jobs go."""
        self._leave(LocalMasterError(f"{self.name} closed"))

    def _leave(self, reason: BaseException) -> None:
        self.closed = True
        ingest, broker = self._ingest, self._broker
        self._ingest = None
        if ingest is not None and broker is not None:
            ingest.peer.transport = None
            broker.disconnect(ingest.peer)
        waiting, self._waiting = self._waiting, {}
        held, self._held = self._held, deque()
        for outcome in [*waiting.values(), *held]:
            outcome.set(error=reason)

    # ------------------------------------------------------------ frames in and out

    def request(self, frame: dict[str, Any]) -> list[dict[str, Any]]:
        """Send one master frame; return the frames the broker answered at once.

        The frame is encoded and fed to the ingest as a connection's payload
        would be, so the broker judges it exactly as it judges the master
        port's (the decoding policy and the value cap included).  For a
        frame whose answer the journal may hold, use `ask`.
        """
        replies = self._send(frame)
        if isinstance(replies, int):
            raise LocalMasterError(f"{frame.get('action')!r} waits for the journal: use ask()")
        return replies

    def ask(self, frame: dict[str, Any]) -> dict[str, Any] | HeldAnswer:
        """Send one action answered by one frame: that frame, or the `HeldAnswer`
        to await when the journal holds it until its commit (see the module)."""
        replies = self._send(frame)
        count = replies if isinstance(replies, int) else len(replies)
        if count != 1:
            raise RuntimeError(f"the broker answered {count} frames to one action")
        if isinstance(replies, int):
            outcome = _Outcome()
            self._held.append(outcome)  # before any commit can release it
            return HeldAnswer(outcome)
        return replies[0]

    def _send(self, frame: dict[str, Any]) -> list[dict[str, Any]] | int:
        """Feed `frame` to the broker: the frames it answered at once, or how
        many frames it queued if they wait for the journal's commit.

        Held frames stay in the outbox for the flush to seal (`Holds.seal`);
        the frames of an answer that is not held are taken at once, so the
        outbox holds nothing else before a mark.
        """
        broker, ingest = self._seat()
        peer = ingest.peer
        journal = broker.journal
        holds: Holds | None = None if journal is None else journal.holds
        if peer.outbox and (holds is None or holds.marked(peer) is None):
            # Answers queued before, not yet flushed: theirs first.
            self._deliver(self._take(broker, 0))
        start = len(peer.outbox)
        ingest.receive(codec.dumps(frame))
        replies: list[dict[str, Any]] | int
        if holds is not None and holds.marked(peer) is not None:
            replies = len(peer.outbox) - start  # sealed by the flush below
            self._server.flush()
            return replies
        replies = self._take(broker, start)
        # The request may have given other peers frames (a submit hands a
        # job to an idle slave): write them now, not at the next flush.
        if broker.dirty or broker.timers_changed:
            self._server.flush()
        return replies

    def _take(self, broker: Broker, start: int) -> list[dict[str, Any]]:
        """The frames queued for this seat from outbox index `start` on."""
        assert self._ingest is not None
        peer = self._ingest.peer
        items = peer.outbox[start:]
        del peer.outbox[start:]
        if not start:
            peer.pending = 0
            broker.dirty.pop(peer, None)
        return [self._decode(item) for item in items]

    @staticmethod
    def _decode(item: bytes | dict[str, Any]) -> dict[str, Any]:
        # Pre-encoded frames (OK_FRAME, stats) skip their 4-byte length.
        # A frame queued as a dict may carry a body kept as its JSON
        # bytes (`gloomd.fastpath`): encoded and decoded, it is a value.
        decoded = codec.loads(item[4:] if type(item) is bytes else codec.dumps(item))
        assert isinstance(decoded, dict)
        return decoded

    async def call(
        self,
        job_id: Any,
        job_type: Any,
        body: Any,
        *,
        priority: int = 0,
        timeout: float | None = None,
        delay: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        unique: bool = False,
        on_attached: Callable[[], object] | None = None,
    ) -> Any:
        """Submit one job and return the body of its result.

        `delay`, `retries`, `backoff` and `unique` are the lifecycle's submit
        keys, sent only when given.  When gloomd's ack says the submit
        attached to a live job (`unique`), `on_attached` is called, and the
        call waits for that job's outcome, sharing it with a call of this
        seat that already waits on it.

        Raises `LocalMasterError` (not running, or stopped before the
        answer), `SubmitRejected`, or `RemoteJobError`.
        """
        if job_id in self._waiting and not unique:
            # gloomd would answer id_exists too; refusing here keeps the
            # waiting call's result slot from being overwritten.
            raise SubmitRejected(error("id_exists", job_id))
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        for key, value in (("delay", delay), ("retries", retries), ("backoff", backoff)):
            if value is not None:
                extra[key] = value
        if unique:
            extra["unique"] = True
        # The result slot is taken before the submit is sent: with --cluster
        # (or a held answer) the ack and the result may arrive in one write.
        outcome = self._waiting.get(job_id)
        if outcome is None:
            outcome = self._waiting[job_id] = _Outcome()
        outcome.callers += 1
        try:
            replies = self._send(submit(job_id, job_type, body, priority, **extra))
            rest: list[dict[str, Any]] = []
            if isinstance(replies, int):
                # The answer waits for the cluster's step (`gloomd.holds`).
                held = _Outcome()
                self._held.append(held)
                answer = await HeldAnswer(held).wait()
            else:
                answer, rest = replies[0], replies[1:]
            if answer.get("ok") is not True or answer.get("id") != job_id:
                if (
                    answer.get("error") in ("job_error", "job_failed")
                    and answer.get("id") == job_id
                ):
                    raise RemoteJobError(answer)  # e.g. HALTED: the daemon is stopping
                raise SubmitRejected(answer)
            if answer.get("attached") is True and on_attached is not None:
                on_attached()
            self._deliver(rest)  # an `after` that had already failed, say
            await outcome.done.wait()
        finally:
            outcome.callers -= 1
            if not outcome.callers and self._waiting.get(job_id) is outcome:
                del self._waiting[job_id]  # every caller was cancelled while waiting
        if outcome.error is not None:
            raise outcome.error
        return outcome.value

    def _deliver(self, frames: list[dict[str, Any]]) -> None:
        for frame in frames:
            job_id = frame.get("id")
            outcome = self._waiting.get(job_id)
            if outcome is None:
                continue  # progress, or the answer to a call no longer waiting
            if frame.get("error") in ("job_error", "job_failed"):
                del self._waiting[job_id]
                outcome.set(error=RemoteJobError(frame))
            elif "body" in frame:
                del self._waiting[job_id]
                outcome.set(value=frame["body"])

    # ------------------------------------------------------------ the flush's side

    def write(self, data: bytes) -> None:
        """Frames the server's flush, or a commit's release, wrote to this "connection".

        While answers are held (`ask`), the frames that are not a waited
        call's outcome are those answers, in the order they were asked.
        """
        for payload in self._decoder.feed(data):
            frame = codec.loads(payload)
            if self._held and not self._is_outcome(frame):
                self._held.popleft().set(value=frame)
            else:
                self._deliver([frame])

    def write_parts(self, parts: list[bytes]) -> None:
        """`write`, for frames the flush did not join (`Connection.write_parts`)."""
        self.write(b"".join(parts))

    def _is_outcome(self, frame: Any) -> bool:
        return frame.get("id") in self._waiting and (
            "body" in frame or frame.get("error") in ("job_error", "job_failed")
        )

    def abort(self) -> None:
        """The server dropped this peer (it stopped, or the output cap was passed)."""
        if not self.closed:
            event(log, "disconnect", role="local", peer=self.name)
            self._leave(LocalMasterError("gloomd stopped before it answered"))
