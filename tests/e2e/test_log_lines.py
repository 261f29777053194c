"""Every line a real daemon and a real worker log parses, as logfmt and as JSON.

The parser is an independent one, `logfmtkv` in strict mode (go-logfmt's
rules), not our own formatter read backwards: a value with a space, a quote,
a tab or a traceback's newlines must come back exactly, and a key may appear
once.  The scenario makes the daemon log what is awkward to quote: peer
names, a frame too large, a lost slave (requeue), a websocket job that
raises (a traceback at info), a scheduled job that raises (a traceback at
debug), a detached job dropped at shutdown.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import logfmtkv
import pytest
import trio
from trio_websocket import ConnectionClosed

from tests.support import ROOT, WSJOBS
from tests.support.daemon import spawn_gloomd
from tests.support.wire import frame
from tests.support.wsclient import ws_client

pytestmark = pytest.mark.timeout(90)

JOBS_DIR = WSJOBS
WORKER_JOBS = ROOT / "tests" / "worker"

#: Loggers whose lines are still `msg=` text: the broker's own call sites
#: are converted with the job lifecycle (issue 14), not here.
NOT_YET_EVENTS = {"gloomd.broker"}


def ours(logger: str) -> bool:
    """gloomd's and gloom's own loggers log events; a library's may log text."""
    return logger.split(".")[0] in ("gloomd", "gloom") and logger not in NOT_YET_EVENTS


SCHEDULE = """\
[jobs.explodes]
func = "tests.services.scheduler.schedjobs.tasks:explode"
args = ["a \\"quoted\\" reason\\twith a tab"]
every = [1, "hour"]
"""


def recv(sock: socket.socket) -> dict[str, Any]:
    header = sock.recv(4, socket.MSG_WAITALL)
    return json.loads(sock.recv(struct.unpack(">I", header)[0], socket.MSG_WAITALL))  # type: ignore[no-any-return]


async def failing_ws_job(port: int) -> list[Any]:
    got = []
    async with ws_client(port) as ws:
        await ws.send_message(json.dumps({"func": "failing.raises", "ident": "w 1"}))
        try:
            while True:
                got.append(json.loads(await ws.get_message()))
        except ConnectionClosed:
            return got


def daemon_log(log_format: str, tmp_path: Path) -> str:
    """Run the scenario against a real gloomd; its stderr."""
    schedule = tmp_path / f"jobs-{log_format}.toml"
    schedule.write_text(SCHEDULE)
    with spawn_gloomd(
        "--log-level", "debug", "--log-format", log_format, "--ws-port", "0",
        "--jobs-dir", str(JOBS_DIR), "--schedule", str(schedule), capture_logs=True,
    ) as daemon:  # fmt: skip
        assert daemon.ws_port is not None
        with (
            socket.create_connection(daemon.slave_addr, timeout=10) as slave,
            socket.create_connection(daemon.master_addr, timeout=10) as master,
        ):
            slave.sendall(frame({"action": "join", "type": ["a list", 1]}))
            assert recv(slave) == {"ok": True}
            submit = {"action": "submit", "id": "j 1", "type": ["a list", 1], "body": 1}
            master.sendall(frame(submit))
            assert recv(master) == {"ok": True, "id": "j 1"}
            assert recv(slave)["id"] == "j 1"
            slave.close()  # lost holding a job: requeued
            detached = {"action": "submit", "id": "d", "type": "q", "body": 2, "detach": True}
            master.sendall(frame(detached))
            assert recv(master) == {"ok": True, "id": "d"}
        # The master has gone: its detached job stays queued.
        with socket.create_connection(daemon.master_addr, timeout=10) as big:
            big.sendall(struct.pack(">I", 1 << 31))
            assert recv(big) == {"error": "size_error", "reason": "length too large"}
        frames = trio.run(failing_ws_job, daemon.ws_port)
        assert frames[-1]["err"] == "JobFailedError"
        assert daemon.stop() == 0
        assert daemon.proc.stderr is not None
        return daemon.proc.stderr.read().decode()


