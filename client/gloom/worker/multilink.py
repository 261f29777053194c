"""One slot's slave connections to several daemons (``gloom worker --servers``).

A slot holds one pool process, so it may hold one job at a time, wherever it
comes from.  `MultiLink` keeps one `SlaveLink` per daemon and keeps the
runner's rule (credit = idle processes) across them:

* **Joined everywhere while idle.**  `join` joins the type on every daemon
  connected; a daemon (re)connected while the slot is idle joins at once.
* **The first job wins; the others are parked.**  `next_job` takes a job
  frame from whichever daemon sent one first, and parks the other
  connections (`SlaveLink.leave`: they join a type nobody submits, and a job
  already on its way is put back by its daemon without counting as a loss).
* **Answered where it came from, then joined everywhere again.**  `answer`
  responds on the job's own connection (its daemon offers the next job after
  the reply, as ever) and re-joins the parked ones.
* **A lost daemon is that daemon's business.**  Each connection reconnects
  alone with the run's back-off (`Backoff`); the others keep serving.  A job
  whose connection was lost is abandoned by `jobrun` (its daemon requeued
  it), and `release` re-joins everywhere.  A refused token is final: it is
  raised by the next `next_job`.

Cost: two requests per other daemon per job (park, re-join), neither
awaited on the job's path; one daemon (plain ``--host``) does not go through
here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from .._connect import Backoff, Endpoint
from ..errors import GloomError, Unauthorized
from .link import LinkLost, SlaveLink, open_link

__all__ = ["MultiLink", "open_links"]

_UNSET: Any = object()

#: Seconds a parking (or leaving) connection waits for its daemon's reply
#: before it is closed instead (its daemon then requeues what it sent).
PARK_TIMEOUT = 5.0

#: Told when one daemon's connection is lost: (its "host:port", why, seconds
#: until the next attempt).
OnLost = Callable[[str, str, float], None]


class _Member:
    """One daemon's connection, as the slot sees it."""

    def __init__(self, endpoint: Endpoint, backoff: Backoff) -> None:
        self.endpoint = endpoint
        self.backoff = backoff
        self.link: SlaveLink | None = None
        #: Set when its park (or leave) is answered; None while none is under way.
        self.parked: trio.Event | None = None

    @property
    def usable(self) -> SlaveLink | None:
        link = self.link
        return link if link is not None and link.lost is None else None


