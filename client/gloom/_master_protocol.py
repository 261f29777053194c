"""The master side of the protocol as a state machine: bytes in, events out.

Rules it enforces (why the original client needed fixing):

* Replies (acks, error frames, stats, cancel and result answers) come back in
  request order, so they are matched to the oldest outstanding `Request`.
* Results, job failures and progress are matched **by id**, never by order.
  A result may arrive between a submit and its ack, which made Gloom's client
  read a result where it expected an ack.  Here a submit is known by id from
  the moment it is sent, so even a result that overtook its own job's ack
  (possible with other servers) lands on the right job, and the ack that
  follows does not resurrect it.
* A ``result`` request's answer has the same shape as a pushed result.  A
  result-shaped frame is the answer only when the oldest outstanding request
  is a ``result`` for that very id; when this connection also submitted that
  detached job, the job is finished with the same outcome, and the duplicate
  frame that follows finds no job left to finish.
* A shutting-down gloomd answers a submit with ``job_failed`` / ``HALTED``
  instead of an ack.  Such a frame for the submit at the head of the FIFO is
  that submit's answer (any other outcome is matched by id as usual).
* Ids are compared exactly (`id_key`): ``1`` and ``"1"`` are different jobs.
* A ``unique`` submit may attach to a job that is already live (the ack says
  ``"attached": true``), this connection's own included: then several
  submits wait on one id, and its progress and outcome reach every one of
  them.  The extra ones are kept apart (`_also`), so the plain path pays one
  ``setdefault`` per ack and one falsy check per outcome for it.
* The admin actions (kick, delete, jobs, pause, resume) are plain requests
  answered in order; ``delete`` of a job of this connection ends it as
  ``cancel`` does, and an ``invalid_state`` answer names the request's id.

The I/O shells (trio and blocking sockets) feed received bytes to
`receive_data` and act on the events; they never parse frames themselves.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gloomwire import vocabulary

from . import _lifecycle as lifecycle
from ._protocol import Request, RequestQueue, decode_frames, encode, id_key, new_decoder
from .errors import (
    GloomError,
    InvalidState,
    JobCancelled,
    JobFailed,
    ProtocolError,
    ServerError,
    error_from_frame,
)

__all__ = [
    "SUBMIT_KEYS",
    "Answered",
    "Finished",
    "MasterProtocol",
    "Notice",
    "Progressed",
    "check_specs",
    "new_job_id",
]

_OUTCOME_ERRORS = ("job_failed", "job_error")

#: Keys a job spec may hold (`submit_many`, `do_many`): `submit`'s keyword arguments.
SUBMIT_KEYS = frozenset(
    {"type", "body", "priority", "id", "timeout", "after", "detach", *lifecycle.LIFECYCLE_KEYS}
)

#: Requests whose answer ends this connection's job of that id as a cancel does.
_REMOVING = ("cancel", "delete")


def new_job_id() -> str:
    """A fresh job id, as Gloom's client made them (upper-case uuid4 hex)."""
    return uuid.uuid4().hex.upper()


def check_specs(specs: Iterable[Mapping[str, Any]], also: frozenset[str] = frozenset()) -> None:
    """Refuse, before anything is sent, a spec with keys `submit` does not take."""
    for spec in specs:
        unknown = spec.keys() - SUBMIT_KEYS - also
        if unknown:
            raise TypeError(f"unknown submit keys: {', '.join(sorted(unknown))}")


@dataclass(frozen=True)
class Answered:
    """`request` got its reply (see `request.value` / `request.error`).

    For a successful cancel or delete, `cancelled` holds the tokens of this
    connection's submits of the job it removed (none, one, or more than one
    when submits attached to it).  A submit's `request.value` is True when
    the ack said ``attached``.
    """

    request: Request
    cancelled: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Finished:
    """A job of this connection ended: `body` on success, else `error`.

    `token` is what the shell passed to `submit`, or None when no job of this
    connection has that id (a duplicate delivery, or a stale one).
    """

    job_id: Any
    token: Any
    body: Any = None
    error: GloomError | None = None


