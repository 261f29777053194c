"""Validation: one frame payload in, one typed message (or the exact error frame) out.

The protocol fixes, for every bad frame, which error a peer gets, so the checks
run in one order everywhere (protocol.md, "Fine print"):

    JSON object -> `action` present -> action allowed on this port
        -> state (respond/progress/fail need a job in hand) -> fields, in order

and only the first failure is reported.  A failure raises `ProtocolViolation`,
which carries the error frame; `gloomd.ingest` converts it into a frame for the
peer at its single receive point.  Nothing here knows about sockets or the broker's
state beyond the one bit the state check needs (does this slave hold a job).

Messages are NamedTuples: immutable once validated, and the cheapest typed
record CPython builds (a frozen dataclass cost 3 us per submit, measured;
a NamedTuple 0.4 us).

Validation is also where sizes are bounded (issue 18), so that nothing the
broker keeps or echoes can be made large by one small request: ids, types and
`after` lists have caps (`Caps`, set from the daemon's flags), and every
numeric field the daemon computes with has a documented range (`RANGES`).
A value past its cap or outside its range is `invalid_type` / the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

from gloomwire import codec, vocabulary
from gloomwire.vocabulary import CATEGORIES, MASTER_ACTIONS, SLAVE_ACTIONS, error

__all__ = [
    "CATEGORIES",
    "DEFAULT_CAPS",
    "JOB_STATES",
    "MAX_TIMEOUT",
    "RANGES",
    "Auth",
    "Cancel",
    "Caps",
    "Delete",
    "Fail",
    "Jobs",
    "Join",
    "Kick",
    "KickType",
    "MasterMessage",
    "MasterRequest",
    "NumberRange",
    "Pause",
    "Ping",
    "Progress",
    "ProtocolViolation",
    "Respond",
    "Result",
    "Resume",
    "SlaveMessage",
    "SlaveRequest",
    "Stats",
    "Submit",
    "check_number",
    "decode_object",
    "parse_master",
    "parse_slave",
]

#: How much of an undecodable payload is echoed back in `invalid_json`.
ECHO_LIMIT: Final = 200


# ---------------------------------------------------------------- caps and ranges


class Caps:
    """Size caps on what one frame may carry; defaults are the daemon's.

    Ids are hashes or UUIDs in practice, and types short names: the caps keep
    a peer from making every reply, log line and stored outcome that echoes
    them large (issue 18: 1 MB ids made 11 KB of progress frames cost 576 MB).
    """

    __slots__ = ("int_bound", "max_after", "max_id", "max_type", "max_values")

    def __init__(
        self,
        max_id: int = 1024,
        max_type: int = 1024,
        max_after: int = 1000,
        max_values: int = 262_144,
    ) -> None:
        #: Characters of a string id; decimal digits of an integer id.
        self.max_id = max_id
        #: Characters of a string type; bytes of any other type's canonical JSON.
        self.max_type = max_type
        #: Ids in one submit's `after`.
        self.max_after = max_after
        #: Keys and values in one frame (`codec.loads`).
        self.max_values = max_values
        #: Integers with at most `max_id` digits lie strictly inside +-int_bound.
        self.int_bound = 10**max_id

    def id_ok(self, value: Any) -> bool:
        """A valid id: a string or an integer (never a bool) within the cap."""
        kind = type(value)
        if kind is str:
            return len(value) <= self.max_id
        if kind is int:
            return bool(-self.int_bound < value < self.int_bound)
        return False


DEFAULT_CAPS: Final = Caps()


class NumberRange(NamedTuple):
    """Accepted values of a numeric field: `low < value <= high`, finite.

    An integer or a float (never a bool); `integer` admits integers only;
    `closed` admits `low` itself (`delay` may be 0, `timeout` may not).
    """

    low: float
    high: float
    integer: bool = False
    closed: bool = False

    def holds(self, value: Any) -> bool:
        kind = type(value)
        if kind is int:
            above = value >= self.low if self.closed else value > self.low
            return bool(above and value <= self.high)
        if kind is not float or self.integer:
            return False
        # NaN fails every comparison, and the infinities fail one.
        above = value >= self.low if self.closed else value > self.low
        return bool(above and value <= self.high)


#: A job's time limit: at most one year (a deadline must stay a float the
#: clock can add to; `"timeout": 10**400` was acked and then stopped the
#: daemon when a slave took the job).
MAX_TIMEOUT: Final = 365 * 24 * 3600

#: A job's delay: at most one year, as `timeout`.
MAX_DELAY: Final = MAX_TIMEOUT
#: Retries one job may ask for (each waits its back-off: 1,000 is past any use).
MAX_RETRIES: Final = 1000
#: A retry's back-off, and the longest wait it doubles up to (durability-and-operations.md).
MAX_BACKOFF: Final = 3600
#: Rows in one `jobs` answer.
MAX_PAGE: Final = 1000
#: A kick by type's `limit` ("any positive"): past it the number means nothing,
#: since no daemon holds that many dead jobs; it only keeps the field finite.
MAX_KICK: Final = 2**62

#: Every numeric field the daemon does arithmetic with, and its range.  One
#: table, so that each new field states its bounds here, is checked by
#: `check_number`, and is listed in README's limits.
RANGES: Final = {
    "timeout": NumberRange(0, MAX_TIMEOUT),
    "delay": NumberRange(0, MAX_DELAY, closed=True),
    "retries": NumberRange(0, MAX_RETRIES, integer=True, closed=True),
    "backoff": NumberRange(0, MAX_BACKOFF),
    # The `limit` of `jobs` and of a kick by type (errors name the field: `limit`).
    "jobs.limit": NumberRange(0, MAX_PAGE, integer=True),
    "kick.limit": NumberRange(0, MAX_KICK, integer=True),
}

#: The states `jobs` reports and filters by (lifecycle.md "States").
JOB_STATES: Final = vocabulary.JOB_STATES


def check_number(name: str, value: Any, field: str | None = None) -> Any:
    """`value` if it lies in `RANGES[name]`, else `invalid_type` / `field` (default: name)."""
    if not RANGES[name].holds(value):
        raise ProtocolViolation("invalid_type", field or name)
    return value


class ProtocolViolation(Exception):
    """The peer sent a frame the protocol does not allow.

    `error` and `reason` are exactly the keys of the error frame that answers it.
    """

    def __init__(self, error: str, reason: Any) -> None:
        super().__init__(error, reason)
        self.error = error
        self.reason = reason

    def frame(self) -> dict[str, Any]:
        return error(self.error, self.reason)


# ---------------------------------------------------------------- messages


class Join(NamedTuple):
    type: Any
    key: bytes | str  # see _key: how types are compared


class Respond(NamedTuple):
    body: Any


class Progress(NamedTuple):
    body: Any


class Fail(NamedTuple):
    category: str
    reason: Any


class Submit(NamedTuple):
    id: str | int
    type: Any
    key: bytes | str
    priority: int
    body: Any
    # int | float, not float: compiled by mypyc, a `float` field turns 30 into
    # 30.0, and the job frame must echo the timeout as it was sent.
    timeout: int | float | None = None
    detach: bool = False
    after: tuple[str | int, ...] = ()
    # The job lifecycle (durability-and-operations.md section 2); None: not asked for.
    delay: float | None = None
    retries: int | None = None
    backoff: float | None = None
    unique: bool = False


class Cancel(NamedTuple):
    id: str | int


class Result(NamedTuple):
    id: str | int


class Kick(NamedTuple):
    """`{"action":"kick","id":ID}`: one dead job back to the queue."""

    id: str | int


class KickType(NamedTuple):
    """`{"action":"kick","type":T,"limit":n}`: the n oldest dead jobs of T (None: all)."""

    type: Any
    key: bytes | str
    limit: int | None = None


class Delete(NamedTuple):
    id: str | int


class Jobs(NamedTuple):
    """`{"action":"jobs",...}`: one page of the jobs held.

    `key` None: every type (a type may be null, whose key is b"null").
    `state` None: every state.  `cursor` is the `next` of the page before,
    checked for shape here and for meaning by the broker.
    """

    type: Any = None
    key: bytes | str | None = None
    state: str | None = None
    limit: int = 100
    cursor: Any = None


class Pause(NamedTuple):
    type: Any
    key: bytes | str


class Resume(NamedTuple):
    type: Any
    key: bytes | str


class Stats(NamedTuple):
    """`{"action":"stats"}`, or `{"action":"stats","type":T}` for one type's row.

    `key` is None for every type (T may be null, whose key is b"null").
    """

    type: Any = None
    key: bytes | str | None = None


class Ping(NamedTuple):
    """`{"action":"ping"}` on either port: answered `{"ok":true}`, a liveness check."""


class Auth(NamedTuple):
    token: Any


#: What the broker has rules for (`Broker.slave_message`, `Broker.master_message`);
#: `Ping` and `Auth` concern the connection and are answered by `gloomd.ingest`.
SlaveRequest = Join | Respond | Progress | Fail
MasterRequest = Submit | Cancel | Result | Stats | Kick | KickType | Delete | Jobs | Pause | Resume
SlaveMessage = SlaveRequest | Ping | Auth
MasterMessage = MasterRequest | Ping | Auth

_STATS: Final = Stats()
_PING: Final = Ping()

# Actions of each port (gloomwire.vocabulary), so that one of the other port
# is told so rather than called unknown.
_NEEDS_JOB: Final = frozenset({"respond", "progress", "fail"})


# ---------------------------------------------------------------- decoding


def decode_object(payload: bytes, max_values: int = codec.NO_LIMIT) -> dict[str, Any]:
    """Decode a payload that must be a JSON object (at most `max_values` keys and values).

    Both failures leave the stream in sync (the length prefix was honest), so
    they are ordinary violations and the connection stays open.
    """
    try:
        obj = codec.loads(payload, max_values)
    except codec.DecodeError:
        # Gloom echoed the whole payload; a short prefix is enough to debug
        # and cannot be used to make the server amplify traffic.  Decoded
        # with "replace", it can always be encoded again: invalid bytes,
        # and encoded surrogates (ED A0 80), become U+FFFD, and an escaped
        # surrogate (\ud800) is six ASCII characters, not a surrogate.
        raise ProtocolViolation(
            "invalid_json", payload[:ECHO_LIMIT].decode("utf-8", "replace")
        ) from None
    if type(obj) is not dict:
        raise ProtocolViolation("invalid_json", "not a JSON object")
    return obj


def _key(value: Any, caps: Caps) -> bytes | str:
    """How job types are compared: canonical JSON, so `1` and `1.0` differ.

    A string is its own key (no encoding on the hot path); every other type
    becomes canonical JSON bytes, which never equal a str, so the two kinds
    of key cannot collide.  A key over the cap is `invalid_type` / "type".
    """
    if type(value) is str:
        if len(value) <= caps.max_type:
            return value
    else:
        key = codec.canonical(value)
        if len(key) <= caps.max_type:
            return key
    raise ProtocolViolation("invalid_type", "type")


# ---------------------------------------------------------------- slave port


def parse_slave(obj: dict[str, Any], holding_job: bool, caps: Caps = DEFAULT_CAPS) -> SlaveMessage:
    """Validate a frame from the slave port."""
    if "action" not in obj:
        raise ProtocolViolation("missing_field", "type")  # Gloom's wording
    action = obj["action"]
    if action == "respond":  # first: one per job, the hot path
        if not holding_job:
            raise ProtocolViolation("invalid_state", "not_processing")
        if "body" not in obj:
            raise ProtocolViolation("missing_field", "body")
        return Respond(obj["body"])
    if action == "join":
        if "type" not in obj:
            raise ProtocolViolation("missing_field", "job_type")
        job_type = obj["type"]
        return Join(job_type, _key(job_type, caps))
    if action == "ping":
        return _PING
    if action == "auth":
        return Auth(obj.get("token"))
    if type(action) is str and action in _NEEDS_JOB:
        if not holding_job:
            raise ProtocolViolation("invalid_state", "not_processing")
        if action == "progress":
            if "body" not in obj:
                raise ProtocolViolation("missing_field", "body")
            return Progress(obj["body"])
        # fail
        if "error" not in obj:
            raise ProtocolViolation("missing_field", "error")
        category = obj["error"]
        if type(category) is not str or category not in CATEGORIES:
            raise ProtocolViolation("invalid_type", "error")
        return Fail(category, obj.get("reason"))
    if type(action) is str and action in MASTER_ACTIONS:
        raise ProtocolViolation("invalid_action", "not_a_master")
    raise ProtocolViolation("unknown_type", action)


# ---------------------------------------------------------------- master port


def parse_master(obj: dict[str, Any], caps: Caps = DEFAULT_CAPS) -> MasterMessage:
    """Validate a frame from the master port."""
    if "action" not in obj:
        raise ProtocolViolation("missing_field", "type")  # Gloom's wording
    action = obj["action"]
    if action == "submit":
        return _parse_submit(obj, caps)
    if action == "cancel" or action == "result":
        if "id" not in obj:
            raise ProtocolViolation("missing_field", "id")
        job_id = obj["id"]
        if not caps.id_ok(job_id):
            raise ProtocolViolation("invalid_type", "id")
        return Cancel(job_id) if action == "cancel" else Result(job_id)
    if action == "stats":
        if "type" in obj:
            job_type = obj["type"]
            return Stats(job_type, _key(job_type, caps))
        return _STATS
    if action == "ping":
        return _PING
    if action == "auth":
        return Auth(obj.get("token"))
    if type(action) is str:
        parse = _LIFECYCLE.get(action)
        if parse is not None:
            return parse(obj, caps)
        if action in SLAVE_ACTIONS:
            raise ProtocolViolation("invalid_action", "not_a_slave")
    raise ProtocolViolation("unknown_action", action)


def _job_id(obj: dict[str, Any], caps: Caps) -> str | int:
    if "id" not in obj:
        raise ProtocolViolation("missing_field", "id")
    job_id = obj["id"]
    if not caps.id_ok(job_id):
        raise ProtocolViolation("invalid_type", "id")
    return job_id  # type: ignore[no-any-return]


def _type_of(obj: dict[str, Any], caps: Caps) -> tuple[Any, bytes | str]:
    if "type" not in obj:
        raise ProtocolViolation("missing_field", "type")
    job_type = obj["type"]
    return job_type, _key(job_type, caps)


def _parse_kick(obj: dict[str, Any], caps: Caps) -> Kick | KickType:
    """By id when `id` is there (then `type` and `limit` are not read), else by type."""
    if "id" in obj or "type" not in obj:
        return Kick(_job_id(obj, caps))
    job_type, key = _type_of(obj, caps)
    limit = obj.get("limit")
    if limit is not None:
        check_number("kick.limit", limit, "limit")
    return KickType(job_type, key, limit)


def _parse_delete(obj: dict[str, Any], caps: Caps) -> Delete:
    return Delete(_job_id(obj, caps))


def _parse_jobs(obj: dict[str, Any], caps: Caps) -> Jobs:
    """Fields in the reference's order: type, state, limit, cursor (all optional)."""
    job_type: Any = None
    key: bytes | str | None = None
    if "type" in obj:
        job_type, key = _type_of(obj, caps)
    state = obj.get("state")
    if state is not None and (type(state) is not str or state not in JOB_STATES):
        raise ProtocolViolation("invalid_type", "state")
    limit = obj.get("limit")
    if limit is None:
        limit = 100
    else:
        check_number("jobs.limit", limit, "limit")
    cursor = obj.get("cursor")
    if cursor is not None and not _cursor_shape(cursor):
        raise ProtocolViolation("invalid_type", "cursor")
    return Jobs(job_type, key, state, limit, cursor)


