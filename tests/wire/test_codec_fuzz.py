"""Fuzzing the way in: frame decoder, JSON codec, message validation, broker.

Whatever bytes a peer sends, the daemon may only (a) hand back frames,
(b) raise `FrameTooLarge` from the decoder (the documented "hang up"), or
(c) answer with an error frame whose name the protocol documents; it must
never raise anything else, and every frame it queues must encode.  These
properties are checked with hypothesis on arbitrary bytes and on
near-valid frames (the right actions with random fields, which is where
validation bugs live).

`GLOOMD_FUZZ_EXAMPLES` (default 200 per property) sets the budget; e.g.
`GLOOMD_FUZZ_EXAMPLES=20000 GLOOMD_FUZZ_RANDOM=1 pytest tests/test_codec_fuzz.py`
for a long, freshly seeded run.
"""

from __future__ import annotations

import json
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gloomd import messages
from gloomd.broker import Broker, BrokerLimits, iter_frames
from gloomd.ingest import ingest_for
from gloomwire import codec
from gloomwire.framing import FrameDecoder, FrameTooLarge, encode_frame
from tests.support.brokerkit import receive

pytestmark = pytest.mark.timeout(300)

EXAMPLES = int(os.environ.get("GLOOMD_FUZZ_EXAMPLES", "200"))
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("GLOOMD_FUZZ_RANDOM") is None,
)

#: Error names a peer may receive (protocol.md, plus the security frames).
DOCUMENTED = {
    "invalid_json",
    "missing_field",
    "invalid_type",
    "invalid_action",
    "unknown_type",
    "unknown_action",
    "invalid_state",
    "id_exists",
    "unknown_id",
    "not_ready",
    "queue_full",
    "dependency_cycle",
    "unknown_dependency",
    "job_failed",
    "job_error",
}

ACTIONS = [
    "submit",
    "cancel",
    "result",
    "stats",
    "join",
    "respond",
    "progress",
    "fail",
    "auth",
    "ping",
    "nope",
    "",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: big ints must round-trip
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
near_valid = st.fixed_dictionaries(
    {"action": st.one_of(st.sampled_from(ACTIONS), json_values)},
    optional={
        "id": st.one_of(st.integers(), st.text(max_size=4), json_values),
        "type": json_values,
        "priority": st.one_of(st.integers(-5, 5), json_values),
        "body": json_values,
        # Finite: NaN beside a >64-bit integer cannot be written as JSON at all
        # (non-finite numbers on the wire: tests/test_codec_policy.py).
        "timeout": st.one_of(finite_floats, st.integers(-2, 5), json_values),
        "detach": st.one_of(st.booleans(), json_values),
        "after": st.one_of(
            st.lists(st.one_of(st.integers(0, 3), st.text(max_size=2))), json_values
        ),
        "error": st.one_of(
            st.sampled_from(["ERROR", "TIMEOUT", "CRASH", "HALTED", "X"]), json_values
        ),
        "reason": json_values,
        "token": json_values,
    },
)
payloads = st.one_of(
    st.binary(max_size=64),
    near_valid.map(codec.dumps),
    json_values.map(codec.dumps),
    # Valid JSON with one byte flipped or cut short.
    st.tuples(near_valid.map(codec.dumps), st.integers(0, 200), st.integers(0, 255)).map(
        lambda t: (
            t[0][: t[1] % (len(t[0]) + 1)] + bytes([t[2]]) + t[0][t[1] % (len(t[0]) + 1) + 1 :]
        )
    ),
)


def frame_bytes(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


@fuzz
@given(
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=8),
    limit=st.integers(0, 64),
)
def test_decoder_takes_any_bytes_in_any_chunks(data: bytes, cuts: list[int], limit: int) -> None:
    """Only payloads or FrameTooLarge come out, and chunking never changes them."""

    def run(chunks: list[bytes]) -> tuple[list[bytes], bool]:
        decoder = FrameDecoder(limit)
        out: list[bytes] = []
        for chunk in chunks:
            try:
                out += decoder.feed(chunk)
            except FrameTooLarge as exc:
                out += getattr(exc, "frames", [])
                return out, True
        return out, False

    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=False)]
    whole = run([data])
    assert run(chunks) == whole
    assert all(len(p) <= limit for p in whole[0])


