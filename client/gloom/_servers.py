"""The Gearman way: one client over several independent gloomd daemons.

`open_masters(["h1:9998", "h2:9998"])` gives an `AsyncServers`, which keeps
one `AsyncMaster` per daemon (opened lazily, at its first use) and spreads
the submits over them; the daemons know nothing of one another.

* **Spreading.**  Each submit goes to the next daemon in turn (``spread=
  "round_robin"``), or to the daemon its id hashes to (``spread="hash"``:
  crc32 of the id's JSON, so every client and every run agrees, and
  ``id_exists``, ``unique`` and ``result`` keep their meaning per id).
* **Failing over.**  A daemon that cannot be reached (or refuses the
  connection) is skipped for a back-off period (`Backoff`: 1 s doubling to
  30 s by default) and the submit goes to the next one in the order.  A
  refused token is not skipped: `Unauthorized` is raised, as by one master.
* **Routing by id.**  The client remembers which daemon took which id, so
  `cancel`, `result`, `kick` and `delete` go there (an id it never sent is
  asked of each daemon in turn until one knows it); progress and the final
  frame come back on that daemon's connection into the `Job` handle.
* **A daemon lost with jobs in flight** fails them to the caller as
  `JobFailed` ``CRASH`` with the id as reason, as a slave crash would; a
  detached job is not failed by the daemon's loss (it lives on there): its
  handle ends with `TransportError` and `result` fetches it once the daemon
  is back.
* **What does not hold across daemons:** order, unique ids, and ``after``
  between jobs on different daemons.  A submit whose ``after`` names ids this
  client sent goes to their daemon; naming ids sent to two daemons (or, with
  ``spread="hash"``, to a daemon other than the one its id hashes to) is
  refused with `SpreadError` before anything is sent.  `stats` sums the
  daemons' answers.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Unpack

import trio

from gloomwire import codec

from ._connect import Backoff, Endpoint, Security, connect
from ._master_protocol import check_specs, new_job_id
from ._protocol import id_key
from ._trio_connection import FrameConnection, nursery_beside
from ._trio_master import AsyncMaster, Job
from .errors import GloomError, JobFailed, TransportError, UnknownJob

__all__ = [
    "AsyncServers",
    "Spread",
    "SpreadError",
    "merge_stats",
    "open_masters",
    "parse_servers",
]

Spread = Literal["round_robin", "hash"]
Address = tuple[str, int]

#: How many ids the client remembers the daemon of (the oldest are forgotten
#: first; a forgotten id is asked of each daemon in turn).
MAX_ROUTES = 1_000_000


class SpreadError(GloomError):
    """What one daemon could do and several independent ones cannot (an
    ``after`` across daemons); raised before anything is sent."""


def parse_servers(servers: str | Iterable[str | Address], default_port: int) -> list[Address]:
    """``"h1:9998,h2:9998"`` (or a list of "host:port" / (host, port)) as addresses.

    A host without a port takes `default_port`; ``[::1]:9998`` for IPv6.  An
    empty list, a bad port or the same daemon twice is a `ValueError`.
    """
    items: Iterable[str | Address]
    items = [part.strip() for part in servers.split(",")] if isinstance(servers, str) else servers
    found: list[Address] = []
    for item in items:
        if isinstance(item, tuple):
            host, port = item
        else:
            host, port = _split(item, default_port)
        if not host or not 0 < port < 65536:
            raise ValueError(f"bad server address {item!r}: want HOST:PORT")
        if (host, port) in found:
            raise ValueError(f"server {host}:{port} is listed twice")
        found.append((host, port))
    if not found:
        raise ValueError("no servers given")
    return found


def _split(text: str, default_port: int) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or host.endswith(":"):  # no port, or a bare IPv6 address
        host, port = text, str(default_port)
    host = host.removeprefix("[").removesuffix("]")
    try:
        return host, int(port)
    except ValueError:
        raise ValueError(f"bad server address {text!r}: want HOST:PORT") from None


def hash_index(job_id: Any, count: int) -> int:
    """The daemon an id hashes to: stable across processes (not `hash`, which
    is salted per process), and 1, "1" and true apart, as the daemon has them."""
    return zlib.crc32(codec.canonical(job_id)) % count


def merge_stats(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several daemons' `stats` as one: counts summed, per-type rows summed by
    type, ``uptime_s`` the longest.  Keys one daemon lacks are taken from the
    others, so daemons of different versions still add up."""
    merged: dict[str, Any] = {}
    for answer in answers:
        _add(merged, answer)
    return merged