class MultiLink:
    """A slot's connections to every daemon; use through `open_links`."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        nursery: trio.Nursery,
        *,
        heartbeat: float,
        liveness: int,
        backoff: Callable[[], Backoff],
        on_lost: OnLost,
    ) -> None:
        self._members = [_Member(endpoint, backoff()) for endpoint in endpoints]
        self._nursery = nursery
        self._heartbeat = heartbeat
        self._liveness = liveness
        self._on_lost = on_lost
        self._type: Any = _UNSET
        self._want = False  # idle: every connection should be joined
        self._current: tuple[_Member, SlaveLink] | None = None
        self._offered = trio.Event()
        self._first = 0  # which daemon is looked at first (turns, for fairness)
        self.fatal: Unauthorized | None = None
        #: Job frames daemons took back when a connection was parked or left.
        self.returned = 0

    # ------------------------------------------------------------ what jobrun uses

    @property
    def lost(self) -> str | None:
        """Why the current job's connection is gone (None while it is alive)."""
        if self._current is None:
            return None
        return self._current[1].lost

    def send_progress(self, body: Any) -> None:
        if self._current is not None:
            self._current[1].send_progress(body)

    async def wait_lost(self) -> None:
        """Return when the current job's connection is lost (never when the others are)."""
        if self._current is None:
            await trio.sleep_forever()
        else:
            await self._current[1].wait_lost()

    # ------------------------------------------------------------ what the slot uses

    @property
    def connected(self) -> int:
        """How many daemons this slot is connected to now."""
        return sum(1 for member in self._members if member.usable is not None)

    async def join(self, job_type: Any) -> None:
        """Serve `job_type` on every daemon (now, and on every reconnect while idle)."""
        self._type = job_type
        self._want = True
        await self._join_all(exclude=None)

    async def next_job(self) -> dict[str, Any]:
        """The first job frame any daemon sends; the other connections are parked."""
        while True:
            if self.fatal is not None:
                raise self.fatal
            offered = self._offered
            count = len(self._members)
            for step in range(count):
                member = self._members[(self._first + step) % count]
                link = member.usable
                if link is None or member.parked is not None:
                    continue
                frame = link.take_nowait()
                if frame is None:
                    continue
                self._first = (self._first + step + 1) % count
                self._want = False
                self._current = (member, link)
                for other in self._members:
                    if other is not member:
                        self._start_park(other)
                return frame
            await offered.wait()

    async def answer(self, frame: dict[str, Any]) -> None:
        """Answer the current job on its connection, then join everywhere again.

        `LinkLost` if that connection is gone (its daemon requeued the job);
        the others are joined again all the same.
        """
        current = self._current
        try:
            if current is None:
                raise LinkLost("no job held")
            await current[1].answer(frame)
        finally:
            await self.release(keep=None if current is None else current[1])

    async def release(self, keep: SlaveLink | None = None) -> None:
        """The slot is free again: join every connection but `keep` (which a
        respond or fail already offered again).

        The joins go out in the background: the slot waits for a job, not for
        their replies, so the other daemons cost no round trip per job.
        """
        self._current = None
        self._want = True
        for member in self._members:
            if member.link is not None and member.link is not keep:
                self._nursery.start_soon(self._join_one, member)
        await trio.lowlevel.checkpoint()

    async def leave(self) -> int:
        """Stop taking jobs everywhere; how many job frames the daemons took back."""
        self._want = False
        for member in self._members:
            self._start_park(member)
        for member in self._members:
            if member.parked is not None:
                await member.parked.wait()
        return self.returned

    # ------------------------------------------------------------ internals

    def _wake(self) -> None:
        offered, self._offered = self._offered, trio.Event()
        offered.set()

    async def _join_all(self, exclude: SlaveLink | None) -> None:
        async with trio.open_nursery() as nursery:
            for member in self._members:
                if member.link is not None and member.link is not exclude:
                    nursery.start_soon(self._join_one, member)

    async def _join_one(self, member: _Member) -> None:
        # Its daemon must have taken back what it sent before the join goes out
        # (a park started meanwhile too: its drain would eat a fresh offer).
        # Nothing checkpoints from here to the join's send.
        while member.parked is not None:
            await member.parked.wait()
        link = member.usable
        if link is None or not self._want or self._type is _UNSET:
            return
        try:
            await link.join(self._type)
        except LinkLost:
            pass  # its own task reconnects, and joins then

    def _start_park(self, member: _Member) -> None:
        """Park a connection in the background.  `parked` is set here, at
        once, so that a join asked for meanwhile waits for the park to be
        answered and goes on the wire after it."""
        link = member.usable
        if link is None or member.parked is not None:
            return
        done = member.parked = trio.Event()
        self._nursery.start_soon(self._park, member, link, done)

    async def _park(self, member: _Member, link: SlaveLink, done: trio.Event) -> None:
        try:
            with trio.move_on_after(PARK_TIMEOUT) as waited:
                self.returned += await link.leave()
            if waited.cancelled_caught:
                link.abort(f"no answer to leaving in {PARK_TIMEOUT:g} s")
        except LinkLost:
            pass
        finally:
            member.parked = None
            done.set()
            self._wake()

    async def _keep(self, member: _Member) -> None:
        """Connect to one daemon, join while the slot is idle, reconnect when lost."""
        while True:
            reason = "closed"
            try:
                async with open_link(
                    member.endpoint, heartbeat=self._heartbeat, liveness=self._liveness
                ) as link:
                    link.on_offer = self._wake
                    member.link = link
                    if self._want and self._type is not _UNSET:
                        await link.join(self._type)
                    member.backoff.reset()
                    self._wake()
                    await link.wait_lost()
                    reason = link.lost or reason
            except Unauthorized as exc:
                # The daemon's token changed under us: no retry can help.
                self.fatal = exc
                member.link = None
                self._wake()
                return
            except (OSError, trio.TooSlowError, LinkLost, GloomError) as exc:
                reason = str(exc)
            member.link = None
            self._wake()
            delay = member.backoff.next()
            self._on_lost(member.endpoint.peer, reason, delay)
            await trio.sleep(delay)


@asynccontextmanager
async def open_links(
    endpoints: Sequence[Endpoint],
    *,
    heartbeat: float,
    liveness: int,
    backoff: Callable[[], Backoff],
    on_lost: OnLost,
) -> AsyncIterator[MultiLink]:
    """One connection per daemon, each kept up by its own task, for the block.

    Nothing here raises for a daemon that cannot be reached: it is tried
    again after the back-off, and the slot serves the others meanwhile.
    """
    async with trio.open_nursery() as nursery:
        links = MultiLink(
            endpoints,
            nursery,
            heartbeat=heartbeat,
            liveness=liveness,
            backoff=backoff,
            on_lost=on_lost,
        )
        for member in links._members:
            nursery.start_soon(links._keep, member)
        try:
            yield links
        finally:
            nursery.cancel_scope.cancel()
