"""What the journal holds of a job, and of a kept result: records as JSON bytes.

The store (`gloomd.journal`) keeps opaque bytes per job key; this module
decides what they hold.  A job's record is its own fields (`gloomd.state.Job`
says which), so a restart rebuilds the job from it alone; a finished
detached job's record is its final frame and when it expires.  Times are
wall-clock in the file (a monotonic clock means nothing to the next
process): a delay deadline or a result expiry is stored as the moment it
falls, and replay turns it back into the new run's monotonic clock.

Records are JSON written by the wire's codec (so an integer id or body past
64 bits round-trips exactly), readable with the sqlite3 shell's json
functions.  A final frame is kept as its JSON text, exactly the bytes the
master was sent.  Field names are short but whole words; `v` is the record
version, checked at replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from gloomwire import codec

from .counters import TypeTally
from .messages import Submit
from .state import STATE_NAMES, WAITING, Job, JobId, TypeQueue

__all__ = [
    "RECORD_VERSION",
    "RESULT",
    "ResultRecord",
    "decode",
    "job_record",
    "result_record",
    "type_key",
    "type_of_key",
]

RECORD_VERSION: Final = 1
#: The state column of a finished detached job's row (its kept result).
RESULT: Final = "result"


def job_record(job: Job, wall: float, mono: float, state: str | None = None) -> tuple[str, bytes]:
    """(state name, record) of a held detached job; `state` overrides its state's name."""
    name = state or STATE_NAMES[job.state]
    dependents = job.dependents
    record: dict[str, Any] = {
        "v": RECORD_VERSION,
        "id": job.id,
        "type": job.type,
        "priority": job.priority,
        "body": job.body,
        "timeout": job.timeout,
        "state": name,
        "seq": job.seq,
        "mark": job.mark,
        "attempt": job.attempt,
        "losses": job.losses,
        "retries": job.retries,
        "retried": job.retried,
        "backoff": job.backoff,
        "accepted": job.accepted,
        "ready_at": wall + (job.ready_at - mono) if job.ready_at else None,
        "waiting": job.waiting,
        "dependents": [d.id for d in dependents if d.state == WAITING and d.detached]
        if dependents
        else [],
        "final": None if job.final is None else job.final[4:].decode("utf-8"),
    }
    return name, codec.dumps(record)


def result_record(
    job_id: JobId, stored: tuple[float, bytes, bytes | str], ok: bool, wall: float, mono: float
) -> bytes:
    """The record of a kept result: `stored` is the result store's (expires, frame, type key)."""
    expires, frame, key = stored
    record = {
        "v": RECORD_VERSION,
        "id": job_id,
        "key": key if isinstance(key, str) else None,
        "type_json": key.decode("utf-8") if isinstance(key, bytes) else None,
        "final": frame[4:].decode("utf-8"),
        "expires": wall + (expires - mono),
        "ok": ok,
    }
    return codec.dumps(record)


def type_key(job_type: Any) -> bytes | str:
    """The broker's key of a type (`gloomd.messages._key`, without its size cap)."""
    return job_type if type(job_type) is str else codec.canonical(job_type)


def type_of_key(key: bytes | str) -> bytes:
    """A type's key as a journal key (pause rows): ``s`` + a string, ``j`` + JSON."""
    return b"s" + key.encode("utf-8") if isinstance(key, str) else b"j" + key


@dataclass(slots=True)
class ResultRecord:
    id: JobId
    key: bytes | str
    final: bytes
    expires: float
    ok: bool


_STATE_NUMBERS: Final = {name: number for number, name in STATE_NAMES.items()}


#: The queue a job is decoded against: `gloomd.replay` gives each restored job
#: its own queue's tally.  A job is built through `Job.__init__`, as mypyc
#: compiles `Job`: a compiled class' `__new__` runs `__init__` (without
#: arguments), and its attributes refuse a value of another type (no None
#: for `tally`).
_DECODING: Final = TypeQueue(None, "", 0, TypeTally(""))


def _job(obj: dict[str, Any], state: int) -> Job:
    job_id = obj["id"]
    kind = type(job_id)
    if kind is not str and kind is not int:
        raise ValueError(f"not a job id: {job_id!r}")
    job_type = obj["type"]
    msg = Submit(job_id, job_type, type_key(job_type), int(obj["priority"]), obj["body"])
    job = Job(msg, int(obj["seq"]), None, float(obj["accepted"]), _DECODING)
    job.type, job.key = job_type, msg.key  # not the placeholder queue's
    timeout = obj["timeout"]
    job.timeout = None if timeout is None else float(timeout)
    job.state = state
    job.mark = int(obj["mark"])
    job.attempt = int(obj["attempt"])
    job.losses = int(obj["losses"])
    retries = obj["retries"]
    job.retries = None if retries is None else int(retries)
    job.retried = int(obj["retried"])
    backoff = obj["backoff"]
    job.backoff = None if backoff is None else float(backoff)
    ready_at = obj["ready_at"]
    job.ready_at = 0.0 if ready_at is None else float(ready_at)
    job.waiting = int(obj["waiting"])
    dependents = obj["dependents"]
    job.dependents = [_id(d) for d in dependents] if dependents else None  # type: ignore[misc]
    final = obj["final"]
    job.final = None if final is None else _frame(final)
    job.master = job.others = None
    job.detached = True
    return job


def decode(state: str, record: bytes) -> Job | ResultRecord:
    """A row back as a job or a kept result; ValueError says what is wrong with it.

    The job is not yet in a broker (`gloomd.replay` puts it there): `state`
    is its state's number, `ready_at` the wall-clock deadline (0.0: none),
    `dependents` the ids its record lists, `mark` and `seq` the record's,
    `tally` a placeholder's.  Built here at once, with no record object between: a
    million of them is what a restart of a deep queue reads.
    """
    try:
        # The codec, not orjson: orjson turns an integer past 64 bits into a float.
        obj = codec.loads(record)
    except Exception as exc:  # the codec's own errors: not JSON, too deep...
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if obj.get("v") != RECORD_VERSION:
        raise ValueError(f"record version {obj.get('v')!r}, not {RECORD_VERSION}")
    try:
        if state == RESULT:
            key = obj["key"]
            if key is None:
                key = obj["type_json"].encode("utf-8")
            return ResultRecord(
                _id(obj["id"]),
                key,
                _frame(obj["final"]),
                float(obj["expires"]),
                bool(obj["ok"]),
            )
        number = _STATE_NUMBERS.get(state)
        if number is None or obj["state"] != state:
            raise ValueError(f"state {state!r}")
        return _job(obj, number)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"missing or wrong field ({exc!r})") from None


def _frame(text: str) -> bytes:
    """A kept final frame, byte for byte what its master was sent."""
    payload = text.encode("utf-8")
    return len(payload).to_bytes(4, "big") + payload


def _id(value: Any) -> JobId:
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"not a job id: {value!r}")