def _add(into: dict[str, Any], answer: Mapping[str, Any]) -> None:
    for key, value in answer.items():
        have = into.get(key)
        if key == "uptime_s" and isinstance(value, (int, float)):
            into[key] = value if have is None else max(have, value)
        elif isinstance(value, bool):
            into[key] = have is True or value  # "paused": paused somewhere
        elif have is None and not isinstance(value, (dict, list)):
            into.setdefault(key, value)
        elif isinstance(value, (int, float)):
            into[key] = value + (have if isinstance(have, (int, float)) else 0)
        elif isinstance(value, dict):
            _add(into.setdefault(key, {}), value)
        elif isinstance(value, list):
            rows: list[Any] = into.setdefault(key, [])
            _add_rows(rows, value)


def _add_rows(rows: list[Any], more: list[Any]) -> None:
    """Rows keyed by their ``type`` (stats' per-type list) are summed per type."""
    index = {
        codec.canonical(row["type"]): row for row in rows if isinstance(row, dict) and "type" in row
    }
    for row in more:
        if not isinstance(row, dict) or "type" not in row:
            rows.append(row)
            continue
        same = index.get(codec.canonical(row["type"]))
        if same is None:
            copy = dict(row)
            rows.append(copy)
            index[codec.canonical(row["type"])] = copy
        else:
            _add(same, row)


@dataclass
class _Daemon:
    """One daemon of the list: its endpoint, its connection, when to try it again."""

    index: int
    endpoint: Endpoint
    backoff: Backoff
    master: AsyncMaster | None = None
    down_until: float = -float("inf")
    reason: str = ""
    lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def peer(self) -> str:
        return self.endpoint.peer


