"""Job ids as journal keys.

A Gloom job id is a JSON string or a JSON integer of any size, compared
exactly: ``"1"`` and ``1`` are two different jobs.  The key keeps them apart
with a one-byte tag, ``s`` + UTF-8 for a string and ``i`` + decimal digits for
an integer, so one BLOB column holds both kinds with no collision and a person
reading the file with the sqlite3 shell sees the id itself (``s`` then
``job-17``, or ``i`` then ``17``).  Decimal digits rather than a fixed-width
binary form because integers beyond 64 bits must round-trip exactly.
"""

from __future__ import annotations

STRING_TAG = b"s"
INTEGER_TAG = b"i"


def job_key(job_id: str | int) -> bytes:
    """The journal key of a job id: ``b"s" + utf-8`` or ``b"i" + digits``.

    A bool is refused: it is an int to Python but not an id to Gloom (the
    codec never hands one over; refusing it here keeps ``True`` from
    becoming the key of job ``1``).  Integers longer than Python's digit
    limit (4,300) raise ValueError; the wire codec refuses those already.
    """
    if isinstance(job_id, str):
        return STRING_TAG + job_id.encode("utf-8")
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        return INTEGER_TAG + str(int(job_id)).encode("ascii")
    raise TypeError(f"a job id is a str or an int, not {type(job_id).__name__}")


def job_id_of(key: bytes) -> str | int:
    """The job id a key was made from (the inverse of `job_key`)."""
    tag, rest = key[:1], key[1:]
    if tag == STRING_TAG:
        return rest.decode("utf-8")
    digits = rest[1:] if rest.startswith(b"-") else rest
    if tag == INTEGER_TAG and digits.isdigit():
        return int(rest)
    raise ValueError(f"not a journal job key: {key[:40]!r}")
