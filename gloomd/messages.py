"""Validation: one frame payload in, one typed message (or the exact error frame) out.

The protocol fixes, for every bad frame, which error a peer gets, so the checks
run in one order everywhere (protocol.md, "Fine print"):

    JSON object -> `action` present -> action allowed on this port
        -> state (respond/progress/fail need a job in hand) -> fields, in order

and only the first failure is reported.  A failure raises `ProtocolViolation`,
which carries the error frame; the broker converts it into a frame for the peer
at its single receive point.  Nothing here knows about sockets or the broker's
state beyond the one bit the state check needs (does this slave hold a job).

Messages are NamedTuples: immutable once validated, and the cheapest typed
record CPython builds (a frozen dataclass cost 3 us per submit, measured;
a NamedTuple 0.4 us).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple, Union

from . import jsoncodec

__all__ = [
    "CATEGORIES",
    "Auth",
    "Cancel",
    "Fail",
    "Join",
    "MasterMessage",
    "Ping",
    "Progress",
    "ProtocolViolation",
    "Respond",
    "Result",
    "SlaveMessage",
    "Stats",
    "Submit",
    "decode_object",
    "parse_master",
    "parse_slave",
]

#: The failure categories a slave may report with `fail`.
CATEGORIES: Final = frozenset({"ERROR", "TIMEOUT", "CRASH", "HALTED"})

#: How much of an undecodable payload is echoed back in `invalid_json`.
ECHO_LIMIT: Final = 200


class ProtocolViolation(Exception):
    """The peer sent a frame the protocol does not allow.

    `error` and `reason` are exactly the keys of the error frame that answers it.
    """

    def __init__(self, error: str, reason: Any) -> None:
        super().__init__(error, reason)
        self.error = error
        self.reason = reason

    def frame(self) -> dict[str, Any]:
        return {"error": self.error, "reason": self.reason}


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
    timeout: float | None = None
    detach: bool = False
    after: tuple[str | int, ...] = ()


class Cancel(NamedTuple):
    id: str | int


class Result(NamedTuple):
    id: str | int


class Stats(NamedTuple):
    """`{"action":"stats"}`: no fields."""


class Ping(NamedTuple):
    """`{"action":"ping"}` on either port: answered `{"ok":true}`, a liveness check."""


class Auth(NamedTuple):
    token: Any


SlaveMessage = Union[Join, Respond, Progress, Fail, Ping, Auth]
MasterMessage = Union[Submit, Cancel, Result, Stats, Ping, Auth]

_STATS: Final = Stats()
_PING: Final = Ping()

# Actions of each port, so that one of the other port is told so rather than
# called unknown.
_SLAVE_ACTIONS: Final = frozenset({"join", "respond", "progress", "fail"})
_MASTER_ACTIONS: Final = frozenset({"submit", "cancel", "result", "stats"})
_NEEDS_JOB: Final = frozenset({"respond", "progress", "fail"})


# ---------------------------------------------------------------- decoding


def decode_object(payload: bytes) -> dict[str, Any]:
    """Decode a payload that must be a JSON object.

    Both failures leave the stream in sync (the length prefix was honest), so
    they are ordinary violations and the connection stays open.
    """
    try:
        obj = jsoncodec.loads(payload)
    except jsoncodec.DecodeError:
        # Gloom echoed the whole payload; a short prefix is enough to debug
        # and cannot be used to make the server amplify traffic.
        raise ProtocolViolation(
            "invalid_json", payload[:ECHO_LIMIT].decode("utf-8", "replace")
        ) from None
    if type(obj) is not dict:
        raise ProtocolViolation("invalid_json", "not a JSON object")
    return obj


def _is_id(value: Any) -> bool:
    # bool is an int subclass, but `true` is not an id.
    return (type(value) is str) or (type(value) is int)


def _key(value: Any) -> bytes | str:
    """How job types are compared: canonical JSON, so `1` and `1.0` differ.

    A string is its own key (no encoding on the hot path); every other type
    becomes canonical JSON bytes, which never equal a str, so the two kinds
    of key cannot collide.
    """
    if type(value) is str:
        return value
    return jsoncodec.canonical(value)


# ---------------------------------------------------------------- slave port


def parse_slave(obj: dict[str, Any], holding_job: bool) -> SlaveMessage:
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
        return Join(job_type, _key(job_type))
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
    if type(action) is str and action in _MASTER_ACTIONS:
        raise ProtocolViolation("invalid_action", "not_a_master")
    raise ProtocolViolation("unknown_type", action)


# ---------------------------------------------------------------- master port


def parse_master(obj: dict[str, Any]) -> MasterMessage:
    """Validate a frame from the master port."""
    if "action" not in obj:
        raise ProtocolViolation("missing_field", "type")  # Gloom's wording
    action = obj["action"]
    if action == "submit":
        return _parse_submit(obj)
    if action == "cancel" or action == "result":
        if "id" not in obj:
            raise ProtocolViolation("missing_field", "id")
        job_id = obj["id"]
        if not _is_id(job_id):
            raise ProtocolViolation("invalid_type", "id")
        return Cancel(job_id) if action == "cancel" else Result(job_id)
    if action == "stats":
        return _STATS
    if action == "ping":
        return _PING
    if action == "auth":
        return Auth(obj.get("token"))
    if type(action) is str and action in _SLAVE_ACTIONS:
        raise ProtocolViolation("invalid_action", "not_a_slave")
    raise ProtocolViolation("unknown_action", action)


def _parse_submit(obj: dict[str, Any]) -> Submit:
    if "id" not in obj:
        raise ProtocolViolation("missing_field", "id")
    job_id = obj["id"]
    if not _is_id(job_id):
        raise ProtocolViolation("invalid_type", "id")
    if "type" not in obj:
        raise ProtocolViolation("missing_field", "type")
    job_type = obj["type"]
    priority = obj.get("priority", 0)
    if type(priority) is not int:
        raise ProtocolViolation("invalid_type", "priority")
    if "body" not in obj:
        raise ProtocolViolation("missing_field", "body")
    timeout = obj.get("timeout")
    if timeout is not None:
        if type(timeout) not in (int, float) or not timeout > 0 or timeout == float("inf"):
            raise ProtocolViolation("invalid_type", "timeout")
    detach = obj.get("detach", False)
    if type(detach) is not bool:
        raise ProtocolViolation("invalid_type", "detach")
    after: tuple[str | int, ...] = ()
    if "after" in obj:
        raw = obj["after"]
        if type(raw) is not list or not all(_is_id(dep) for dep in raw):
            raise ProtocolViolation("invalid_type", "after")
        after = tuple(raw)
    return Submit(job_id, job_type, _key(job_type), priority, obj["body"], timeout, detach, after)