class AsyncServers:
    """A master over several daemons.  Get one with `open_masters`.

    Takes the calls of `AsyncMaster` (`submit`, `submit_many`, `cancel`,
    `result`, `stats`, `kick`, `kick_type`, `delete`, `pause`, `resume`);
    the `Job` handles are those of the daemon that took each job.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        nursery: trio.Nursery,
        *,
        spread: Spread = "round_robin",
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
    ) -> None:
        if spread not in ("round_robin", "hash"):
            raise ValueError(f"spread must be 'round_robin' or 'hash', not {spread!r}")
        self._daemons = [
            _Daemon(i, endpoint, Backoff(retry_delay, max_retry_delay))
            for i, endpoint in enumerate(endpoints)
        ]
        self._nursery = nursery
        self.spread: Spread = spread
        self._next = 0
        self._routes: dict[tuple[type, Any], int] = {}

    @property
    def servers(self) -> list[str]:
        """The daemons, as "host:port", in the order given."""
        return [daemon.peer for daemon in self._daemons]

    def server_of(self, id: Any) -> str | None:
        """The daemon ("host:port") this client sent job `id` to, if it knows."""
        index = self._routes.get(id_key(id))
        return None if index is None else self._daemons[index].peer

    # -- submitting ---------------------------------------------------------------

    async def submit(
        self,
        type: Any,
        body: Any,
        priority: int = 0,
        id: Any = None,
        timeout: float | None = None,
        *,
        after: Iterable[Any] | None = None,
        detach: bool = False,
        delay: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        unique: bool = False,
    ) -> Job:
        """`AsyncMaster.submit` on the next daemon that can be reached.

        A daemon lost before it acked the submit is skipped too, unless the job
        is detached (it may be there: `TransportError`).  Raises
        `TransportError` when none can be reached, and `SpreadError` for an
        ``after`` across daemons.
        """
        job_id = new_job_id() if id is None else id
        after_ids = None if after is None else list(after)
        spec: dict[str, Any] = {"type": type, "body": body, "priority": priority}
        spec.update(id=job_id, timeout=timeout, after=after_ids, detach=detach, delay=delay)
        spec.update(retries=retries, backoff=backoff, unique=unique)
        reasons: list[str] = []
        for index in self._order(job_id, after_ids):
            daemon = self._daemons[index]
            master = await self._connected(daemon)
            if master is None:
                reasons.append(f"{daemon.peer}: {daemon.reason}")
                continue
            try:
                job = await master.submit(**spec)  # a refusal raises: nothing to remember
            except TransportError as exc:
                # Lost before the ack: the daemon just went away.  An attached
                # job dies with its master's connection anyway, so it goes to
                # the next daemon; a detached one may live on there, so the
                # caller is told rather than the job doubled.
                self._down(daemon, str(exc))
                if detach:
                    raise
                reasons.append(f"{daemon.peer}: {exc}")
                continue
            self._remember(job_id, master)
            return job
        raise TransportError(f"no gloomd can be reached ({'; '.join(reasons)})")

    async def submit_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[Job]:
        """`AsyncMaster.submit_many`, each job to its daemon (pipelined per daemon).

        Daemons that cannot be reached are skipped as by `submit`; a daemon
        lost while its share is in flight fails those handles (no resubmit).
        """
        specs = [dict(spec) for spec in jobs]
        check_specs(specs)
        if any("type" not in spec for spec in specs):
            raise TypeError("every job needs a 'type'")
        groups: dict[AsyncMaster, list[int]] = {}
        for position, spec in enumerate(specs):
            if spec.get("id") is None:
                spec["id"] = new_job_id()
            after = spec.get("after")
            if after is not None:
                spec["after"] = after = list(after)
            master = await self._master_for(self._order(spec["id"], after))
            self._remember(spec["id"], master)
            groups.setdefault(master, []).append(position)
        handles: list[Job | None] = [None] * len(specs)

        async def send(master: AsyncMaster, positions: list[int]) -> None:
            sent = await master.submit_many([specs[p] for p in positions])
            for position, handle in zip(positions, sent, strict=True):
                handles[position] = handle

        async with trio.open_nursery() as nursery:
            for master, positions in groups.items():
                nursery.start_soon(send, master, positions)
        return [handle for handle in handles if handle is not None]

    # -- calls about one job --------------------------------------------------------

    async def cancel(self, id: Any) -> bool:
        """`AsyncMaster.cancel` on the daemon that took `id`."""
        value: bool = await self._by_id(id, "cancel")
        return value

    async def result(self, id: Any) -> Any:
        """`AsyncMaster.result` from the daemon that took `id` (each in turn when
        this client did not send it)."""
        return await self._by_id(id, "result")

    async def kick(self, id: Any) -> bool:
        value: bool = await self._by_id(id, "kick")
        return value

    async def delete(self, id: Any) -> bool:
        value: bool = await self._by_id(id, "delete")
        return value

    # -- calls about every daemon ----------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        """The daemons' statistics summed (`merge_stats`); ``servers`` says how
        many answered (``up``) of how many there are (``total``).  Raises
        `TransportError` when none answers."""
        answers = await self._everywhere(lambda master: master.stats())
        merged = merge_stats(answers)
        merged["servers"] = {"up": len(answers), "total": len(self._daemons)}
        return merged

    async def kick_type(self, type: Any, limit: int | None = None) -> int:
        """`AsyncMaster.kick_type` on every daemon (each kicks up to `limit`): how many.

        Like `pause`, done on every daemon that can be reached, then
        `TransportError` if one could not."""
        counts = await self._everywhere(lambda master: master.kick_type(type, limit), every=True)
        return sum(counts)

    async def pause(self, type: Any) -> None:
        """Pause `type` on every daemon; `TransportError` naming those that could
        not be reached (the others are paused)."""
        await self._everywhere(lambda master: master.pause(type), every=True)

    async def resume(self, type: Any) -> None:
        """Resume `type` on every daemon (unreachable ones: as `pause`)."""
        await self._everywhere(lambda master: master.resume(type), every=True)

    # -- internals ----------------------------------------------------------------

    def _order(self, job_id: Any, after: list[Any] | None) -> list[int]:
        """The daemons to try for a submit, best first."""
        count = len(self._daemons)
        if self.spread == "hash":
            first = hash_index(job_id, count)
        else:
            first = self._next
            self._next = (self._next + 1) % count
        order = [(first + step) % count for step in range(count)]
        pinned = {self._routes[key] for key in map(id_key, after or ()) if key in self._routes}
        if not pinned:
            return order
        where = sorted(self._daemons[i].peer for i in pinned)
        if len(pinned) > 1:
            raise SpreadError(
                f"job {job_id!r}: after names jobs sent to different daemons ({', '.join(where)});"
                " after holds only between jobs on one daemon"
            )
        (home,) = pinned
        if self.spread == "hash" and home != first:
            raise SpreadError(
                f"job {job_id!r}: after names jobs on {where[0]}, but its id hashes to"
                f" {self._daemons[first].peer}; after holds only between jobs on one daemon"
            )
        return [home]  # its dependencies are there: no other daemon will do

    async def _master_for(self, order: list[int]) -> AsyncMaster:
        reasons: list[str] = []
        for index in order:
            master = await self._connected(self._daemons[index])
            if master is not None:
                return master
            reasons.append(f"{self._daemons[index].peer}: {self._daemons[index].reason}")
        raise TransportError(f"no gloomd can be reached ({'; '.join(reasons)})")

    async def _connected(self, daemon: _Daemon) -> AsyncMaster | None:
        """The daemon's master connection, opened if need be; None while it is
        skipped (down, or lost within its back-off period)."""
        async with daemon.lock:
            if daemon.master is not None and daemon.master.connected:
                return daemon.master
            if trio.current_time() < daemon.down_until:
                return None
            try:
                stream = await connect(daemon.endpoint)
            except TransportError as exc:
                self._down(daemon, str(exc))
                return None
            connection = FrameConnection(stream, daemon.peer, daemon.endpoint.tls_hint)
            master = AsyncMaster(connection, lost_job=_lost_job)
            daemon.master = master
            daemon.backoff.reset()
            self._nursery.start_soon(self._serve, daemon, master)
            return master

    async def _serve(self, daemon: _Daemon, master: AsyncMaster) -> None:
        await master._run()
        if daemon.master is master:
            daemon.master = None
            if trio.current_time() >= daemon.down_until:  # not yet marked by a submit
                self._down(daemon, str(master._conn.error))

    def _down(self, daemon: _Daemon, reason: str) -> None:
        daemon.reason = reason
        daemon.down_until = trio.current_time() + daemon.backoff.next()

    def _remember(self, job_id: Any, master: AsyncMaster) -> None:
        for daemon in self._daemons:
            if daemon.master is master:
                routes = self._routes
                routes.pop(id_key(job_id), None)  # re-inserted last: the newest
                routes[id_key(job_id)] = daemon.index
                if len(routes) > MAX_ROUTES:
                    del routes[next(iter(routes))]
                return

    async def _by_id(self, job_id: Any, call: str) -> Any:
        known = self._routes.get(id_key(job_id))
        if known is not None:
            order = [known]
        elif self.spread == "hash":
            order = [hash_index(job_id, len(self._daemons))]
        else:
            order = list(range(len(self._daemons)))
        unknown: UnknownJob | None = None
        unreachable: list[str] = []
        for index in order:
            daemon = self._daemons[index]
            master = await self._connected(daemon)
            if master is None:
                unreachable.append(f"{daemon.peer}: {daemon.reason}")
                continue
            try:
                return await getattr(master, call)(job_id)
            except UnknownJob as exc:
                unknown = exc
        if unreachable:
            raise TransportError(
                f"cannot {call} job {job_id!r}: no answer from {'; '.join(unreachable)}"
            )
        assert unknown is not None
        raise unknown

    async def _everywhere(self, call: Any, *, every: bool = False) -> list[Any]:
        """`call(master)` on every daemon that can be reached, side by side;
        `TransportError` when none can (with `every`: when one cannot)."""
        answers: list[Any] = []
        reasons: list[str] = []

        async def one(daemon: _Daemon) -> None:
            master = await self._connected(daemon)
            if master is None:
                reasons.append(f"{daemon.peer}: {daemon.reason}")
                return
            try:
                answers.append(await call(master))
            except TransportError as exc:
                reasons.append(f"{daemon.peer}: {exc}")

        async with trio.open_nursery() as nursery:
            for daemon in self._daemons:
                nursery.start_soon(one, daemon)
        if not answers:
            raise TransportError(f"no gloomd can be reached ({'; '.join(sorted(reasons))})")
        if every and reasons:
            done = f"done on {len(answers)} of {len(self._daemons)} daemons"
            raise TransportError(f"{done}; unreachable: {'; '.join(sorted(reasons))}")
        return answers


def _lost_job(job: Job, error: GloomError) -> GloomError:
    """A daemon lost while the job was in flight: CRASH with the id as reason
    (as gloomd reports a slave lost with the job), unless it was detached."""
    if job.detached:
        return TransportError(
            f"{error}; job {job.id!r} is detached and lives on there: fetch it with"
            " result() once that daemon is back"
        )
    return JobFailed(job.id, "CRASH", job.id)


@asynccontextmanager
async def open_masters(
    servers: str | Iterable[str | Address],
    *,
    spread: Spread = "round_robin",
    retry_delay: float = 1.0,
    max_retry_delay: float = 30.0,
    connect_timeout: float | None = 10.0,
    **security: Unpack[Security],
) -> AsyncIterator[AsyncServers]:
    """A master over several independent daemons for the duration of the block.

    `servers` is ``"h1:9998,h2:9998"`` or a list of "host:port" / (host,
    port).  Nothing connects until the first call; a daemon that cannot be
    reached is skipped for `retry_delay` seconds, doubling up to
    `max_retry_delay`.  `spread` and the rest: see `gloom._servers`.  Security
    as for `open_master` (the same credentials on every daemon).
    """
    addresses = parse_servers(servers, 9998)
    first = Endpoint.configure(*addresses[0], connect_timeout, **security)
    endpoints = [first] + [
        Endpoint(host, port, first.ssl_context, first.token, connect_timeout)
        for host, port in addresses[1:]
    ]
    async with nursery_beside() as nursery:
        servers_master = AsyncServers(
            endpoints,
            nursery,
            spread=spread,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
        )
        yield servers_master