@dataclass(frozen=True)
class Progressed:
    """A progress frame for a job of this connection."""

    job_id: Any
    token: Any
    value: Any


@dataclass(frozen=True)
class Notice:
    """An error frame that answers no request (e.g. ``too_many_connections``)."""

    error: ServerError


Event = Answered | Finished | Progressed | Notice


class MasterProtocol:
    """Request bookkeeping and frame classification for one master connection."""

    def __init__(self) -> None:
        self._decoder = new_decoder()
        self._requests = RequestQueue()
        # Submits sent but not acked, per id, oldest first.
        self._unacked: dict[tuple[type, Any], deque[Request]] = {}
        # Acked submits whose outcome has not arrived.
        self._live: dict[tuple[type, Any], Request] = {}
        # Further acked submits of a live id (unique ones that attached to a
        # job this connection already waits on), oldest first.
        self._also: dict[tuple[type, Any], list[Request]] = {}

    # -- requests ---------------------------------------------------------------

    def submit(
        self,
        job_id: Any,
        type: Any,
        body: Any,
        *,
        priority: Any = 0,
        timeout: Any = None,
        detach: bool = False,
        after: Iterable[Any] | None = None,
        delay: Any = None,
        retries: Any = None,
        backoff: Any = None,
        unique: bool = False,
        token: Any = None,
    ) -> tuple[Request, bytes]:
        # Gloom's key order first; gloomd's extensions only when used, so a
        # plain submit is byte-for-byte what Gloom's own client sent.  (Added
        # here rather than passed as `extra`: no dict built per plain submit.)
        # The values go as given: gloomd checks them and answers
        # invalid_type/KEY, in one place for every client.
        frame = vocabulary.submit(job_id, type, body, priority)
        if timeout is not None:
            frame["timeout"] = timeout
        if detach:
            frame["detach"] = True
        if after is not None:
            frame["after"] = list(after)
        if delay is not None:
            frame["delay"] = delay
        if retries is not None:
            frame["retries"] = retries
        if backoff is not None:
            frame["backoff"] = backoff
        if unique:
            frame["unique"] = True
        request = Request("submit", job_id, token)
        data = encode(frame)  # before any bookkeeping: an unencodable body changes nothing
        self._unacked.setdefault(id_key(job_id), deque()).append(request)
        self._requests.push(request)
        return request, data

    def submit_spec(
        self, job_id: Any, spec: Mapping[str, Any], token: Any
    ) -> tuple[Request, bytes]:
        """`submit` for a job spec: a mapping of `SUBMIT_KEYS` (id apart)."""
        return self.submit(
            job_id,
            spec.get("type"),
            spec.get("body"),
            priority=spec.get("priority", 0),
            timeout=spec.get("timeout"),
            detach=spec.get("detach", False),
            after=spec.get("after"),
            delay=spec.get("delay"),
            retries=spec.get("retries"),
            backoff=spec.get("backoff"),
            unique=spec.get("unique", False),
            token=token,
        )

    def cancel(self, job_id: Any) -> tuple[Request, bytes]:
        return self._simple("cancel", vocabulary.cancel(job_id), job_id)

    def stats(self) -> tuple[Request, bytes]:
        return self._simple("stats", vocabulary.stats_request(), None)

    def result(self, job_id: Any) -> tuple[Request, bytes]:
        return self._simple("result", vocabulary.result_request(job_id), job_id)

    def kick(self, job_id: Any) -> tuple[Request, bytes]:
        """Queue a dead job again; the answer's value is True."""
        return self._simple("kick", vocabulary.kick(job_id), job_id)

    def kick_type(self, job_type: Any, limit: int | None = None) -> tuple[Request, bytes]:
        """Queue the oldest dead jobs of a type again; the value is how many."""
        frame = vocabulary.kick_type(job_type, lifecycle.check_limit(limit))
        return self._simple("kick_type", frame, None)

    def delete(self, job_id: Any) -> tuple[Request, bytes]:
        """Remove a job that is not running; the value is True."""
        return self._simple("delete", vocabulary.delete(job_id), job_id)

    def jobs(
        self,
        job_type: Any = lifecycle.ANY_TYPE,
        state: lifecycle.ListedState | str | None = None,
        limit: int | None = None,
        cursor: Any = None,
    ) -> tuple[Request, bytes]:
        """One page of the jobs gloomd holds; the value is a `JobsPage`."""
        frame = lifecycle.jobs_request(job_type, state, limit, cursor)
        return self._simple("jobs", frame, None)

    def pause(self, job_type: Any) -> tuple[Request, bytes]:
        return self._simple("pause", vocabulary.pause(job_type), None)

    def resume(self, job_type: Any) -> tuple[Request, bytes]:
        return self._simple("resume", vocabulary.resume(job_type), None)

    def _simple(self, kind: str, frame: dict[str, Any], job_id: Any) -> tuple[Request, bytes]:
        data = encode(frame)
        request = Request(kind, job_id)
        self._requests.push(request)
        return request, data

    # -- receiving --------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        events: list[Event] = []
        for frame in decode_frames(self._decoder, data):
            events.extend(self._handle(frame))
        return events

    def _handle(self, frame: dict[str, Any]) -> list[Event]:
        if "ok" in frame:
            return [self._reply(frame)]
        error = frame.get("error")
        if error is not None and error not in _OUTCOME_ERRORS:
            head = self._requests.head()
            if head is None:
                return [Notice(error_from_frame(frame))]
            self._requests.pop(frame)
            if head.kind == "submit":
                self._forget_unacked(head)
            refusal = error_from_frame(frame)
            if isinstance(refusal, InvalidState) and head.job_id is not None:
                refusal.id = head.job_id  # the frame names the state only
            head.resolve(error=refusal)
            return [Answered(head)]
        if error is not None:
            failure = error_from_frame(frame)
            job_id = getattr(failure, "id", None)
            return self._outcome(job_id, None, failure)
        if "id" in frame and "progress" in frame:
            request = self._lookup(frame["id"])
            token = request.token if request is not None else None
            progressed: list[Event] = [Progressed(frame["id"], token, frame["progress"])]
            if self._also:
                for also in self._also.get(id_key(frame["id"]), ()):
                    progressed.append(Progressed(frame["id"], also.token, frame["progress"]))
            return progressed
        if "id" in frame and "body" in frame:
            return self._outcome(frame["id"], frame["body"], None)
        raise ProtocolError(f"unexpected frame from gloomd: {frame!r:.200}")

    def _reply(self, frame: dict[str, Any]) -> Answered:
        request = self._requests.pop(frame)
        if frame.get("ok") is not True:
            raise ProtocolError(f"unexpected reply to {request.kind}: {frame!r:.200}")
        if request.kind == "submit":
            if "id" in frame and id_key(frame["id"]) != id_key(request.job_id):
                raise ProtocolError(
                    f"ack for id {frame['id']!r} while waiting for {request.job_id!r}"
                )
            self._forget_unacked(request)
            if not request.settled:  # no outcome overtook the ack
                key = id_key(request.job_id)
                if self._live.setdefault(key, request) is not request:
                    # Attached to a job this connection already waits on.
                    self._also.setdefault(key, []).append(request)
            request.resolve(frame.get("attached") is True)
            return Answered(request)
        if request.kind in _REMOVING:
            key = id_key(request.job_id)
            removed = self._live.pop(key, None)
            tokens = () if removed is None else (removed.token,)
            if self._also:
                tokens += tuple(also.token for also in self._also.pop(key, ()))
            request.resolve(True)
            return Answered(request, cancelled=tokens)
        if request.kind == "stats":
            request.resolve(frame.get("stats"))
            return Answered(request)
        return self._admin_reply(request, frame)

    def _admin_reply(self, request: Request, frame: dict[str, Any]) -> Answered:
        """The answers of the lifecycle's admin actions.

        A malformed answer fails its request with `ProtocolError` rather than
        the connection: the frame boundary is intact, so the stream is fine.
        """
        kind = request.kind
        if kind == "kick":
            request.resolve(True)
        elif kind == "kick_type":
            kicked = frame.get("kicked")
            if type(kicked) is int and kicked >= 0:
                request.resolve(kicked)
            else:
                request.resolve(error=ProtocolError(f"kick answer without a count: {frame!r:.200}"))
        elif kind == "jobs":
            try:
                request.resolve(lifecycle.parse_jobs_reply(frame))
            except ProtocolError as exc:
                request.resolve(error=exc)
        elif kind in ("pause", "resume"):
            request.resolve(None)
        else:
            raise ProtocolError(f"unexpected reply to {kind}: {frame!r:.200}")
        return Answered(request)

    def _outcome(self, job_id: Any, body: Any, error: GloomError | None) -> list[Event]:
        events: list[Event] = []
        if isinstance(error, JobFailed) and error.category == "CANCELLED":
            # Another master cancelled this (detached) job.
            error = JobCancelled(job_id)
        head = self._requests.head()
        if head is not None and head.job_id is not None and id_key(head.job_id) == id_key(job_id):
            if head.kind == "submit" and _is_halted(error):
                # gloomd acks a submit before anything else can happen to the
                # job; a shutting-down daemon answers with HALTED *instead*
                # of the ack, so that frame is the answer: never accepted.
                self._requests.pop({})
                self._forget_unacked(head)
                head.resolve(error=error)
                return [Answered(head)]
            if head.kind == "result":
                self._requests.pop({})
                head.resolve(body, error)
                events.append(Answered(head))
        submit = self._settle(job_id)
        if submit is not None or not events:
            token = submit.token if submit is not None else None
            events.append(Finished(job_id, token, body, error))
        if self._also and submit is not None:
            for also in self._also.pop(id_key(job_id), ()):
                also.settled = True
                events.append(Finished(job_id, also.token, body, error))
        return events

    def _settle(self, job_id: Any) -> Request | None:
        """The submit an outcome for `job_id` belongs to, marked as finished."""
        key = id_key(job_id)
        request = self._live.pop(key, None)
        if request is None:
            for waiting in self._unacked.get(key, ()):
                if not waiting.settled:
                    request = waiting
                    break
        if request is not None:
            # Recorded so that the ack that may still follow does not register
            # the job as live again.
            request.settled = True
        return request

    def _lookup(self, job_id: Any) -> Request | None:
        key = id_key(job_id)
        request = self._live.get(key)
        if request is None:
            waiting = self._unacked.get(key)
            if waiting:
                request = waiting[0]
        return request

    def _forget_unacked(self, request: Request) -> None:
        key = id_key(request.job_id)
        waiting = self._unacked.get(key)
        if waiting is not None:
            try:
                waiting.remove(request)
            except ValueError:
                pass
            if not waiting:
                del self._unacked[key]

    # -- teardown ---------------------------------------------------------------

    def connection_lost(self, error: GloomError) -> tuple[list[Request], list[Any]]:
        """Fail every outstanding request; return them and the tokens of unfinished jobs."""
        failed = self._requests.fail_all(error)
        tokens = [r.token for r in self._live.values()]
        for also in self._also.values():
            tokens.extend(r.token for r in also)
        for waiting in self._unacked.values():
            tokens.extend(r.token for r in waiting if not r.settled)
        self._live.clear()
        self._also.clear()
        self._unacked.clear()
        return failed, tokens

    @property
    def outstanding(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._requests.pending)


def _is_halted(error: GloomError | None) -> bool:
    return isinstance(error, JobFailed) and error.category == "HALTED"
