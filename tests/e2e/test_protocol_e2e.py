"""Every row of the protocol's tables against a real gloomd, frames built by hand.

Error frames are compared byte for byte: key order and compactness are part
of Gloom's wire format.
"""

from __future__ import annotations

import struct

import pytest
import trio

from gloomd.server import GloomServer
from tests.support.wire import Peer, join, raw_frame

pytestmark = pytest.mark.timeout(30)


async def expect_raw(peer: Peer, expected: bytes) -> None:
    with trio.fail_after(5):
        assert await peer.recv_payload() == expected


# ------------------------------------------------------------------ slave port


async def test_slave_happy_path(gloomd_server: GloomServer) -> None:
    slave = await Peer.connect(gloomd_server.slave_port)
    await slave.send({"action": "join", "type": "echo"})
    await expect_raw(slave, b'{"ok":true}')
    master = await Peer.connect(gloomd_server.master_port)
    await master.send(
        {"action": "submit", "id": "m1", "type": "echo", "priority": 3, "body": [1, {"a": None}]}
    )
    await expect_raw(master, b'{"ok":true,"id":"m1"}')
    # The first delivery is byte for byte Gloom's frame: no `attempt`.
    await expect_raw(slave, b'{"action":"job","id":"m1","type":"echo","body":[1,{"a":null}]}')
    await slave.send({"action": "respond", "body": {"r": 1}})
    await expect_raw(slave, b'{"ok":true}')
    await expect_raw(master, b'{"id":"m1","body":{"r":1}}')


SLAVE_ERRORS = [
    ({"type": "echo"}, b'{"error":"missing_field","reason":"type"}'),
    ({"action": "join"}, b'{"error":"missing_field","reason":"job_type"}'),
    ({"action": "respond", "body": 1}, b'{"error":"invalid_state","reason":"not_processing"}'),
    ({"action": "respond"}, b'{"error":"invalid_state","reason":"not_processing"}'),
    ({"action": "progress", "body": 1}, b'{"error":"invalid_state","reason":"not_processing"}'),
    ({"action": "fail", "error": "ERROR"}, b'{"error":"invalid_state","reason":"not_processing"}'),
    (
        {"action": "submit", "id": 1, "type": "t", "body": 1},
        b'{"error":"invalid_action","reason":"not_a_master"}',
    ),
    ({"action": "cancel", "id": 1}, b'{"error":"invalid_action","reason":"not_a_master"}'),
    ({"action": "stats"}, b'{"error":"invalid_action","reason":"not_a_master"}'),
    ({"action": "result", "id": 1}, b'{"error":"invalid_action","reason":"not_a_master"}'),
    ({"action": "dance"}, b'{"error":"unknown_type","reason":"dance"}'),
    ({"action": 7}, b'{"error":"unknown_type","reason":7}'),
]


@pytest.mark.parametrize(("msg", "expected"), SLAVE_ERRORS)
async def test_slave_errors_keep_connection(
    gloomd_server: GloomServer, msg: dict, expected: bytes
) -> None:
    slave = await Peer.connect(gloomd_server.slave_port)
    await slave.send(msg)
    await expect_raw(slave, expected)
    # Still in sync and usable.
    await slave.send({"action": "join", "type": "x"})
    await expect_raw(slave, b'{"ok":true}')


HOLDING_ERRORS = [
    ({"action": "respond"}, b'{"error":"missing_field","reason":"body"}'),
    ({"action": "progress"}, b'{"error":"missing_field","reason":"body"}'),
    ({"action": "fail"}, b'{"error":"missing_field","reason":"error"}'),
    ({"action": "fail", "error": "OOPS"}, b'{"error":"invalid_type","reason":"error"}'),
    ({"action": "fail", "error": 1}, b'{"error":"invalid_type","reason":"error"}'),
]


