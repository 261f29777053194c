"""How ids, types and priorities become Redis keys and members (sans-IO).

Ids compare exactly (`"1"` and `1` differ) and integers may pass 64 bits, so
an id's key is a tag and its exact text: `s` + the string, `i` + the
decimal digits.  Types compare by canonical JSON, as in `gloomd.messages`: a
string type is `s` + itself, any other `j` + its canonical JSON.

Priorities are JSON integers of any size, and Redis sorted-set scores are
doubles, exact only up to 2**53.  So order is never carried by a score:
every queue is a sorted set whose members all score 0 and sort by their
bytes, and a member starts with `priority_key(p)`, a text whose byte order
is the order of larger priority first, for every integer Python holds.
Then come 16 hex digits of the ready sequence and the id's key.  A priority
of 10**400 queues exactly where it should; nothing is rounded.
"""

from __future__ import annotations

from typing import Any, Final

from gloomwire import codec

__all__ = ["id_key", "id_of_key", "prefix", "priority_key", "type_key", "type_key_of"]

#: Digits of the length field in `priority_key`: up to 99,999,999 digits,
#: far past what a frame of --max-frame can carry.
LENGTH_DIGITS: Final = 8
_MAX_LENGTH: Final = 10**LENGTH_DIGITS - 1
_COMPLEMENT: Final = bytes.maketrans(b"0123456789", b"9876543210")


def prefix(name: str) -> str:
    """Every key of cluster `name` starts with `{name}:`: one hash tag, so a
    Redis Cluster keeps the whole keyspace in one slot (one shard)."""
    if not name or "{" in name or "}" in name:
        raise ValueError(f"cluster name {name!r}: not empty, no braces")
    return "{" + name + "}:"


def id_key(job_id: str | int) -> bytes:
    """An id's key: `s` + the string (UTF-8), `i` + the integer's digits."""
    if type(job_id) is str:
        return b"s" + job_id.encode()
    return b"i" + str(job_id).encode()


def id_of_key(key: bytes) -> str | int:
    """The id back from its key (for log lines about dropped dead letters)."""
    if key[:1] == b"s":
        return key[1:].decode()
    return int(key[1:])


def type_key_of(value: Any) -> bytes | str:
    """The key `gloomd.messages` compares types by (without its size cap)."""
    return value if type(value) is str else codec.canonical(value)


def type_key(key: bytes | str) -> bytes:
    """A type's Redis key from its comparison key (`messages.Join.key`)."""
    if type(key) is str:
        return b"s" + key.encode()
    return b"j" + key  # type: ignore[operator]


def priority_key(priority: int) -> bytes:
    """Bytes that sort (memcmp) in dispatch order: larger priority first.

    The order of -priority, ascending: a sign byte (`0` negative, `1` not),
    the count of decimal digits in 8 digits, then the digits; for a
    negative number both count and digits are complemented (9 - d), so a
    longer or larger magnitude sorts first.  Self-delimiting: the length
    field says where the digits end.
    """
    value = -priority
    digits = str(abs(value)).encode()
    if len(digits) > _MAX_LENGTH:
        raise ValueError("priority too long")
    if value >= 0:
        return b"1" + b"%08d" % len(digits) + digits
    return b"0" + b"%08d" % (_MAX_LENGTH - len(digits)) + digits.translate(_COMPLEMENT)
