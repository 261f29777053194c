"""The opaque-body fast path answers every frame as the exact path does (issue 20); no sockets.

`fastpath.submit` / `fastpath.respond` either return the message the exact
path (`messages.decode_object` + `parse_master` / `parse_slave`) makes of a
payload, with the body kept as its JSON bytes, or None.  So the property
tested is one-sided and strong: whatever the fast path accepts, the exact
path accepts with the same fields and a body of the same value; and frames
sent the way clients send them (compact JSON) give byte-identical frames out.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gloomd import fastpath, ingest
from gloomd.broker import KICK_CHUNK, Broker, iter_frames
from gloomd.ingest import MasterIngest, SlaveIngest
from gloomd.messages import (
    DEFAULT_CAPS,
    ProtocolViolation,
    Respond,
    Submit,
    decode_object,
    parse_master,
    parse_slave,
)
from gloomwire import codec
from gloomwire.framing import encode_frame
from tests.support.brokerkit import Kit

pytestmark = pytest.mark.skipif(not fastpath.ENABLED, reason="msgspec is not installed")


def exact_submit(payload: bytes) -> Any:
    try:
        return parse_master(decode_object(payload, DEFAULT_CAPS.max_values))
    except ProtocolViolation as violation:
        return violation.frame()


def exact_respond(payload: bytes) -> Any:
    try:
        return parse_slave(decode_object(payload, DEFAULT_CAPS.max_values), True)
    except ProtocolViolation as violation:
        return violation.frame()


def same_message(fast: Submit | Respond, exact: Any) -> None:
    assert type(exact) is type(fast), exact
    assert type(fast.body) is bytes
    assert codec.loads(fast.body) == exact.body
    assert fast._replace(body=None) == exact._replace(body=None)


# ---------------------------------------------------------------- explicit frames

SUBMIT = b'{"action":"submit","id":%s,"type":"t","body":%s}'
REFUSED_BODIES = [
    b'"\\ud800"',  # a lone surrogate (any backslash: the exact path)
    b'"\xed\xa0\x80"',  # an encoded surrogate: invalid UTF-8
    b'"\xff"',
    b"1e400",
    b"[1.5e3]",  # any exponent outside a string body
    b"[" + b"1" * 30 + b"]",  # past 64 bits
    b"1" * 5000,  # past the conversion limit
    b"[" * 300 + b"]" * 300,  # too deep
    b'"a\x01b"',  # a control character in a string
    b"NaN",
]


@pytest.mark.parametrize("body", REFUSED_BODIES)
def test_bodies_the_exact_path_judges(body: bytes) -> None:
    payload = SUBMIT % (b"1", body)
    assert fastpath.submit(payload, DEFAULT_CAPS) is None
    assert fastpath.respond(b'{"action":"respond","body":%s}' % body, 1 << 20) is None


@pytest.mark.parametrize(
    "payload",
    [
        b'{"action":"submit","id":1,"type":"t","body":1e400,"body":1}',  # repeated key
        b'{"action":"submit","id":1,"type":"t","body":"\xff","body":1}',
        b'{"action":"submit","id":1,"type":"t","body":1,"body":1}',
        b'{"action":"submit","id":1,"type":"t","b\\u006fdy":[1e400],"body":1}',
        b'{"action":"submit","id":1,"type":"t","body":1,"after":["x"]}',  # not on this path
        b'{"action":"submit","id":1,"type":"t","body":1,"extension":true}',
        b'{"action":"submit","id":true,"type":"t","body":1}',
        b'{"action":"submit","id":1.0,"type":"t","body":1}',
        b'{"action":"submit","id":1,"type":"t","priority":5.0,"body":1}',
        b'{"action":"submit","id":1,"type":"t","timeout":0,"body":1}',
        b'{"action":"submit","id":1,"type":"t","timeout":1e400,"body":1}',
        b'{"action":"submit","id":1,"type":"t","detach":null,"body":1}',
        b'{"action":"submit","id":"%s","type":"t","body":1}' % (b"i" * 1025),
        b'{"action":"submit","id":%s,"type":"t","body":1}' % (b"9" * 1025),
        b'{"action":"submit","id":1,"type":1,"body":1}',  # other types: the exact path
        b'{"action":"submit","id":1,"type":"body","body":1}',
        b'{"action":"cancel","id":1}',
        b'{"action":"submit","id":1,"type":"t"}',
        b"[1]",
    ],
)
def test_frames_the_exact_path_judges(payload: bytes) -> None:
    assert fastpath.submit(payload, DEFAULT_CAPS) is None


@pytest.mark.parametrize(
    "payload",
    [
        b'{"action":"submit","id":1,"type":"t","body":"x"}',
        b'{"action":"submit","id":"a","type":"t","priority":-3,"body":{"a":[1,2,{"b":null}]}}',
        b'{ "action" : "submit" , "id" : 7 , "type" : "t" , "body" : { "a" : 1.25 } }',
        b'{"body":[true,false,null],"action":"submit","type":"t","id":123456789012345678}',
        b'{"action":"submit","id":1,"type":"t","timeout":2.5,"detach":true,"body":"\xc3\xa9"}',
        b'{"action":"submit","id":%s,"type":"t","body":0}' % (b"9" * 30),
    ],
)
def test_frames_the_fast_path_takes_are_the_exact_paths(payload: bytes) -> None:
    fast = fastpath.submit(payload, DEFAULT_CAPS)
    assert fast is not None
    same_message(fast, exact_submit(payload))


# ---------------------------------------------------------------- generated frames

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**25), max_value=10**25)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
raw_fragments = st.sampled_from(
    [b"1e400", b'"\\ud800"', b"1" * 25, b'"\xff"', b"[" * 260 + b"]" * 260, b"-0", b"1.50", b"{}"]
)
keys = st.sampled_from(["action", "id", "type", "priority", "body", "timeout", "detach", "after"])


@st.composite
def frames(draw: st.DrawFn, action: str) -> bytes:
    """A frame near a valid one: fields dropped, repeated, mistyped, spaced, escaped."""
    fields: list[tuple[str, bytes]] = [("action", json.dumps(action).encode())]
    if action == "submit":
        fields.append(("id", json.dumps(draw(st.integers(-5, 5) | st.text(max_size=3))).encode()))
        fields.append(("type", json.dumps(draw(st.sampled_from(["t", "body", 1]))).encode()))
    fields.append(("body", codec.dumps(draw(json_values))))
    for _ in range(draw(st.integers(0, 3))):
        value = draw(json_values.map(lambda v: json.dumps(v).encode()) | raw_fragments)
        fields.insert(draw(st.integers(0, len(fields))), (draw(keys), value))
    if draw(st.booleans()):
        fields = draw(st.permutations(fields))
    sep = draw(st.sampled_from([b",", b", ", b" ,\n"]))
    colon = draw(st.sampled_from([b":", b": ", b" : "]))
    return b"{" + sep.join(json.dumps(k).encode() + colon + v for k, v in fields) + b"}"


@settings(max_examples=400, deadline=None)
@given(frames("submit"))
def test_any_submit_the_fast_path_takes_is_the_exact_paths(payload: bytes) -> None:
    fast = fastpath.submit(payload, DEFAULT_CAPS)
    if fast is not None:
        same_message(fast, exact_submit(payload))


@settings(max_examples=400, deadline=None)
@given(frames("respond"))
def test_any_respond_the_fast_path_takes_is_the_exact_paths(payload: bytes) -> None:
    fast = fastpath.respond(payload, DEFAULT_CAPS.max_values)
    if fast is not None:
        same_message(fast, exact_respond(payload))


# ---------------------------------------------------------------- frames out


def run_jobs(payloads: list[bytes], responds: list[bytes], fast: bool) -> list[bytes]:
    """Submit `payloads`, answer each with `responds`; every frame written, in order."""
    broker = Broker()
    master = broker.connect_master("m")
    slave = broker.connect_slave("s")
    m_in, s_in = MasterIngest(broker, master), SlaveIngest(broker, slave)
    s_in.receive(b'{"action":"join","type":"t"}')
    out: list[bytes] = []
    for submit, respond in zip(payloads, responds, strict=True):
        (fastpath_on if fast else fastpath_off)(m_in.receive, submit)
        (fastpath_on if fast else fastpath_off)(s_in.receive, respond)
    for peer in (master, slave):
        out += iter_frames(peer.outbox)
    return out


def fastpath_on(receive: Any, payload: bytes) -> None:
    saved = ingest.FAST_PATH_MIN
    ingest.FAST_PATH_MIN = 0  # every frame, however short
    try:
        receive(payload)
    finally:
        ingest.FAST_PATH_MIN = saved


def fastpath_off(receive: Any, payload: bytes) -> None:
    saved = fastpath.ENABLED
    fastpath.ENABLED = False  # type: ignore[misc]
    try:
        receive(payload)
    finally:
        fastpath.ENABLED = saved  # type: ignore[misc]


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=5))
def test_frames_out_are_byte_identical_for_compact_clients(bodies: list[Any]) -> None:
    payloads = [
        codec.dumps({"action": "submit", "id": i, "type": "t", "body": b})
        for i, b in enumerate(bodies)
    ]
    responds = [codec.dumps({"action": "respond", "body": [b]}) for b in bodies]
    assert run_jobs(payloads, responds, fast=True) == run_jobs(payloads, responds, fast=False)


def test_a_large_object_body_is_spliced_not_rebuilt() -> None:
    body = b"[" + b",".join([b'{"k":12345,"v":"abcdefgh"}'] * 3000) + b"]"
    submit = b'{"action":"submit","id":"j","type":"t","body":' + body + b"}"
    frames = run_jobs([submit], [b'{"action":"respond","body":' + body + b"}"], fast=True)
    assert (
        encode_frame({"action": "job", "id": "j", "type": "t", "body": json.loads(body)}) in frames
    )
    assert body in frames[-2]  # the slave's job frame carries the bytes sent


def test_state_is_checked_before_the_fast_path() -> None:
    broker = Broker()
    slave = broker.connect_slave("s")
    SlaveIngest(broker, slave).receive(b'{"action":"respond","body":1}')
    assert [codec.loads(f[4:]) for f in iter_frames(slave.outbox)] == [
        {"error": "invalid_state", "reason": "not_processing"}
    ]


def test_raw_bodies_encode_on_the_exact_path_too() -> None:
    """A result whose id needs the exact encoder (past 64 bits) and whose body
    is kept as bytes: both written exactly."""
    frame = {"id": 10**30, "body": b'[1,{"a":"x"}]'}
    assert codec.dumps(frame) == b'{"id":1000000000000000000000000000000,"body":[1,{"a":"x"}]}'
    assert encode_frame({"body": b"[1, 2]"})[4:] == b'{"body":[1, 2]}'


@pytest.mark.parametrize(
    ("body", "plain"),
    [
        (b"[" * 253 + b"]" * 253, True),  # the frame's object is the 254th level
        (b"[" * 254 + b"]" * 254, False),
        (b"[" + b",".join([b'{"a":[1,{"b":"c"}]}'] * 2000) + b"]", True),  # wide, shallow
        # Brackets in strings could fake a shallower body: not judged here.
        (b'[["]",[["[",[]]]]]', False),
        (b'["a","",{"":""}]', True),
        (b'{"k":"3e4"}', False),  # an exponent's look, even in a string: not judged here
    ],
)
def test_depth_and_numbers_of_a_structured_body(body: bytes, plain: bool) -> None:
    assert fastpath._plain_values(body) is plain
    deep = b"[" * 300 + b"]" * 300
    assert fastpath.submit(SUBMIT % (b"1", b"[" + body + b"," + deep + b"]"), DEFAULT_CAPS) is None


def test_short_frames_take_the_exact_path(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[bytes] = []
    monkeypatch.setattr(fastpath, "submit", lambda p, caps: taken.append(p))
    broker = Broker()
    receive = MasterIngest(broker, broker.connect_master("m")).receive
    receive(b'{"action":"submit","id":1,"type":"t","body":"%s"}' % (b"x" * 400))
    receive(b'{"action":"submit","id":2,"type":"t","body":"%s"}' % (b"x" * 600))
    assert [len(p) for p in taken] == [647]  # the second only


def test_a_fast_submit_waits_behind_its_masters_kick() -> None:
    """A submit taken by the fast path while its master's kick runs is held
    like any other request: its answers leave after the kick's."""
    k = Kit()
    m = k.master()
    s = k.slave("t")
    total = KICK_CHUNK + 10
    for job_id in range(total):
        k.submit(m, job_id, detach=True)
        k.out(s)
        k.send(s, {"action": "fail", "error": "ERROR", "reason": None})
    k.broker.disconnect(s)
    k.out(m)
    assert k.send(m, {"action": "kick", "type": "t"}) == []  # a chunk per pass
    body = "x" * ingest.FAST_PATH_MIN
    payload = b'{"action":"submit","id":"late","type":"u","body":"%s"}' % body.encode()
    assert fastpath.submit(payload, DEFAULT_CAPS) is not None  # the fast path's frame
    k.receive(m, payload)
    assert len(m.held) == 1 and k.out(m) == []
    k.step()
    assert k.out(m) == [{"ok": True, "kicked": total}, {"ok": True, "id": "late"}]
