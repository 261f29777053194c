"""`gloom top` in a pseudo-terminal: it shows the daemon's numbers, follows them, leaves on q."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from gloom.cli.top import TopView
from tests.support.daemon import Daemon, spawn_gloomd

GLOOM = str(Path(sys.executable).with_name("gloom"))
WAIT = 20  # seconds for the screen to show a state (it refreshes every 0.2 s)


class WireClient:
    """A blocking master or slave connection speaking raw frames."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, obj: Any) -> None:
        payload = json.dumps(obj).encode()
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def recv(self) -> Any:
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack_from(">I", self.buf)
                if len(self.buf) >= 4 + n:
                    payload, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
                    return json.loads(payload)
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    with spawn_gloomd(env={"GLOOMD_TEST_QUIET_LOGS": "1"}) as d:
        yield d


def spawn_top(daemon: Daemon, *extra: str) -> pexpect.spawn:
    env = {**os.environ, "TERM": "xterm-256color", "NO_COLOR": "1", "COLUMNS": "140", "LINES": "40"}
    return pexpect.spawn(
        GLOOM,
        ["top", "--master-port", str(daemon.master_port), "--interval", "0.2", *extra],
        env=env,
        dimensions=(40, 140),
        timeout=WAIT,
        encoding="utf-8",
    )


def row(job_type: str, *cells: str) -> str:
    """A regex for a table row starting with these cells (rich draws │ between them)."""
    cells_pattern = r"│".join(rf"\s*{re.escape(cell)}\s*" for cell in cells)
    return re.escape(job_type) + r"\s*│" + cells_pattern


def test_top_shows_the_numbers_follows_them_and_quits_on_q(daemon: Daemon) -> None:
    master = WireClient(daemon.master_port)
    slave: WireClient | None = None
    try:
        for job_id, job_type in [
            (1, "resize"),
            (2, "resize"),
            (3, "resize"),
            (4, "email"),
            (5, "email"),
        ]:
            master.send({"action": "submit", "id": job_id, "type": job_type, "body": None})
            assert master.recv() == {"ok": True, "id": job_id}
        top = spawn_top(daemon)
        try:
            #            queued delayed waiting running dead
            top.expect(row("resize", "3", "0", "0", "0", "0", "0/0"))
            top.expect(row("email", "2", "0", "0", "0", "0", "0/0"))
            top.expect(r"masters 2 · slaves 0")  # the test's master and top's own
            slave = WireClient(daemon.slave_port)
            slave.send({"action": "join", "type": "email"})
            assert slave.recv() == {"ok": True}
            assert slave.recv()["id"] == 4
            top.expect(row("email", "1", "0", "0", "1", "0", "0/1"))
            slave.send({"action": "respond", "body": "done"})
            assert slave.recv() == {"ok": True}
            top.expect(row("email", "0", "0", "0", "1", "0", "0/1"))
            top.send("q")
            top.expect(pexpect.EOF)
        finally:
            top.close()
        assert top.exitstatus == 0, top.before
    finally:
        master.close()
        if slave is not None:
            slave.close()


def test_top_leaves_on_ctrl_c(daemon: Daemon) -> None:
    top = spawn_top(daemon)
    try:
        top.expect("q to quit")
        top.kill(signal.SIGINT)
        top.expect(pexpect.EOF)
    finally:
        top.close()
    assert top.exitstatus == 0


def test_top_without_a_daemon_exits_3() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    top = pexpect.spawn(GLOOM, ["top", "--master-port", str(port)], timeout=WAIT, encoding="utf-8")
    top.expect(pexpect.EOF)
    top.close()
    assert top.exitstatus == 3


def test_rates_come_from_successive_answers() -> None:
    view = TopView()
    first = {
        "types": [
            {
                "type": "a",
                "queued": 1,
                "running": 0,
                "slaves": 2,
                "idle": 2,
                "completed": 10,
                "failed": 0,
            }
        ],
        "totals": {"submitted": 100, "completed": 90, "failed": 1},
        "uptime_s": 10.0,
    }
    second = {
        "types": [
            {
                "type": "a",
                "queued": 5,
                "running": 2,
                "slaves": 2,
                "idle": 0,
                "completed": 30,
                "failed": 1,
                "paused": True,
            },
            {"type": {"k": 1}, "queued": 0, "running": 0, "slaves": 1, "idle": 1},
        ],
        "totals": {"submitted": 300, "completed": 150, "failed": 2},
        "uptime_s": 12.0,
    }
    view.update(first)
    assert view.rows()[0][-2:] == ["–", "–"]  # one answer: no rate yet
    view.update(second)
    rows = view.rows()
    assert rows[0] == ["a", "5", "–", "–", "2", "–", "0/2", "yes", "10.0", "0.5"]
    assert rows[1] == ['{"k":1}', "0", "–", "–", "0", "–", "1/0", "–", "–", "–"]
    assert view._footer().startswith("submitted 100/s · completed 30.0/s · failed 0.5/s")
