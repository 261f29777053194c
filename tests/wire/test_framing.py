"""The sans-IO codec, fed bytes with no socket in sight."""

from __future__ import annotations

import itertools
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gloomwire import codec
from gloomwire.framing import (
    LARGE_FRAME,
    SPLICE_MIN,
    FrameDecoder,
    FrameTooLarge,
    FrameTooLargeWithFrames,
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


def test_a_pending_frame_is_completed_from_a_view_and_the_rest_read_as_a_view(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each receive of 64 KiB frames ends inside one: the view that completes
    # it is not copied whole (and joined again), its rest goes frame by frame.
    big = b'"' + b"y" * 70_000 + b'"'
    stream = _frames(big, big, b"{}")
    seen: list[int] = []
    real = FrameDecoder._feed_view
    monkeypatch.setattr(FrameDecoder, "_feed_view", lambda s, v: seen.append(len(v)) or real(s, v))
    decoder = FrameDecoder()
    buffer = bytearray(stream)
    assert decoder.feed(memoryview(buffer)[:1000]) == []
    assert decoder.feed(memoryview(buffer)[1000:2000]) == []
    buffer[:2000] = b"\0" * 2000  # held bytes are copies: the buffer is read into again
    assert decoder.feed(memoryview(buffer)[2000:]) == [big, big, b"{}"]
    assert seen == [1000, len(stream) - len(big) - 4]
    assert decoder.pending == 0


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=8))
def test_views_cut_anywhere_give_the_frames_bytes_give(cuts: list[int]) -> None:
    payloads = [b'"' + b"a" * 9_000 + b'"', b"{}", b"[1]", b'"' + b"b" * 5_000 + b'"', b"2"]
    stream = _frames(*payloads)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    by_view, by_bytes = FrameDecoder(), FrameDecoder()
    got_view: list[bytes] = []
    got_bytes: list[bytes] = []
    buffer = bytearray(len(stream))
    for start, stop in itertools.pairwise(bounds):
        buffer[: stop - start] = stream[start:stop]
        got_view += by_view.feed(memoryview(buffer)[: stop - start])
        buffer[:] = b"\0" * len(buffer)
        got_bytes += by_bytes.feed(stream[start:stop])
    assert got_view == got_bytes == payloads
    assert by_view.pending == by_bytes.pending == 0


def test_frames_before_a_bad_length_survive_a_pending_frame_completed_from_a_view() -> None:
    big = b'"' + b"z" * 6_000 + b'"'
    stream = _frames(big, b"{}") + struct.pack(">I", 1 << 30)
    decoder = FrameDecoder()
    assert decoder.feed(memoryview(stream)[:100]) == []
    with pytest.raises(FrameTooLargeWithFrames) as caught:
        decoder.feed(memoryview(stream)[100:])
    assert caught.value.frames == [big, b"{}"]


@pytest.mark.parametrize(
    "obj",
    [
        {"action": "job", "id": 7, "type": "t", "body": b'"' + b"x" * SPLICE_MIN + b'"'},
        {
            "action": "job",
            "id": "a",
            "type": "t",
            "body": b"[" + b"1," * SPLICE_MIN + b"1]",
            "attempt": 2,
            "timeout": 1.5,
        },
        {"id": 10**30, "body": b'"' + b"x" * SPLICE_MIN + b'"'},  # the exact writer
        {"id": 1, "body": b'"short"'},
    ],
)
def test_a_large_body_is_spliced_in_place_and_the_frame_is_the_same(obj: dict[str, object]) -> None:
    whole = encode_payload(codec.dumps(obj))
    parts: list[bytes] = []
    spliced = encode_into(parts, obj)
    assert b"".join(parts) == encode_frame(obj) == whole
    body = obj["body"]
    assert spliced == (isinstance(body, bytes) and len(body) >= SPLICE_MIN and obj["id"] != 10**30)
    if spliced:
        assert any(part is body for part in parts)  # not copied by orjson
