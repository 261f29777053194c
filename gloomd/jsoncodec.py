"""JSON in and out of frames: orjson, with an exact path for big integers.

The protocol promises that ids and bodies survive the trip byte-for-value, and
ids may be integers beyond 64 bits.  orjson refuses to encode those and, worse,
silently decodes them as floats.  Both cases are rare, so the fast path stays
pure orjson and only a payload that *might* hold a long integer (a run of 19 or
more digits) is decoded by the standard library, which keeps integers exact.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["DecodeError", "loads", "dumps"]

# 19 digits is the shortest run that can leave the signed 64-bit range
# (-9223372036854775809); anything shorter orjson decodes exactly.  To find
# such a run, map every digit to "0" and everything else to " " and look for
# nineteen "0"s: two C loops, ten times faster than the regex \d{19,}
# (which costs 5 us on a 130-byte frame, measured).
_DIGITS_TO_ZERO = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_RUN = b"0" * 19


class DecodeError(ValueError):
    """The payload is not valid UTF-8 JSON."""


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; orjson rejects them and so must the fallback.
    raise ValueError(f"invalid JSON constant {name}")


#: Deepest nesting accepted.  orjson reads up to 1024 levels but writes at most
#: 254, and the standard library's writer dies of RecursionError near 1000:
#: a value we could read but not write back (as a job body, a type, an echoed
#: action) would fail later, far from the frame that carried it.
MAX_DEPTH = 254
_DEEP_PAYLOAD = 2 * MAX_DEPTH


#: Payloads up to this size are pre-scanned (two fast C passes); larger ones
#: are checked by walking the decoded value, whose cost follows the number of
#: values rather than the number of bytes (a 64 KiB string is one value).
_SCAN_LIMIT = 4096


def loads(payload: bytes) -> Any:
    """Decode one frame payload, keeping integers of any size exact."""
    size = len(payload)
    if size > _SCAN_LIMIT:
        return _loads_large(payload)
    # `.find`, not `in`: `bytes in bytes` first tries the argument as an int
    # and raises (then clears) a TypeError every time, which cost more than
    # the search itself.
    if size < 19 or payload.translate(_DIGITS_TO_ZERO).find(_LONG_RUN) < 0:
        try:
            obj = orjson.loads(payload)  # `_orjson_loads` inlined: every frame passes here
        except orjson.JSONDecodeError as exc:
            raise DecodeError(str(exc)) from None
    else:
        obj = _exact_loads(payload)
    # Only a payload with that many brackets (so at least twice that many
    # bytes) can be that deep.
    if (
        size > _DEEP_PAYLOAD
        and payload.count(b"[") + payload.count(b"{") > MAX_DEPTH
        and _shape(obj)[0] > MAX_DEPTH
    ):
        raise DecodeError(f"nested deeper than {MAX_DEPTH} levels")
    return obj


def _loads_large(payload: bytes) -> Any:
    # orjson decodes an integer beyond 64 bits as a float, so a decoded value
    # without floats is exact; with floats, decode again exactly.  (A long
    # digit run inside a string, e.g. a hex body, no longer costs a slow
    # decode, as it did with the byte scan.)
    obj = _orjson_loads(payload)
    depth, has_float = _shape(obj)
    if depth > MAX_DEPTH:
        raise DecodeError(f"nested deeper than {MAX_DEPTH} levels")
    return _exact_loads(payload) if has_float else obj


def _orjson_loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(str(exc)) from None


def _exact_loads(payload: bytes) -> Any:
    try:
        return json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DecodeError(str(exc)) from None


def _shape(obj: Any) -> tuple[int, bool]:
    """Nesting depth of a decoded value, and whether it holds a float; no recursion."""
    deepest = 0
    has_float = False
    stack = [(obj, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            if type(value) is float:
                has_float = True
            continue
        if level > deepest:
            deepest = level
        stack.extend((item, level + 1) for item in value)
    return deepest, has_float


def dumps(obj: Any) -> bytes:
    """Encode compactly, falling back to the standard library for big integers."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        # Only integers beyond 64 bits (or values that are not JSON at all, which
        # the fallback rejects with TypeError/ValueError) reach this path.
        return _exact_dumps(obj, sort_keys=False)


def canonical(obj: Any) -> bytes:
    """Canonical JSON: object keys sorted, so equal values give equal bytes.

    Job types are matched by this, not by Python equality: 1 and 1.0 (and True
    and 1) are different types on the wire and must stay different here.
    """
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return _exact_dumps(obj, sort_keys=True)


def _exact_dumps(obj: Any, *, sort_keys: bool) -> bytes:
    """The standard library's encoder, with orjson's output conventions."""
    return json.dumps(
        obj, separators=(",", ":"), sort_keys=sort_keys, ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
