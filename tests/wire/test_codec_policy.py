"""One decoding policy whatever path a payload takes (issue 18); no sockets.

Small payloads go to orjson, small ones with a long digit run and large ones
with floats to the exact standard-library path.  Whichever: what is accepted
can be written back, and what is refused is `invalid_json` with a reason
that itself encodes.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gloomd import messages
from gloomwire import codec
from gloomwire.framing import encode_frame

LONG_INT = b"123456789012345678901234567890"  # a 19+ digit run: the exact path
PAD = b'"' + b"p" * 5000 + b'"'  # past 4 KiB: the large-payload path


def paths(value: bytes) -> list[bytes]:
    """`value` inside payloads that reach each decoding path."""
    return [
        b"[" + value + b"]",  # small, orjson
        b"[" + value + b"," + LONG_INT + b"]",  # small, exact
        b"[" + value + b"," + PAD + b"]",  # large, orjson
        b"[" + value + b"," + PAD + b",1.5]",  # large with a float: exact
        b"[" + value + b"," + PAD + b"," + LONG_INT + b"]",  # large with a big integer
    ]


@pytest.mark.parametrize(
    "value",
    [
        b'"\\ud800"',  # a lone high surrogate
        b'"x\\udfffy"',  # a lone low surrogate
        b'"\\udc00\\ud800"',  # a pair in the wrong order
        b'{"\\ud834":1}',  # as an object key
        b'[{"k":["\\ud800"]}]',  # deep inside
        b"1e400",
        b"-1E999",
        b"[1e400]",
    ],
)
def test_refused_on_every_path(value: bytes) -> None:
    for payload in paths(value):
        with pytest.raises(codec.DecodeError):
            codec.loads(payload)


@pytest.mark.parametrize(
    "value,expected",
    [
        (b'"\\ud800\\udc00"', "\U00010000"),  # a proper pair is one character
        (b"1e-400", 0.0),  # underflow is a double like any other
        pytest.param(b"1" + b"0" * 400, 10**400, id="10**400"),  # past orjson's doubles: exact
        (b"-" + LONG_INT, -int(LONG_INT)),
    ],
)
def test_accepted_on_every_path(value: bytes, expected: object) -> None:
    for payload in paths(value):
        decoded = codec.loads(payload)
        assert decoded[0] == expected and type(decoded[0]) is type(expected)
        codec.dumps(decoded)  # and it writes back


def test_digits_past_the_conversion_limit_are_refused() -> None:
    for payload in paths(b"1" * 5000):
        with pytest.raises(codec.DecodeError):
            codec.loads(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_invalid_json_reason_always_encodes(raw: bytes) -> None:
    """Whatever bytes the payload held, the echoed reason is encodable."""
    for payload in (raw, raw + b"\xed\xa0\x80", b'{"a":"\\ud800",' + raw):
        try:
            messages.decode_object(payload)
        except messages.ProtocolViolation as violation:
            assert violation.error == "invalid_json"
            json.loads(encode_frame(violation.frame())[4:])


def test_auth_frame_uses_the_same_decoder() -> None:
    from gloomd.ingest import auth_frame_ok

    bad = b'{"action":"auth","token":"\\ud800","n":' + LONG_INT + b"}"
    assert not auth_frame_ok(bad, "secret")
    good = b'{"action":"auth","token":"secret","n":' + LONG_INT + b"}"
    assert auth_frame_ok(good, "secret")


# ---------------------------------------------------------------- numeric ranges


@pytest.mark.parametrize(
    "timeout",
    [0, -1, pytest.param(10**400, id="10**400"), messages.MAX_TIMEOUT + 1, 1e300, True, "5"],
)
def test_timeout_out_of_range_is_invalid_type(timeout: object) -> None:
    obj = {"action": "submit", "id": 1, "type": "t", "body": 0, "timeout": timeout}
    with pytest.raises(messages.ProtocolViolation) as caught:
        messages.parse_master(obj)
    assert caught.value.frame() == {"error": "invalid_type", "reason": "timeout"}


@pytest.mark.parametrize("timeout", [1, 0.001, messages.MAX_TIMEOUT, float(messages.MAX_TIMEOUT)])
def test_timeout_in_range(timeout: object) -> None:
    obj = {"action": "submit", "id": 1, "type": "t", "body": 0, "timeout": timeout}
    msg = messages.parse_master(obj)
    assert isinstance(msg, messages.Submit) and msg.timeout == timeout


def test_every_range_is_finite_and_documented() -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name, bounds in messages.RANGES.items():
        assert bounds.high < float("inf") and f"`{name}`" in readme
        assert not bounds.holds(float("nan")) and not bounds.holds(float("inf"))


# ---------------------------------------------------------------- the value cap


def structure(value: object) -> int:
    """The `[ { , :` bytes of `value`'s compact JSON, outside strings, by walking it."""
    if isinstance(value, list):
        return 1 + max(0, len(value) - 1) + sum(structure(v) for v in value)
    if isinstance(value, dict):
        return 1 + max(0, len(value) - 1) + len(value) + sum(structure(v) for v in value.values())
    return 0


