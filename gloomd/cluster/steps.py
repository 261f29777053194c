"""The steps a daemon asks of the cluster, and what comes back (sans-IO).

A `Step` is one call of a function of the library (`library.lua`) with its
own arguments; the engine adds the key prefix and the daemon's id when it
sends it.  What comes back is a `Reply`: a code saying what happened, the
framed replies for the requester in order (bytes the daemon writes as they
are), and the ids of dead letters dropped past --max-dead (to log).  Frames
for other peers arrive in the daemon's inbox as `Delivery` values.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from gloomwire import codec

from .keys import id_key, id_of_key, priority_key, type_key, type_key_of

__all__ = [
    "LIBRARY",
    "Delivery",
    "JobSpec",
    "Reply",
    "Step",
    "parse_delivery",
    "parse_reply",
]

#: The library's name; its functions are `LIBRARY_<step>`.  The version is
#: in the name, so two gloomd versions can share one Redis.
LIBRARY: Final = "gloomd_1"

JobId = str | int
Arg = bytes | str | int


class Step(NamedTuple):
    function: str  # e.g. "gloomd_1_submit"
    args: tuple[Arg, ...]


class JobSpec(NamedTuple):
    """A submit, as the cluster needs it (phase 2 builds it from
    `messages.Submit` and the lifecycle keys)."""

    id: JobId
    type: Any
    body: Any
    priority: int = 0
    timeout: float | None = None
    detach: bool = False
    after: tuple[JobId, ...] = ()
    delay: float = 0.0
    #: None: the submit had no `retries` (its failure frames carry no `attempt`).
    retries: int | None = None
    backoff: float = 1.0
    unique: bool = False


class Reply(NamedTuple):
    code: str
    frames: tuple[bytes, ...] = ()
    dropped: tuple[JobId, ...] = ()


class Delivery(NamedTuple):
    """A frame for a peer of this daemon, from its inbox.

    `kind` is "job" (for slave `peer`, valid only while the slave's join
    epoch is still `epoch`: a job claimed before a re-join the daemon has
    already sent is dropped, Redis put it back) or "frame" (for master
    `peer`).
    """

    kind: str
    peer: int
    epoch: int
    frame: bytes


def fn(step: str) -> str:
    return f"{LIBRARY}_{step}"


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def submit(master: int, token: str, spec: JobSpec) -> Step:
    after: list[Arg] = []
    for dep in spec.after:
        after += (id_key(dep), codec.dumps(dep))
    return Step(
        fn("submit"),
        (
            master,
            token,
            id_key(spec.id),
            codec.dumps(spec.id),
            type_key(type_key_of(spec.type)),
            codec.dumps(spec.type),
            codec.dumps(spec.body),
            priority_key(spec.priority),
            str(spec.priority),
            b"" if spec.timeout is None else codec.dumps(spec.timeout),
            1 if spec.detach else 0,
            _ms(spec.delay),
            b"" if spec.retries is None else spec.retries,
            _ms(spec.backoff),
            1 if spec.unique else 0,
            *after,
        ),
    )


def on_id(step: str, master: int, job_id: JobId) -> Step:
    """cancel, result, delete: a master's step about one id."""
    return Step(fn(step), (master, id_key(job_id), codec.dumps(job_id)))


def _reply_of(items: list[Any]) -> Reply:
    code = items[0].decode()
    frames: list[bytes] = []
    dropped: tuple[JobId, ...] = ()
    for index in range(1, len(items)):
        item = items[index]
        if item == b"dropped":
            dropped = tuple(id_of_key(x) for x in items[index + 1 :])
            break
        frames.append(item)
    return Reply(code, tuple(frames), dropped)


def parse_reply(raw: Any) -> Reply:
    """A framed reply (submit, cancel, result, join, respond, ...)."""
    return _reply_of(list(raw))


def parse_delivery(message: bytes) -> Delivery | float:
    """One inbox message: a `Delivery`, or (a `t` message) seconds until a
    new deadline, when this daemon should tick."""
    kind = message[:1]
    if kind == b"t":
        return int(message[1:]) / 1000
    head, _, rest = message.partition(b" ")
    if kind == b"j":
        epoch, _, frame = rest.partition(b" ")
        return Delivery("job", int(head[1:]), int(epoch), frame)
    return Delivery("frame", int(head[1:]), 0, rest)


STATE_NAMES: Final = {
    b"Q": "queued",
    b"D": "delayed",
    b"W": "waiting",
    b"R": "running",
    b"X": "dead",
}
STATE_CODES: Final = {name: code.decode() for code, name in STATE_NAMES.items()}
_ROW_NAMES: Final = (
    "queued",
    "running",
    "slaves",
    "idle",
    "delayed",
    "waiting",
    "dead",
    "paused",
    "completed",
    "failed",
)
_ROW: Final = 1 + len(_ROW_NAMES)


def parse_stats(raw: list[Any]) -> dict[str, Any]:
    """The `stats` function's answer as the stats body (without uptime)."""
    pairs = int(raw[1])
    at = 2
    totals = {"submitted": 0, "completed": 0, "failed": 0, "requeued": 0, "cancelled": 0}
    totals.update({"retried": 0, "dead": 0, "withdrawn": 0})
    for _ in range(pairs):
        totals[raw[at].decode()] = int(raw[at + 1])
        at += 2
    masters, slaves, shown, skipped = (int(x) for x in raw[at : at + 4])
    at += 4
    rows = []
    waiting = 0
    for _ in range(shown):
        values = raw[at : at + _ROW]
        at += _ROW
        row: dict[str, Any] = {"type": codec.loads(values[0])}
        for name, value in zip(_ROW_NAMES, values[1:], strict=True):
            row[name] = int(value)
        row["paused"] = bool(row["paused"])
        waiting += row["waiting"]
        rows.append(row)
    answer: dict[str, Any] = {"types": rows}
    if skipped:
        values = raw[at + 1 : at + _ROW]
        omitted: dict[str, Any] = {"types": skipped}
        for name, value in zip(_ROW_NAMES, values, strict=True):
            if name not in ("paused", "completed", "failed"):
                omitted[name] = int(value)
        waiting += omitted["waiting"]
        answer["types_omitted"] = omitted
    answer["totals"] = totals
    answer["waiting"] = waiting
    answer["connections"] = {"masters": masters, "slaves": slaves}
    return answer


def parse_jobs(raw: list[Any]) -> tuple[list[dict[str, Any]], Any]:
    """The `jobs` function's answer: the listed jobs and the next cursor."""
    jobs = []
    for at in range(4, len(raw), 7):
        idj, tj, pj, state, attempt, age, detach = raw[at : at + 7]
        jobs.append(
            {
                "id": codec.loads(idj),
                "type": codec.loads(tj),
                "priority": int(pj),
                "state": STATE_NAMES[state],
                "attempt": int(attempt),
                "age_s": round(int(age) / 1000, 3),
                "detach": detach == b"1",
            }
        )
    cursor = None
    if raw[1] != b"":
        cursor = [raw[1].decode(), raw[2].decode(), raw[3].decode()]
    return jobs, cursor