@pytest.mark.parametrize(("msg", "expected"), HOLDING_ERRORS)
async def test_slave_errors_while_holding_a_job(
    gloomd_server: GloomServer, msg: dict, expected: bytes
) -> None:
    slave = await join(gloomd_server.slave_port, "t")
    master = await Peer.connect(gloomd_server.master_port)
    assert await master.request({"action": "submit", "id": 1, "type": "t", "body": None}) == {
        "ok": True,
        "id": 1,
    }
    assert (await slave.recv())["id"] == 1
    await slave.send(msg)
    await expect_raw(slave, expected)
    # The job is still held: respond works and reaches the master.
    assert await slave.request({"action": "respond", "body": "done"}) == {"ok": True}
    assert await master.recv() == {"id": 1, "body": "done"}


async def test_progress_and_fail_extensions(gloomd_server: GloomServer) -> None:
    slave = await join(gloomd_server.slave_port, "t")
    master = await Peer.connect(gloomd_server.master_port)
    await master.send({"action": "submit", "id": "p", "type": "t", "body": None, "timeout": 30})
    await expect_raw(master, b'{"ok":true,"id":"p"}')
    await expect_raw(slave, b'{"action":"job","id":"p","type":"t","body":null,"timeout":30}')
    await slave.send({"action": "progress", "body": {"done": 1, "of": 2}})
    await expect_raw(master, b'{"id":"p","progress":{"done":1,"of":2}}')
    await slave.send({"action": "fail", "error": "TIMEOUT", "reason": "too slow"})
    await expect_raw(slave, b'{"ok":true}')
    await expect_raw(
        master, b'{"error":"job_error","reason":"too slow","id":"p","category":"TIMEOUT"}'
    )


# ------------------------------------------------------------------ master port

MASTER_ERRORS = [
    ({"id": 1}, b'{"error":"missing_field","reason":"type"}'),
    ({"action": "submit", "type": "t", "body": 1}, b'{"error":"missing_field","reason":"id"}'),
    ({"action": "submit", "id": 1, "body": 1}, b'{"error":"missing_field","reason":"type"}'),
    ({"action": "submit", "id": 1, "type": "t"}, b'{"error":"missing_field","reason":"body"}'),
    (
        {"action": "submit", "id": 1, "type": "t", "priority": 5.0, "body": 1},
        b'{"error":"invalid_type","reason":"priority"}',
    ),
    (
        {"action": "submit", "id": 1, "type": "t", "priority": "5", "body": 1},
        b'{"error":"invalid_type","reason":"priority"}',
    ),
    (
        {"action": "submit", "id": 1, "type": "t", "priority": True, "body": 1},
        b'{"error":"invalid_type","reason":"priority"}',
    ),
    # First failure only: priority is checked before body.
    (
        {"action": "submit", "id": 1, "type": "t", "priority": "x"},
        b'{"error":"invalid_type","reason":"priority"}',
    ),
    (
        {"action": "submit", "id": 1, "type": "t", "body": 1, "timeout": 0},
        b'{"error":"invalid_type","reason":"timeout"}',
    ),
    (
        {"action": "submit", "id": 1, "type": "t", "body": 1, "timeout": "5"},
        b'{"error":"invalid_type","reason":"timeout"}',
    ),
    (
        {"action": "submit", "id": 1, "type": "t", "body": 1, "detach": 1},
        b'{"error":"invalid_type","reason":"detach"}',
    ),
    (
        {"action": "submit", "id": 1.5, "type": "t", "body": 1},
        b'{"error":"invalid_type","reason":"id"}',
    ),
    ({"action": "join", "type": "t"}, b'{"error":"invalid_action","reason":"not_a_slave"}'),
    ({"action": "respond", "body": 1}, b'{"error":"invalid_action","reason":"not_a_slave"}'),
    ({"action": "progress", "body": 1}, b'{"error":"invalid_action","reason":"not_a_slave"}'),
    ({"action": "fail", "error": "ERROR"}, b'{"error":"invalid_action","reason":"not_a_slave"}'),
    ({"action": "dance"}, b'{"error":"unknown_action","reason":"dance"}'),
    ({"action": "cancel"}, b'{"error":"missing_field","reason":"id"}'),
    ({"action": "cancel", "id": "nope"}, b'{"error":"unknown_id","reason":"nope"}'),
    ({"action": "result", "id": 9}, b'{"error":"unknown_id","reason":9}'),
]