def _cursor_shape(cursor: Any) -> bool:
    """A cursor the broker made: a short list of 64-bit integers (see
    `gloomd.listing`); anything else is refused here, before the broker."""
    return (
        type(cursor) is list
        and 0 < len(cursor) <= _CURSOR_PARTS
        and all(type(part) is int and -(2**63) <= part < 2**63 for part in cursor)
    )


_CURSOR_PARTS: Final = 6


def _parse_pause(obj: dict[str, Any], caps: Caps) -> Pause:
    return Pause(*_type_of(obj, caps))


def _parse_resume(obj: dict[str, Any], caps: Caps) -> Resume:
    return Resume(*_type_of(obj, caps))


#: The lifecycle's master actions and their parsers (their names are in
#: `gloomwire.vocabulary.LIFECYCLE_ACTIONS`, so the slave port calls them
#: `not_a_master`).
_LIFECYCLE: Final[dict[str, Callable[[dict[str, Any], Caps], MasterRequest]]] = {
    "kick": _parse_kick,
    "delete": _parse_delete,
    "jobs": _parse_jobs,
    "pause": _parse_pause,
    "resume": _parse_resume,
}


def _parse_submit(obj: dict[str, Any], caps: Caps) -> Submit:
    if "id" not in obj:
        raise ProtocolViolation("missing_field", "id")
    job_id = obj["id"]
    # `caps.id_ok`, inlined: one submit per job.
    kind = type(job_id)
    if kind is str:
        if len(job_id) > caps.max_id:
            raise ProtocolViolation("invalid_type", "id")
    elif kind is not int or not -caps.int_bound < job_id < caps.int_bound:
        raise ProtocolViolation("invalid_type", "id")
    if "type" not in obj:
        raise ProtocolViolation("missing_field", "type")
    job_type = obj["type"]
    key = _key(job_type, caps)
    priority = obj.get("priority", 0)
    if type(priority) is not int:
        raise ProtocolViolation("invalid_type", "priority")
    if "body" not in obj:
        raise ProtocolViolation("missing_field", "body")
    # Gloom's keys are action, id, type, body and perhaps priority: a frame
    # with no other key skips every extension below (seven lookups fewer).
    if len(obj) <= 4 + ("priority" in obj):
        return Submit(job_id, job_type, key, priority, obj["body"])
    timeout = obj.get("timeout")
    if timeout is not None:
        check_number("timeout", timeout)
    detach = obj.get("detach", False)
    if type(detach) is not bool:
        raise ProtocolViolation("invalid_type", "detach")
    after: tuple[str | int, ...] = ()
    if "after" in obj:
        raw = obj["after"]
        if type(raw) is not list or len(raw) > caps.max_after or not all(map(caps.id_ok, raw)):
            raise ProtocolViolation("invalid_type", "after")
        after = tuple(raw)
    # The lifecycle's keys, after the existing ones, in this order (fine print).
    delay = obj.get("delay")
    if delay is not None:
        check_number("delay", delay)
    retries = obj.get("retries")
    if retries is not None:
        check_number("retries", retries)
    backoff = obj.get("backoff")
    if backoff is not None:
        check_number("backoff", backoff)
    unique = obj.get("unique", False)
    if type(unique) is not bool:
        raise ProtocolViolation("invalid_type", "unique")
    return Submit(
        job_id,
        job_type,
        key,
        priority,
        obj["body"],
        timeout,
        detach,
        after,
        delay,
        retries,
        backoff,
        unique,
    )