def worker_log(log_format: str) -> str:
    """A `gloom worker --burst` run over jobs that succeed, raise and time out."""
    with spawn_gloomd() as daemon:
        # Detached: they stay queued when this master leaves, for the worker to drain.
        with socket.create_connection(daemon.master_addr, timeout=10) as master:
            for job_id in ("one", "two"):
                submit = {"action": "submit", "id": job_id, "type": "w", "body": 1, "detach": True}
                master.sendall(frame(submit))
                assert recv(master) == {"ok": True, "id": job_id}
        command = [
            sys.executable, "-m", "gloom.worker", "--type", "w",
            "--handler", "workerjobs.jobs:boom", "--import-path", str(WORKER_JOBS),
            "--concurrency", "1", "--burst",
            "--master-port", str(daemon.master_port), "--slave-port", str(daemon.slave_port),
            "--log-level", "debug", "--log-format", log_format,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stderr


def check_logfmt(text: str) -> list[dict[str, Any]]:
    lines = [logfmtkv.parse(line, strict=True, duplicates="error") for line in text.splitlines()]
    assert lines, "nothing logged"
    for line in lines:
        assert list(line)[:3] == ["time", "level", "logger"], line
        if ours(line["logger"]):
            assert list(line)[3] == "event" and "msg" not in line, line
    return lines


def check_json(text: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines, "nothing logged"
    for line in lines:
        assert list(line)[:3] == ["time", "level", "logger"], line
        if ours(line["logger"]):
            assert list(line)[3] == "event" and "msg" not in line, line
    return lines


def events(lines: list[dict[str, Any]]) -> set[str]:
    return {line["event"] for line in lines if "event" in line}


def one(lines: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [line for line in lines if line.get("event") == name]
    return found


def test_daemon_lines_parse_as_logfmt_and_json(tmp_path: Path) -> None:
    text = daemon_log("logfmt", tmp_path)
    lines = check_logfmt(text)
    failed = one(lines, "schedule_failed")
    assert failed["error"] == 'ValueError: a "quoted" reason\twith a tab'
    assert failed["traceback"].startswith("Traceback (most recent call last):\n")
    ws_failed = one(lines, "wsjobd_job_failed")
    assert ws_failed["ident"] == "w 1" and ws_failed["func"] == "failing.raises"
    assert "ValueError: the job failed on purpose" in ws_failed["traceback"]
    shutdown = one(lines, "shutdown")
    assert shutdown["level"] == "warning" and shutdown["dropped_detached"] == "1"
    disconnects = [line for line in lines if line.get("event") == "disconnect"]
    assert {line["role"] for line in disconnects} >= {"master", "slave"}

    as_json = check_json(daemon_log("json", tmp_path))
    assert one(as_json, "shutdown")["dropped_detached"] == 1  # a number, not its text
    assert one(as_json, "schedule_failed")["error"] == failed["error"]
    # The same events either way (`gc` may or may not fall in the run).
    assert events(as_json) - {"gc"} == events(lines) - {"gc"}


@pytest.mark.parametrize(("log_format", "check"), [("logfmt", check_logfmt), ("json", check_json)])
def test_worker_lines_parse(log_format: str, check: Callable[[str], list[dict[str, Any]]]) -> None:
    lines = check(worker_log(log_format))
    names = events(lines)
    assert {"ready", "job_started", "job_finished", "burst_done", "stopped"} <= names
    started = [line for line in lines if line.get("event") == "job_started"]
    assert {line["type"] for line in started} == {"w"}
    assert str(one(lines, "stopped")["error"]) == "2"


@pytest.mark.parametrize(("log_format", "check"), [("logfmt", check_logfmt), ("json", check_json)])
def test_journal_lines_parse(
    log_format: str, check: Callable[[str], list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The journal's events are events too: a restart restores one detached job."""
    journal = tmp_path / "journal.db"
    args = ("--journal", str(journal), "--log-format", log_format, "--no-http")
    with spawn_gloomd(*args) as daemon:
        with socket.create_connection(daemon.master_addr, timeout=10) as master:
            detached = {"action": "submit", "id": "d", "type": "q", "body": 2, "detach": True}
            master.sendall(frame(detached))
            assert recv(master) == {"ok": True, "id": "d"}  # held until its commit
        assert daemon.stop() == 0
    with spawn_gloomd(*args, capture_logs=True) as daemon:
        assert daemon.stop() == 0
        assert daemon.proc.stderr is not None
        lines = check(daemon.proc.stderr.read().decode())
    restore = one(lines, "restore")
    assert str(restore["queued"]) == "1" and str(restore["requeued"]) == "0"
    assert str(one(lines, "shutdown")["dropped_detached"]) == "0"