@pytest.mark.parametrize(("msg", "expected"), MASTER_ERRORS)
async def test_master_errors_keep_connection(
    gloomd_server: GloomServer, msg: dict, expected: bytes
) -> None:
    master = await Peer.connect(gloomd_server.master_port)
    await master.send(msg)
    await expect_raw(master, expected)
    await master.send({"action": "submit", "id": "after", "type": "t", "body": None})
    await expect_raw(master, b'{"ok":true,"id":"after"}')


async def test_duplicate_id_is_refused_instead_of_acked(gloomd_server: GloomServer) -> None:
    master = await Peer.connect(gloomd_server.master_port)
    other = await Peer.connect(gloomd_server.master_port)
    await master.send({"action": "submit", "id": "d", "type": "t", "body": 1})
    await expect_raw(master, b'{"ok":true,"id":"d"}')
    await other.send({"action": "submit", "id": "d", "type": "t", "body": 1})
    await expect_raw(other, b'{"error":"id_exists","reason":"d"}')


async def test_id_echoed_exactly_including_big_integers(gloomd_server: GloomServer) -> None:
    master = await Peer.connect(gloomd_server.master_port)
    big = 123456789012345678901234567890
    await master.send({"action": "submit", "id": big, "type": "t", "body": None})
    await expect_raw(master, b'{"ok":true,"id":123456789012345678901234567890}')
    await master.send({"action": "submit", "id": "1", "type": "t", "body": None})
    await expect_raw(master, b'{"ok":true,"id":"1"}')
    await master.send({"action": "submit", "id": 1, "type": "t", "body": None})
    await expect_raw(master, b'{"ok":true,"id":1}')
    slave = await join(gloomd_server.slave_port, "t")
    assert (await slave.recv())["id"] == big
    await slave.send({"action": "respond", "body": big})
    await expect_raw(
        master, b'{"id":123456789012345678901234567890,"body":123456789012345678901234567890}'
    )


async def test_cancel_and_stats(gloomd_server: GloomServer) -> None:
    master = await Peer.connect(gloomd_server.master_port)
    await master.request({"action": "submit", "id": "c", "type": "t", "body": None})
    await master.send({"action": "cancel", "id": "c"})
    await expect_raw(master, b'{"ok":true,"id":"c"}')
    reply = await master.request({"action": "stats"})
    assert reply["ok"] is True
    assert reply["stats"]["totals"]["cancelled"] == 1
    assert reply["stats"]["connections"] == {"masters": 1, "slaves": 0}


async def test_detached_result_fetched_by_another_master(gloomd_server: GloomServer) -> None:
    submitter = await Peer.connect(gloomd_server.master_port)
    await submitter.request(
        {"action": "submit", "id": "bg", "type": "t", "body": 5, "detach": True}
    )
    await submitter.aclose()
    fetcher = await Peer.connect(gloomd_server.master_port)
    await fetcher.send({"action": "result", "id": "bg"})
    await expect_raw(fetcher, b'{"error":"not_ready","reason":"bg"}')
    slave = await join(gloomd_server.slave_port, "t")
    job = await slave.recv()
    assert await slave.request({"action": "respond", "body": job["body"] * 2}) == {"ok": True}
    # Ask until the result is there: the respond's ok was written after the
    # broker stored it, so one request suffices.
    await fetcher.send({"action": "result", "id": "bg"})
    await expect_raw(fetcher, b'{"id":"bg","body":10}')


# ------------------------------------------------------------------ framing


