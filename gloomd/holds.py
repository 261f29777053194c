"""Held replies: frames that must not leave before a write is durable.

The broker answers at once, in memory; some answers promise more than
memory: the ack of a detached submit says "this job survives a crash", so
it may leave only once the journal's commit holding the job has returned
(durability-and-operations.md section 1).  The same goes for the job frame
that hands a not-yet-committed detached job to a slave (a crash must never
run a job the journal does not know), and for the acks of kick, delete,
cancel and pause.  A cluster backend has the same need (answer once the
shared store has the write): this module knows nothing of SQLite.

How: frames are numbered by *ticket*, the write (a journal commit) they
wait for.  `hold(peer, reason)` is called just before such a frame is sent;
it marks the peer's outbox there.  Before the I/O layer writes outboxes
(once per pass of the loop) `seal` moves each marked peer's frames, from
its mark on, into a `Segment` of the open ticket on `Peer.gated`.  From then
on everything that peer is sent waits behind them (`divert`, at the
flush), so a peer hears in the order it was told.  `close` ends the open
ticket (its write starts) and opens the next one; when that write returns,
`release(ticket, failed)` hands back each peer's frames to write, and on a
failed write replaces each held frame by its `journal_error` (or drops it:
a held job frame, whose job the broker takes back).

Pure: no trio, no I/O; writes complete in ticket order (one at a time).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

from gloomwire.vocabulary import error

from .state import Job, Peer, SlavePeer

__all__ = ["DROP", "READY", "Dispatch", "Holds", "Segment", "divert", "take_ready"]

#: The reason of a held frame that is dropped, not answered, if its write fails.
DROP: Final = object()


class Dispatch:
    """The reason of a held job frame to a slave: dropped if the write fails,
    and if the slave no longer holds that job when it is released (it
    re-joined or left meanwhile, and the broker took the job back)."""

    __slots__ = ("job",)

    def __init__(self, job: Job) -> None:
        self.job = job


#: The ticket of frames that wait for nothing but the flush (see `Holds.seal`).
READY: Final = 0

Frame = bytes | dict[str, Any]


class Segment:
    """A peer's frames waiting for one ticket; `durable` are (index, reason)
    of the frames that a failed write turns into `journal_error` (or drops)."""

    __slots__ = ("durable", "frames", "ticket")

    def __init__(self, ticket: int) -> None:
        self.ticket = ticket
        self.frames: list[Frame] = []
        self.durable: list[tuple[int, Any]] = []


class Holds:
    """The held frames of every peer, by ticket (see the module docstring)."""

    __slots__ = ("_marks", "_waiting", "ticket")

    def __init__(self) -> None:
        #: The ticket frames held now will wait for (the write being collected).
        self.ticket = 1
        #: Peers marked in this pass: outbox index of the first held frame,
        #: and the (index, reason) of each held frame.
        self._marks: dict[Peer, tuple[int, list[tuple[int, Any]]]] = {}
        #: ticket -> peers with a segment of it.
        self._waiting: dict[int, dict[Peer, None]] = {}

    def hold(self, peer: Peer, reason: Any) -> None:
        """The next frame queued for `peer` waits for the open ticket."""
        index = len(peer.outbox)
        mark = self._marks.get(peer)
        if mark is None:
            self._marks[peer] = (index, [(index, reason)])
        else:
            mark[1].append((index, reason))

    def marked(self, peer: Peer) -> int | None:
        """The outbox index of `peer`'s first frame held in this pass, if any
        (an in-process master, `gloomd.local`, reads its answers itself)."""
        mark = self._marks.get(peer)
        return None if mark is None else mark[0]

    def __bool__(self) -> bool:
        """Anything held or marked (the I/O layer must not skip the write)."""
        return bool(self._marks or self._waiting)

    def seal(self) -> None:
        """Move the frames marked in this pass onto their peers' `gated` segments.

        The frames queued before a mark, on a peer that had nothing held
        yet, precede the held ones and may leave now: they become a segment
        of ticket `READY` at the head, which the flush writes (`take_ready`).
        """
        if not self._marks:
            return
        marks, self._marks = self._marks, {}
        ticket = self.ticket
        waiting = self._waiting.setdefault(ticket, {})
        for peer, (start, held) in marks.items():
            out = peer.outbox
            frames = out[start:]
            before = out[:start]
            peer.outbox = []
            peer.pending = 0
            if not frames:  # the peer was dropped meanwhile
                peer.outbox = out
                continue
            gated = peer.gated
            if gated:
                gated[-1].frames.extend(before)  # they wait behind earlier segments
            else:
                gated = peer.gated = deque()
                if before:
                    head = Segment(READY)
                    head.frames = before
                    gated.append(head)
            if gated and gated[-1].ticket == ticket:
                segment = gated[-1]
            else:
                segment = Segment(ticket)
                gated.append(segment)
            base = len(segment.frames) - start
            segment.frames.extend(frames)
            segment.durable.extend((index + base, reason) for index, reason in held)
            waiting[peer] = None
        if not waiting:
            del self._waiting[ticket]

    def divert(self, peer: Peer) -> None:
        divert(peer)

    def close(self) -> int:
        """End the open ticket (its write starts now; seal first); returns it."""
        ticket = self.ticket
        self.ticket += 1
        return ticket

    def defer(self, peer: Peer, ticket: int) -> None:
        """`peer`'s frames held for `ticket` (or earlier) wait for the open
        ticket instead: the answer they hold needs another write (a cluster
        step done in chunks, each its own round trip: a kick of many jobs).
        Everything the peer is sent meanwhile stays behind them.  Call before
        `release(ticket)`; the open ticket must be closed (and released) later."""
        waiting = self._waiting.get(ticket)
        if waiting is None or peer not in waiting:
            return
        del waiting[peer]
        if not waiting:
            del self._waiting[ticket]
        for segment in peer.gated or ():
            if READY < segment.ticket <= ticket:
                segment.ticket = self.ticket
        self._waiting.setdefault(self.ticket, {})[peer] = None

    def release(self, ticket: int, failed: bool) -> list[tuple[Peer, list[Frame]]]:
        """The write of `ticket` returned: each waiting peer's frames to write now."""
        out: list[tuple[Peer, list[Frame]]] = []
        for peer in self._waiting.pop(ticket, {}):
            gated = peer.gated
            frames: list[Frame] = []
            while gated and gated[0].ticket <= ticket:
                segment = gated.popleft()
                if failed and segment.ticket == ticket:
                    _fail(segment)
                elif segment.durable and isinstance(peer, SlavePeer):
                    _taken_back(peer, segment)
                frames.extend(frame for frame in segment.frames if frame is not None)
            if not gated:
                peer.gated = None
            if frames:
                out.append((peer, frames))
        return out


def take_ready(peer: Peer) -> list[Frame]:
    """The frames of a gated peer that may be written now (see `seal`); what
    it was sent since its last write waits behind its held frames."""
    divert(peer)
    gated = peer.gated
    if not gated or gated[0].ticket != READY:
        return []
    frames: list[Frame] = gated.popleft().frames
    if not gated:
        peer.gated = None
    return frames


def divert(peer: Peer) -> None:
    """`peer` has held frames: what it was sent since waits behind them."""
    out = peer.outbox
    if out and peer.gated:
        peer.gated[-1].frames.extend(out)
        peer.outbox = []
        peer.pending = 0


def _fail(segment: Segment) -> None:
    frames: list[Any] = segment.frames
    for index, reason in segment.durable:
        dropped = reason is DROP or isinstance(reason, Dispatch)
        frames[index] = None if dropped else error("journal_error", reason)


def _taken_back(slave: SlavePeer, segment: Segment) -> None:
    frames: list[Any] = segment.frames
    for index, reason in segment.durable:
        if isinstance(reason, Dispatch) and slave.job is not reason.job:
            frames[index] = None