@fuzz
@given(payload=payloads, holding=st.booleans())
def test_validation_raises_only_documented_violations(payload: bytes, holding: bool) -> None:
    try:
        obj = messages.decode_object(payload)
    except messages.ProtocolViolation as violation:
        assert violation.error == "invalid_json"
        assert len(violation.reason) <= messages.ECHO_LIMIT
        encode_frame(violation.frame())
        return
    for parse in (messages.parse_master, lambda o: messages.parse_slave(o, holding)):
        try:
            parse(obj)
        except messages.ProtocolViolation as violation:
            assert violation.error in DOCUMENTED
            encode_frame(violation.frame())


@fuzz
@given(payloads=st.lists(payloads, max_size=12))
def test_broker_answers_anything_with_encodable_frames(payloads: list[bytes]) -> None:
    """Arbitrary frames on both ports: nothing raises, every queued frame encodes,
    every error is documented, and a peer never gets an error it was not owed."""
    broker = Broker(BrokerLimits(max_queued=5))
    master = broker.connect_master("m")
    slave = broker.connect_slave("s")
    receive(broker, slave, b'{"action":"join","type":null}')
    for i, payload in enumerate(payloads):
        peer = master if i % 2 == 0 else slave
        before = len(peer.outbox)
        receive(broker, peer, payload)
        assert len(peer.outbox) >= before + (0 if _may_be_silent(payload) else 1)
    for peer in (master, slave):
        for raw in iter_frames(peer.outbox):
            frame = codec.loads(raw[4:])
            if "error" in frame:
                assert frame["error"] in DOCUMENTED, frame
    broker.disconnect(master)
    broker.disconnect(slave)
    assert broker.jobs == {} and broker.types == {} and broker.queued_total == 0


def _may_be_silent(payload: bytes) -> bool:
    """A valid progress frame is the one request that gets no reply."""
    try:
        obj = codec.loads(payload)
    except codec.DecodeError:
        return False
    return isinstance(obj, dict) and obj.get("action") == "progress" and "body" in obj


@fuzz
@given(
    stream=st.lists(st.one_of(payloads.map(frame_bytes), st.binary(max_size=16)), max_size=10),
    cut=st.integers(1, 64),
)
def test_whole_way_in(stream: list[bytes], cut: int) -> None:
    """Bytes -> decoder -> ingest -> broker, as the server runs it, in small reads."""
    broker = Broker()
    peer = broker.connect_master("m")
    ingest = ingest_for(broker, peer, max_frame=1024)
    data = b"".join(stream)
    for start in range(0, len(data), cut):
        try:
            frames = ingest.decoder.feed(data[start : start + cut])
        except FrameTooLarge:
            break  # the server answers size_error and hangs up here
        for payload in frames:
            ingest.receive(payload)
    for raw in iter_frames(peer.outbox):
        assert raw[:4] == struct.pack(">I", len(raw) - 4)


# ------------------------------------------------------------------ found by fuzzing


@pytest.mark.parametrize("where", ['{"action":%s}', '{"action":"join","type":%s}'])
def test_deeply_nested_frame_is_refused_not_fatal(where: str) -> None:
    depth = 1000
    nested = "[" * depth + "]" * depth
    payload = (where % nested).encode()
    broker = Broker()
    peer = broker.connect_master("m") if "join" not in where else broker.connect_slave("s")
    receive(broker, peer, payload)  # it used to raise RecursionError and stop the server
    (reply,) = [json.loads(raw[4:]) for raw in iter_frames(peer.outbox)]
    assert reply["error"] == "invalid_json"


@pytest.mark.parametrize("depth", [253, 254])
def test_nesting_limit_is_what_the_encoder_can_write_back(depth: int) -> None:
    # The frame object is one level; a body of 253 makes a 254-deep frame,
    # the most orjson can write back (as the job frame to the slave).
    body = "[" * depth + "]" * depth
    payload = ('{{"action":"submit","id":1,"type":"t","body":{}}}'.format(body)).encode()
    broker = Broker()
    master = broker.connect_master("m")
    slave = broker.connect_slave("s")
    receive(broker, slave, b'{"action":"join","type":"t"}')
    receive(broker, master, payload)
    replies = [json.loads(raw[4:]) for raw in iter_frames(master.outbox)]
    if depth <= 253:
        assert replies == [{"ok": True, "id": 1}]
        job = [json.loads(raw[4:]) for raw in iter_frames(slave.outbox)][-1]
        assert json.dumps(job["body"]) == json.dumps(json.loads(body))
    else:
        assert replies[0]["error"] == "invalid_json"
