"""The load generator's protocol codecs, fed bytes without any server.

Each codec is checked against frames built here by hand from the protocol's
definition (not by the codec itself), and fed one byte at a time so a frame
split across receives is handled.  A generator that mis-parses would report
lost or duplicate jobs that the server never lost, so these pin it down.
"""

from __future__ import annotations

import struct

import orjson
import pytest

from benchmarks.beanstalk_wire import BeanstalkMaster, BeanstalkWorker, split_replies
from benchmarks.bodies import BodyMaker, parse_ids
from benchmarks.gearman_wire import GearmanMaster, GearmanWorker
from benchmarks.gloom_wire import GloomMaster, GloomWorker

pytestmark = pytest.mark.timeout(10)


def gloom_frame(obj: object) -> bytes:
    payload = orjson.dumps(obj)
    return struct.pack(">I", len(payload)) + payload


def gloom_frames(data: bytes) -> list[object]:
    out = []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        out.append(orjson.loads(data[4 : 4 + n]))
        data = data[4 + n :]
    return out


def gearman_packet(magic: bytes, kind: int, *args: bytes) -> bytes:
    data = b"\0".join(args)
    return magic + struct.pack(">II", kind, len(data)) + data


def byte_by_byte(feed, data: bytes):  # type: ignore[no-untyped-def]
    """Feed ``data`` one byte at a time and gather what ``feed`` returns."""
    got: list = []
    for i in range(len(data)):
        got.extend(feed(data[i : i + 1]))
    return got


# ------------------------------------------------------------------- bodies


def test_body_carries_ids_and_has_the_requested_size() -> None:
    bodies = BodyMaker(100)
    body = bodies.make(7, 123456)
    assert len(body) == 100
    assert body.startswith(b"7:123456:")
    assert parse_ids(body) == (7, 123456)
    assert parse_ids(body.decode()) == (7, 123456)


def test_tiny_body_keeps_its_ids() -> None:
    assert BodyMaker(3).make(12, 34) == b"12:34:"


# ------------------------------------------------------------------- gloomd


def test_gloom_master_submits_valid_frames() -> None:
    m = GloomMaster(2, BodyMaker(40))
    m.submit(10, 2)
    frames = gloom_frames(bytes(m.out[0]))
    assert frames == [
        {"action": "submit", "id": 10, "type": "echo", "body": BodyMaker(40).make(2, 10).decode()},
        {"action": "submit", "id": 11, "type": "echo", "body": BodyMaker(40).make(2, 11).decode()},
    ]


def test_gloom_master_matches_results_split_anywhere() -> None:
    bodies = BodyMaker(40)
    m = GloomMaster(2, bodies)
    stream = (
        gloom_frame({"ok": True, "id": 10})
        + gloom_frame({"id": 10, "body": bodies.make(2, 10).decode()})
        + gloom_frame({"id": 11, "body": "not the body"})
        + gloom_frame({"error": "id_exists", "reason": 12})
    )
    results = byte_by_byte(lambda b: m.feed(0, b), stream)
    assert results == [(10, True), (11, False)]
    assert m.acked == 1
    assert len(m.errors) == 1 and "id_exists" in m.errors[0]


def test_gloom_worker_joins_and_echoes_each_job() -> None:
    w = GloomWorker()
    assert gloom_frames(w.greet()) == [{"action": "join", "type": "echo"}]
    assert w.feed(gloom_frame({"ok": True})) == b""
    assert w.ready
    job = gloom_frame({"action": "job", "id": 5, "type": "echo", "body": "0:5:xx", "attempt": 1})
    reply = b"".join(byte_by_byte(lambda b: [w.feed(b)], job))
    assert gloom_frames(reply) == [{"action": "respond", "body": "0:5:xx"}]
    assert w.jobs == 1


# ------------------------------------------------------------------- gearmand


def test_gearman_master_submit_packet_layout() -> None:
    bodies = BodyMaker(20)
    m = GearmanMaster(1, bodies)
    m.submit(42, 1)
    assert bytes(m.out[0]) == gearman_packet(b"\0REQ", 7, b"echo", b"42", bodies.make(1, 42))