async def test_invalid_json_keeps_connection(gloomd_server: GloomServer) -> None:
    master = await Peer.connect(gloomd_server.master_port)
    await master.send_raw(raw_frame(b"{nope"))
    await expect_raw(master, b'{"error":"invalid_json","reason":"{nope"}')
    await master.send_raw(raw_frame(b"[1,2]"))
    await expect_raw(master, b'{"error":"invalid_json","reason":"not a JSON object"}')
    await master.send_raw(raw_frame(b"\xff\xfe"))
    assert (await master.recv())["error"] == "invalid_json"
    await master.send_raw(raw_frame(b"x" * 5000))
    reply = await master.recv()
    assert reply == {"error": "invalid_json", "reason": "x" * 200}
    await master.send({"action": "stats"})
    assert (await master.recv())["ok"] is True


async def test_oversized_frame_gets_size_error_and_close(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(max_frame=1024)
    slave = await Peer.connect(server.slave_port)
    # A good frame pipelined before the bad header is still handled.
    await slave.send_raw(
        raw_frame(b'{"action":"join","type":"t"}') + struct.pack(">I", 1025) + b"x" * 100
    )
    await expect_raw(slave, b'{"ok":true}')
    await expect_raw(slave, b'{"error":"size_error","reason":"length too large"}')
    with trio.fail_after(5):
        assert await slave.recv_eof()


async def test_connection_cap(make_server, broker: str) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(max_connections=2)
    slave_port = server.slave_port
    if broker == "cluster":
        # The cap is each daemon's own (it guards the process' descriptors),
        # not the cluster's: all three connections go to one daemon of the
        # pair (the masters' one), as they would to one embedded daemon.
        slave_port = server.daemons[0].slave_port
    first = await Peer.connect(server.master_port)
    second = await Peer.connect(slave_port)
    assert (await first.request({"action": "stats"}))["ok"]
    assert await second.request({"action": "join", "type": "t"}) == {"ok": True}
    third = await Peer.connect(server.master_port)
    await expect_raw(third, b'{"error":"too_many_connections","reason":2}')
    with trio.fail_after(5):
        assert await third.recv_eof()
    # The first two are unaffected.
    assert (await first.request({"action": "stats"}))["ok"]


async def test_close_mid_frame_is_a_disconnect(gloomd_server: GloomServer) -> None:
    slave = await join(gloomd_server.slave_port, "t")
    master = await Peer.connect(gloomd_server.master_port)
    await master.request({"action": "submit", "id": 1, "type": "t", "body": None})
    await slave.recv()
    await slave.send_raw(struct.pack(">I", 50) + b'{"action":')
    await slave.aclose()
    # The job is requeued: a second slave gets it as attempt 2.
    other = await join(gloomd_server.slave_port, "t")
    with trio.fail_after(5):
        job = await other.recv()
    assert (job["id"], job["attempt"]) == (1, 2)


async def test_redelivery_carries_attempt_then_timeout(gloomd_server: GloomServer) -> None:
    """protocol.md, job frame extras: `attempt` only on a redelivery, `timeout`
    only when set, both after Gloom's four keys and in that order."""
    first = await join(gloomd_server.slave_port, "t")
    master = await Peer.connect(gloomd_server.master_port)
    await master.send({"action": "submit", "id": "r", "type": "t", "body": 1, "timeout": 30})
    await expect_raw(master, b'{"ok":true,"id":"r"}')
    await expect_raw(first, b'{"action":"job","id":"r","type":"t","body":1,"timeout":30}')
    await first.aclose()  # lost while holding it: the job goes back
    second = await join(gloomd_server.slave_port, "t")
    await expect_raw(
        second, b'{"action":"job","id":"r","type":"t","body":1,"attempt":2,"timeout":30}'
    )


async def test_ping_on_both_ports(gloomd_server: GloomServer) -> None:
    for port in (gloomd_server.master_port, gloomd_server.slave_port):
        peer = await Peer.connect(port)
        await peer.send({"action": "ping"})
        await expect_raw(peer, b'{"ok":true}')
