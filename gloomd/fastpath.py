"""Job bodies as opaque bytes: submit and respond decoded without building the body.

A job's body is the one large value of the hot path, and the daemon only
carries it: from a submit into the job frame, from a respond into the
result frame.  Decoding it into Python objects and encoding it again cost
two parses and two encodings per job (issue 20: 20 M instructions per job
for a 64 KiB body of small objects).  This module decodes the two frames
with msgspec into typed structs whose `body` is `msgspec.Raw`: the body is
checked as JSON and kept as its bytes, and the frames that carry it are
written with those bytes spliced in (`gloomwire.codec`: a value of type
`bytes` is JSON text, written as it is).

It is only a fast path.  `submit` and `respond` return None for anything
they are not sure of, and the caller then takes the one exact path of
`gloomd.messages` (decoding policy, error frames, check order).  So a
frame is answered the same way on either path, and the fast path need not
know any error.  It accepts only frames the exact path would accept with
the same values; what it refuses to judge:

* any backslash in the payload: no escape, so no lone surrogate and no key
  spelled two ways (`"b\\u006fdy"`);
* invalid UTF-8 (msgspec does not check the bytes it skips);
* a `body` key that is not the only one at the top level, or any key
  besides the struct's fields (`after`, extensions): msgspec keeps the last
  of a repeated key, the exact path too, but skips the earlier one unjudged;
* a body that is not a JSON string and holds, outside its strings, a number
  with an exponent or a run of 19 digits (`1e400`, integers past the
  conversion limit: the exact path's business), or nesting past the depth
  allowed;
* a payload that could pass the value cap.

What differs is the spelling of an accepted body, never its value: it is
forwarded as it was sent (whitespace, `1.50`, key order and repeated keys
inside an object), where the exact path writes it compactly.  A body sent
by orjson, the standard library with compact separators, or any of the
clients in this repository is forwarded byte for byte either way.
"""

from __future__ import annotations

from typing import Final, Literal

from gloomwire import codec

from .messages import RANGES, Caps, Respond, Submit

try:
    import msgspec
except ImportError:  # an optional dependency: without it every frame takes the exact path
    msgspec = None  # type: ignore[assignment]

__all__ = ["ENABLED", "respond", "submit"]

#: Deepest nesting a body may have on this path (the frame's object is one level).
_BODY_DEPTH: Final = codec.MAX_DEPTH - 1
#: Digits map to "0", `e` and `E` to "e", everything else to " ": a number with
#: an exponent shows as "0e", an integer past 64 bits as nineteen "0"s.
_NUMBERS: Final = bytes(48 if 48 <= i <= 57 else 101 if i in (69, 101) else 32 for i in range(256))
_LONG_RUN: Final = b"0" * 19
#: `{` and `}` become `[` and `]`; all but brackets and quotes are deleted.
_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE: Final = bytes(i for i in range(256) if i not in b'[]{}"')
_TIMEOUT: Final = RANGES["timeout"]
_BLANK: Final = b" \t\n\r"

if msgspec is not None:

    class _SubmitFrame(msgspec.Struct, forbid_unknown_fields=True):
        action: Literal["submit"]
        id: str | int
        type: str
        body: msgspec.Raw
        priority: int = 0
        timeout: int | float | None = None
        detach: bool = False

    class _RespondFrame(msgspec.Struct, forbid_unknown_fields=True):
        action: Literal["respond"]
        body: msgspec.Raw

    _decode_submit = msgspec.json.Decoder(_SubmitFrame).decode
    _decode_respond = msgspec.json.Decoder(_RespondFrame).decode
    _Invalid: tuple[type[Exception], ...] = (msgspec.DecodeError, msgspec.ValidationError)

#: False when msgspec is not installed.
ENABLED: Final = msgspec is not None


def submit(payload: bytes, caps: Caps) -> Submit | None:
    """The `Submit` the exact path would make of `payload`, or None: take that path."""
    if not ENABLED or payload.find(b"\\") >= 0:
        return None
    try:
        frame = _decode_submit(payload)
    except _Invalid:
        return None
    job_id = frame.id
    if type(job_id) is str:
        if len(job_id) > caps.max_id:
            return None
    elif not -caps.int_bound < job_id < caps.int_bound:
        return None
    job_type = frame.type
    if len(job_type) > caps.max_type:
        return None
    timeout = frame.timeout
    if timeout is not None and not _TIMEOUT.holds(timeout):
        return None
    body = _body(payload, frame.body, caps.max_values)
    if body is None:
        return None
    return Submit(job_id, job_type, job_type, frame.priority, body, timeout, frame.detach)


def respond(payload: bytes, max_values: int) -> Respond | None:
    """The `Respond` the exact path would make of `payload` (the slave holding a
    job: the caller checks), or None."""
    if not ENABLED or payload.find(b"\\") >= 0:
        return None
    try:
        frame = _decode_respond(payload)
    except _Invalid:
        return None
    body = _body(payload, frame.body, max_values)
    return None if body is None else Respond(body)


def _plain_values(body: bytes) -> bool:
    """No number the exact path must judge, and no nesting past the depth allowed.

    C passes only, each erring on the side of "not sure": digits followed by
    an exponent, or 19 of them, anywhere (in a string too); then the
    brackets and quotes alone, with empty strings taken out (no backslash,
    so quotes delimit strings): a quote left means a string holding a
    bracket, which could fake the depth; else the brackets are peeled one
    level a pass.  A body as deep as allowed costs that many passes over
    its brackets, a wide one a few.  (Setting the strings aside by
    splitting on quotes cost 200 us for 64 KiB of small objects.)
    """
    marks = body.translate(_NUMBERS)
    if marks.find(b"0e") >= 0 or marks.find(_LONG_RUN) >= 0:
        return False
    brackets = body.translate(_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if brackets.find(b'"') >= 0:
        return False
    for _ in range(_BODY_DEPTH):
        if not brackets:
            return True
        brackets = brackets.replace(b"[]", b"")
    return not brackets


def _body(payload: bytes, raw: msgspec.Raw, max_values: int) -> bytes | None:
    """The body's bytes, if the exact path would accept it with the same value.

    The payload has no backslash, so every quote in it delimits a string:
    `"body"` found after the body is a second key, and a string body holds
    no quote.
    """
    if not payload.isascii():
        try:
            payload.decode()  # the exact path's rule: refuses encoded surrogates too
        except UnicodeDecodeError:
            return None
    body = bytes(raw)
    start = payload.find(b'"body"') + 6
    if start < 6:
        return None
    while payload[start] in _BLANK:
        start += 1
    if payload[start] != 58:  # ":": else the first "body" was a value
        return None
    start += 1
    while payload[start] in _BLANK:
        start += 1
    if not payload.startswith(body, start) or payload.find(b'"body"', start + len(body)) >= 0:
        return None
    if body[0] != 34 and not _plain_values(body):  # not a string: numbers and depth
        return None
    if len(payload) > max_values:
        try:
            codec._check_values(payload, max_values)
        except codec.DecodeError:
            return None
    return body