def test_gearman_master_counts_created_and_matches_completions() -> None:
    bodies = BodyMaker(20)
    m = GearmanMaster(1, bodies)
    stream = (
        gearman_packet(b"\0RES", 8, b"H:host:1")
        + gearman_packet(b"\0RES", 13, b"H:host:1", bodies.make(1, 42))
        + gearman_packet(b"\0RES", 13, b"H:host:2", bodies.make(0, 43))  # another master's
        + gearman_packet(b"\0RES", 14, b"H:host:3")  # WORK_FAIL
    )
    results = byte_by_byte(lambda b: m.feed(0, b), stream)
    assert results == [(42, True), (43, False)]
    assert m.acked == 1
    assert m.errors == [str((14, b"H:host:3"))]


def test_gearman_worker_sleeps_wakes_and_completes() -> None:
    w = GearmanWorker()
    assert w.greet() == gearman_packet(b"\0REQ", 1, b"echo") + gearman_packet(b"\0REQ", 9)
    # NO_JOB: go to sleep.
    assert w.feed(gearman_packet(b"\0RES", 10)) == gearman_packet(b"\0REQ", 4)
    assert w.ready
    # NOOP wakes it once; a second NOOP while grabbing must not grab twice.
    assert w.feed(gearman_packet(b"\0RES", 6)) == gearman_packet(b"\0REQ", 9)
    assert w.feed(gearman_packet(b"\0RES", 6)) == b""
    # A body may contain NUL bytes: only the first two separators split.
    assign = gearman_packet(b"\0RES", 11, b"H:h:9", b"echo", b"a\0b")
    reply = b"".join(byte_by_byte(lambda b: [w.feed(b)], assign))
    assert reply == gearman_packet(b"\0REQ", 13, b"H:h:9", b"a\0b") + gearman_packet(b"\0REQ", 9)
    assert w.jobs == 1


# ------------------------------------------------------------------- beanstalkd


def test_beanstalk_replies_split_with_binary_data() -> None:
    buf = bytearray(b"INSERTED 1\r\nRESERVED 7 4\r\na\r\nb\r\nDELETED\r\nRESERVED 8 3\r\nab")
    assert split_replies(buf) == [
        (b"INSERTED 1", None),
        (b"RESERVED 7 4", b"a\r\nb"),
        (b"DELETED", None),
    ]
    assert bytes(buf) == b"RESERVED 8 3\r\nab"


def test_beanstalk_master_puts_reserves_and_deletes() -> None:
    bodies = BodyMaker(20)
    m = BeanstalkMaster(3, bodies)
    m.greet()
    m.submit(5, 2)
    b5, b6 = bodies.make(3, 5), bodies.make(3, 6)
    assert bytes(m.out[0]) == (
        b"use jobs\r\n"
        + b"put 0 0 3600 20\r\n" + b5 + b"\r\n"
        + b"put 0 0 3600 20\r\n" + b6 + b"\r\n"
    )  # fmt: skip
    assert bytes(m.out[1]) == b"watch r3\r\nignore default\r\nreserve\r\nreserve\r\n"
    m.out[1].clear()
    assert byte_by_byte(lambda b: m.feed(0, b), b"USING jobs\r\nINSERTED 1\r\nINSERTED 2\r\n") == []
    assert m.acked == 2
    stream = b"WATCHING 2\r\nWATCHING 1\r\nRESERVED 90 20\r\n" + b6 + b"\r\nDELETED\r\n"
    assert byte_by_byte(lambda b: m.feed(1, b), stream) == [(6, True)]
    assert bytes(m.out[1]) == b"delete 90\r\n"
    assert m.errors == []


def test_beanstalk_worker_replies_to_the_jobs_master_tube() -> None:
    bodies = BodyMaker(20)
    w = BeanstalkWorker()
    assert w.greet() == b"watch jobs\r\nignore default\r\nreserve\r\n"
    assert w.feed(b"WATCHING 2\r\nWATCHING 1\r\n") == b""
    assert w.ready
    b = bodies.make(4, 1)
    first = w.feed(b"RESERVED 11 20\r\n" + b + b"\r\n")
    assert first == b"use r4\r\nput 0 0 3600 20\r\n" + b + b"\r\ndelete 11\r\nreserve\r\n"
    # Same master again: no second `use`.
    b2 = bodies.make(4, 2)
    second = w.feed(b"USING r4\r\nINSERTED 1\r\nDELETED\r\nRESERVED 12 20\r\n" + b2 + b"\r\n")
    assert second == b"put 0 0 3600 20\r\n" + b2 + b"\r\ndelete 12\r\nreserve\r\n"
    assert w.jobs == 2
    assert w.errors == []
