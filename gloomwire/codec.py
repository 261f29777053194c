"""JSON in and out of frames: orjson, with an exact path for big integers.

The protocol promises that ids and bodies survive the trip byte-for-value, and
ids may be integers beyond 64 bits.  orjson refuses to encode those and, worse,
silently decodes them as floats.  Both cases are rare, so the fast path stays
pure orjson and only a payload that *might* hold a long integer (a run of 19 or
more digits) is decoded by the standard library, which keeps integers exact.

One policy, whichever decoder a payload meets: **what is accepted can be
written back**.  orjson already refuses lone UTF-16 surrogates (`"\\ud800"`),
non-finite numbers (`1e400`) and NaN; the standard library accepts the first
two, and a value holding them later failed to encode (as a reply, a type key,
an auth token) far from the frame that carried it, which stopped the daemon
(issue 18).  So the exact path checks its result by encoding it once, and
refuses what does not encode: lone surrogates, in strings or keys, and numbers
that cannot round-trip (infinities; integers past the standard library's
4,300-digit conversion limit never decode at all).  Floats are IEEE doubles
on both paths (`1e-400` is `0.0`), as in every JSON implementation.

The cost of one frame is bounded too (issue 18: a 16 MiB frame of `[[],[],...]`
took 3 s and 400 MB).  A caller may cap the number of keys and values in a
frame (`max_values`); it is counted on the bytes, before anything is built,
so a refused frame costs a scan of its bytes and nothing more.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["NO_LIMIT", "DecodeError", "canonical", "dumps", "loads", "raw_json"]

# 19 digits is the shortest run that can leave the signed 64-bit range
# (-9223372036854775809); anything shorter orjson decodes exactly.  To find
# such a run, map every digit to "0" and everything else to " " and look for
# nineteen "0"s: two C loops, ten times faster than the regex \d{19,}
# (which costs 5 us on a 130-byte frame, measured).
_DIGITS_TO_ZERO = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_RUN = b"0" * 19

#: `max_values` meaning "no cap" (the default, for clients and tools).
NO_LIMIT = 1 << 62

# Every key or value after the first of a frame follows one of these bytes
# (outside strings): `[` or `,` in an array, `{`, `:` or `,` in an object.
_NOT_STRUCTURE = bytes(i for i in range(256) if i not in b",:[{")


class DecodeError(ValueError):
    """The payload is not valid UTF-8 JSON, or not JSON we could write back."""


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
#: are checked by walking the decoded value when it has few values (a 64 KiB
#: string is one value), by C passes when it has many.
_SCAN_LIMIT = 4096
#: Most keys and values a large payload may have to be checked by walking them.
_WALK_LIMIT = 4096
#: Values walked in a large payload whose structure was not counted, before
#: the C passes take over (a job frame with a large body has about five).
_QUICK_WALK = 64


def loads(payload: bytes, max_values: int = NO_LIMIT) -> Any:
    """Decode one frame payload, keeping integers of any size exact.

    `max_values` caps the keys and values of the payload (`_check_values`);
    only a payload longer than that many bytes can exceed it, so the usual
    frame pays one comparison.
    """
    size = len(payload)
    if size > _SCAN_LIMIT:
        return _loads_large(payload, max_values)
    if size > max_values:
        _check_values(payload, max_values)
    # `.find`, not `in`: `bytes in bytes` first tries the argument as an int
    # and raises (then clears) a TypeError every time, which cost more than
    # the search itself.
    if size < 19 or payload.translate(_DIGITS_TO_ZERO).find(_LONG_RUN) < 0:
        try:
            obj = orjson.loads(payload)  # `_orjson_loads` inlined: every frame passes here
        except orjson.JSONDecodeError as exc:
            raise DecodeError(str(exc)) from None
        # Only a payload with that many brackets (so at least twice that many
        # bytes) can be that deep.
        if (
            size > _DEEP_PAYLOAD
            and payload.count(b"[") + payload.count(b"{") > MAX_DEPTH
            and _depth(obj) > MAX_DEPTH
        ):
            raise DecodeError(f"nested deeper than {MAX_DEPTH} levels")
        return obj
    return _exact_loads(payload)


def _loads_large(payload: bytes, max_values: int) -> Any:
    """Payloads over 4 KiB: counted first when they could pass the value cap,
    then checked at the cost of their values when they are few and at C
    speed when they are many."""
    structure = -1  # not counted: the payload cannot hold more than max_values
    if len(payload) > max_values:
        structure = _structure_bytes(payload)  # 0.5 ms per MiB
        if structure > max_values:
            _check_values(payload, max_values, structure)
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        # orjson calls an integer of more than 309 digits infinity: only
        # the exact path can tell it from a real overflow like 1e400.
        if _has_long_run(payload):
            return _exact_loads(payload)
        raise DecodeError(str(exc)) from None
    if structure <= _WALK_LIMIT:
        # Few values (a large string, say): walking them costs nothing.
        # orjson decodes an integer beyond 64 bits as a float, so a value
        # without floats is exact; with floats, decode again exactly.  Not
        # counted (a payload of at most `max_values` bytes), the values are
        # walked only while they are few: counting the structure bytes of a
        # 64 KiB job body cost as much as decoding it (issue 20).
        shape = _shape(obj, _WALK_LIMIT if structure >= 0 else _QUICK_WALK)
        if shape is not None:
            depth, has_float = shape
            if depth > MAX_DEPTH:
                raise DecodeError(f"nested deeper than {MAX_DEPTH} levels")
            return _exact_loads(payload, depth_checked=True) if has_float else obj
    # Many values: walking them cost 0.4 us each (110 ms for 262,144 empty
    # lists, measured); C passes cost a few ms.  orjson writes exactly the
    # depths we accept, so writing the value back checks its depth; and an
    # integer beyond 64 bits needs a run of 19 digits.
    try:
        orjson.dumps(obj)
    except orjson.JSONEncodeError:
        raise DecodeError(f"nested deeper than {MAX_DEPTH} levels") from None
    if _has_long_run(payload):
        return _exact_loads(payload, depth_checked=True)
    return obj


def _structure_bytes(payload: bytes) -> int:
    """Bytes that may precede a key or value (`,:[{`), strings included."""
    return len(payload.translate(None, _NOT_STRUCTURE))


def _has_long_run(payload: bytes) -> bool:
    return payload.translate(_DIGITS_TO_ZERO).find(_LONG_RUN) >= 0


def _exact_loads(payload: bytes, *, depth_checked: bool = False) -> Any:
    """The standard library's decoder, held to orjson's policy."""
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DecodeError(str(exc)) from None
    if (
        not depth_checked
        and payload.count(b"[") + payload.count(b"{") > MAX_DEPTH
        and _depth(obj) > MAX_DEPTH
    ):
        raise DecodeError(f"nested deeper than {MAX_DEPTH} levels")
    # Accept only what we can write back: encoding once finds, at C speed,
    # every lone surrogate (in strings and keys alike) and every number that
    # decoded to infinity.  This path is rare (long digit runs), so the
    # second pass costs little overall.
    try:
        _exact_dumps(obj, sort_keys=False)
    except UnicodeEncodeError:
        raise DecodeError("lone UTF-16 surrogate in a string") from None
    except (ValueError, RecursionError):
        raise DecodeError("number out of range (not finite)") from None
    return obj


# ---------------------------------------------------------------- the value cap


def _check_values(payload: bytes, max_values: int, quick: int = -1) -> None:
    """Refuse a payload with more than `max_values` keys and values.

    Every key or value but the root follows a `[`, `{`, `:` or `,` outside a
    string, so counting those bytes bounds them; all C passes over the
    bytes, nothing is decoded.  `quick` is the count of those bytes anywhere,
    inside strings too, if the caller has it.
    """
    if quick < 0:
        quick = _structure_bytes(payload)
    if quick <= max_values:
        return
    # Over by the quick count, which a large text body (CSV, escaped JSON)
    # can be: set strings aside, at a few ms per MiB.  Remove escaped
    # backslashes, then escaped quotes: every quote left is a delimiter, so
    # the pieces between quotes alternate outside / inside a string.
    clean = payload
    if clean.find(b"\\\\") >= 0:
        clean = clean.replace(b"\\\\", b"")
    if clean.find(b'\\"') >= 0:
        clean = clean.replace(b'\\"', b"")
    strings = clean.count(b'"') // 2
    if strings == 0:
        outside = quick  # no string: the quick count was the count
    elif strings > max_values + 1:
        # Each string but a root one is a key or a value: over already,
        # and not split into that many pieces.
        outside = strings
    else:
        outside = len(b"".join(clean.split(b'"')[0::2]).translate(None, _NOT_STRUCTURE))
    if outside > max_values:
        raise DecodeError(f"more than {max_values} keys and values")


def _shape(obj: Any, limit: int = -1) -> tuple[int, bool] | None:
    """Nesting depth of a decoded value, and whether it holds a float; no recursion.

    With a `limit` >= 0, None once more than `limit` values have been seen.
    """
    deepest = 0
    has_float = False
    stack = [(obj, 1)]
    budget = limit if limit >= 0 else NO_LIMIT
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
        budget -= len(value)
        if budget < 0:
            return None
        stack.extend((item, level + 1) for item in value)
    return deepest, has_float


def _depth(obj: Any) -> int:
    shape = _shape(obj)
    assert shape is not None  # no limit
    return shape[0]


def raw_json(value: Any) -> Any:
    """orjson's `default`: a `bytes` value is JSON text, written as it is.

    A job body the daemon carries without decoding it (`gloomd.fastpath`)
    is kept as its bytes, already checked under this module's policy; no
    decoded JSON value is ever `bytes`, so the two cannot be confused.
    """
    if type(value) is bytes:
        return orjson.Fragment(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _exact_raw_json(value: Any) -> Any:
    """`raw_json` for the standard library's encoder (the rare big-integer path)."""
    if type(value) is bytes:
        return _exact_loads(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(obj: Any) -> bytes:
    """Encode compactly, falling back to the standard library for big integers."""
    try:
        return orjson.dumps(obj, default=raw_json)
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
        obj,
        separators=(",", ":"),
        sort_keys=sort_keys,
        ensure_ascii=False,
        allow_nan=False,
        default=_exact_raw_json,
    ).encode("utf-8")
