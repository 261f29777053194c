"""The sans-IO codec, fed bytes with no socket in sight."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gloomwire import codec
from gloomwire.framing import (
    LARGE_FRAME,
    FrameDecoder,
    FrameTooLarge,
    encode_frame,
    encode_into,
    encode_payload,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def test_single_frame_layout() -> None:
    assert encode_frame({"ok": True}) == b"\x00\x00\x00\x0b" + b'{"ok":true}'


def test_byte_at_a_time() -> None:
    data = encode_frame({"a": 1}) + encode_frame({"b": [1, 2]}) + encode_payload(b"")
    decoder = FrameDecoder()
    got: list[bytes] = []
    for i in range(len(data)):
        got += decoder.feed(data[i : i + 1])
    assert got == [b'{"a":1}', b'{"b":[1,2]}', b""]
    assert decoder.pending == 0


def test_many_frames_in_one_feed() -> None:
    frames = [encode_frame({"i": i}) for i in range(5000)]
    decoder = FrameDecoder()
    got = decoder.feed(b"".join(frames))
    assert [json.loads(p)["i"] for p in got] == list(range(5000))


def test_partial_header_and_body_kept() -> None:
    data = encode_frame({"x": "y" * 1000})
    decoder = FrameDecoder()
    assert decoder.feed(data[:2]) == []
    assert decoder.pending == 2
    assert decoder.feed(data[2:500]) == []
    assert decoder.pending == 500
    assert decoder.feed(data[500:]) == [data[4:]]
    assert decoder.pending == 0


def test_length_at_cap_accepted_and_over_cap_refused() -> None:
    decoder = FrameDecoder(max_frame=10)
    assert decoder.feed(encode_payload(b"0123456789")) == [b"0123456789"]
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(struct.pack(">I", 11))
    assert info.value.length == 11


def test_frames_before_an_oversized_one_are_kept() -> None:
    decoder = FrameDecoder(max_frame=100)
    data = encode_frame({"a": 1}) + struct.pack(">I", 2**32 - 1)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(data)
    assert info.value.frames == [b'{"a":1}']


def test_large_frame_in_small_chunks_is_linear() -> None:
    # 4 MiB in 4 KiB pieces: quadratic re-joining would take seconds here.
    payload = b"x" * (4 * 1024 * 1024)
    data = encode_payload(payload)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for i in range(0, len(data), 4096):
        got += decoder.feed(data[i : i + 4096])
    assert got == [payload]


def test_big_integers_round_trip_exactly() -> None:
    for value in (2**64, -(2**63) - 1, 10**40, 2**63 - 1):
        payload = encode_frame({"id": value})[4:]
        assert codec.loads(payload) == {"id": value}
        assert type(codec.loads(payload)["id"]) is int


def test_nan_is_not_json_even_on_the_slow_path() -> None:
    with pytest.raises(codec.DecodeError):
        codec.loads(b'{"a": NaN, "b": 12345678901234567890123}')


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, max_size=8), st.integers(min_value=1, max_value=64))
def test_round_trip_in_any_chunking(values: list[object], chunk: int) -> None:
    data = b"".join(encode_frame(v) for v in values)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for i in range(0, len(data), chunk):
        got += decoder.feed(data[i : i + chunk])
    assert [codec.loads(p) for p in got] == values
    assert decoder.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    decoder = FrameDecoder(max_frame=1024)
    try:
        frames = decoder.feed(data)
    except FrameTooLarge:
        return
    consumed = sum(4 + len(f) for f in frames)
    assert consumed + decoder.pending == len(data)


def test_large_payloads_keep_big_integers_exact() -> None:
    filler = "ab12" * 2000  # over the pre-scan size, with digit runs inside a string
    for obj in (
        {"body": filler, "id": 2**70},
        {"body": filler, "n": [1.5, -(2**65), 3]},
        {"body": "1234567890123456789012345" * 400},
    ):
        payload = encode_frame(obj)[4:]
        assert len(payload) > 4096
        got = codec.loads(payload)
        assert got == obj
        assert [type(v) for v in got.values()] == [type(v) for v in obj.values()]


@pytest.mark.parametrize("size", [100, 10_000])
def test_too_deep_is_refused_small_or_large(size: int) -> None:
    deep = "[" * 300 + "]" * 300
    payload = ('{{"pad":"{}","v":{}}}'.format("x" * size, deep)).encode()
    with pytest.raises(codec.DecodeError):
        codec.loads(payload)


# ------------------------------------------------------ views of a reused buffer (issue 20)


def _frames(*payloads: bytes) -> bytes:
    return b"".join(encode_payload(p) for p in payloads)


@pytest.mark.parametrize("split", [0, 3, 70_000, 70_004, 70_050])
def test_a_view_gives_the_frames_bytes_give_and_keeps_none_of_the_buffer(split: int) -> None:
    big, small = b'"' + b"x" * 70_000 + b'"', b"{}"
    stream = _frames(big, small, big) + encode_payload(big)[:100]
    buffer = bytearray(len(stream))
    by_view, by_bytes = FrameDecoder(), FrameDecoder()
    got_view: list[bytes] = []
    for chunk in (stream[:split], stream[split:]):
        buffer[: len(chunk)] = chunk
        got_view += by_view.feed(memoryview(buffer)[: len(chunk)])
        buffer[:] = b"\0" * len(buffer)  # the caller reads into it again
    got_bytes = by_bytes.feed(stream[:split]) + by_bytes.feed(stream[split:])
    assert got_view == got_bytes == [big, small, big]
    assert all(type(f) is bytes for f in got_view)
    assert by_view.pending == by_bytes.pending == 100
    rest = encode_payload(big)[100:]
    assert by_view.feed(memoryview(rest)) == by_bytes.feed(rest) == [big]


def test_a_view_starting_with_a_large_frame_is_copied_frame_by_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[int] = []
    real = FrameDecoder._feed_view
    monkeypatch.setattr(FrameDecoder, "_feed_view", lambda s, v: seen.append(len(v)) or real(s, v))
    decoder = FrameDecoder()
    decoder.feed(memoryview(_frames(b"1", b"2")))  # small: copied whole, sliced as bytes
    decoder.feed(memoryview(_frames(b"3" * LARGE_FRAME, b"4")))
    assert seen == [LARGE_FRAME + 4 + 5]


def test_encode_into_gives_encode_frame_s_bytes() -> None:
    parts: list[bytes] = []
    for obj in ({"ok": True}, {"id": 10**30, "body": b"[1]"}, {"body": "x" * 5000}):
        encode_into(parts, obj)
    assert b"".join(parts) == b"".join(
        encode_frame(o)
        for o in ({"ok": True}, {"id": 10**30, "body": b"[1]"}, {"body": "x" * 5000})
    )
