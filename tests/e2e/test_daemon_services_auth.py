"""With a token set, the daemon's own services still reach its broker.

The scheduler submits in-process (`gloomd.local`), so it needs no token and
no socket; the slave outside must still authenticate."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest

from tests.support.daemon import spawn_gloomd
from tests.support.wire import frame

pytestmark = pytest.mark.timeout(60)


def recv(sock: socket.socket) -> dict:
    def read(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            assert chunk, "daemon closed the connection"
            buf += chunk
        return buf

    return json.loads(read(struct.unpack(">I", read(4))[0]))


def test_scheduler_submits_through_an_authenticated_daemon(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    schedule = tmp_path / "jobs.toml"
    schedule.write_text(
        '[jobs.tick]\nsubmit = { type = "tick", body = "hello" }\nevery = [1, "second"]\n'
    )
    with spawn_gloomd("--token-file", str(token), "--schedule", str(schedule)) as daemon:
        with socket.create_connection(daemon.slave_addr, timeout=20) as slave:
            slave.sendall(
                frame({"action": "auth", "token": "t0ken"})
                + frame({"action": "join", "type": "tick"})
            )
            assert recv(slave) == {"ok": True}
            assert recv(slave) == {"ok": True}
            job = recv(slave)  # the first fire is at once; bounded by the socket timeout
            assert job["action"] == "job" and job["body"] == "hello"
            assert str(job["id"]).startswith("sched:tick:")