tricky_text = st.text(alphabet='ab"\\,:[{}]', max_size=12)
tricky_values = st.recursive(
    st.none() | st.integers() | tricky_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_text, inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(tricky_values)
def test_value_count_sets_strings_aside(value: object) -> None:
    """Commas, brackets, quotes and backslashes inside strings never count."""
    payload = json.dumps(value, separators=(",", ":")).encode()
    count = structure(value)
    codec._check_values(payload, count)  # exactly at the cap: accepted
    if count:
        with pytest.raises(codec.DecodeError):
            codec._check_values(payload, count - 1)


def test_value_cap_refuses_before_building_anything() -> None:
    import time

    payload = b"[" + b"[]," * 2_000_000 + b"[]]"  # 6 MB; 400 MB decoded, once
    started = time.perf_counter()
    with pytest.raises(codec.DecodeError):
        codec.loads(payload, 262_144)
    assert time.perf_counter() - started < 1.0  # a few C passes, not a decode


# ---------------------------------------------------------------- large payloads (issue 20)

BIG_BODY = b'{"action":"respond","body":"' + b"x" * 65536 + b'"}'


def test_large_payload_under_the_cap_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 64 KiB job frame cannot hold more values than the cap allows: counting
    its structure bytes cost as much as decoding it, so it is not counted."""
    counted: list[int] = []
    real = codec._structure_bytes
    monkeypatch.setattr(codec, "_structure_bytes", lambda p: counted.append(len(p)) or real(p))
    assert codec.loads(BIG_BODY, 262_144)["body"] == "x" * 65536
    assert counted == []
    # Longer than the cap allows values: counted, and refused before decoding.
    with pytest.raises(codec.DecodeError, match="more than 10000 keys"):
        codec.loads(b"[" + b"[]," * 30_000 + b"[]]", 10_000)
    assert counted == [90_004]  # the whole payload, counted once


@pytest.mark.parametrize(
    "payload",
    [
        b"[" + b",".join([b"1.5"] * 5000) + b"]",  # many values, floats: C passes
        b"[" + b",".join([LONG_INT] * 300) + b"]",  # many big integers: exact
        b"[" + b",".join([b"1.5"] * 100) + b"," + PAD + b"]",  # past the quick walk
        b'{"a":' + b",".join([b'"x"'] * 2000).join([b"[", b"]"]) + b',"b":' + PAD + b"}",
        b"[" + PAD + b"," + LONG_INT + b"]",  # few values, a big integer
        b"[1.25," + PAD + b"]",  # few values, a float
    ],
)
def test_large_payloads_decode_exactly_whatever_their_values(payload: bytes) -> None:
    assert codec.loads(payload, 262_144) == json.loads(payload)


@pytest.mark.parametrize("values", [10, 100, 5000])
def test_large_payloads_too_deep_are_refused_whatever_their_values(values: int) -> None:
    deep = b"[" * 300 + b"]" * 300
    payload = b"[" + b",".join([b"0"] * values) + b"," + deep + b"," + PAD + b"]"
    with pytest.raises(codec.DecodeError, match="nested deeper"):
        codec.loads(payload, 262_144)
