"""The installed `gloom` command, run as a subprocess against a real gloomd.

Slaves are threads using the blocking client, or `gloom slave` itself; the
command under test always runs in its own process, as a user would run it.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import gloom
from gloom.cli.render import progress_fraction
from gloom.cli.slave import parse_stdout
from tests.support.daemon import Daemon, spawn_gloomd

pytestmark = pytest.mark.timeout(60)

T = 10.0
GLOOM = Path(sys.executable).with_name("gloom")


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with spawn_gloomd(env={"GLOOMD_TEST_QUIET_LOGS": "1"}) as d:
        yield d


def env_for(daemon: Daemon) -> dict[str, str]:
    return {
        **os.environ,
        "GLOOM_MASTER_PORT": str(daemon.master_port),
        "GLOOM_SLAVE_PORT": str(daemon.slave_port),
        "NO_COLOR": "1",
        "COLUMNS": "120",
    }


def gloom_cmd(
    daemon: Daemon | None, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    env = env_for(daemon) if daemon is not None else {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [str(GLOOM), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def serve_in_thread(
    daemon: Daemon, job_type: str, handle: Callable[[gloom.Slave, gloom.SyncJob], None], count: int
) -> threading.Thread:
    slave = gloom.Slave(daemon.slave_addr, timeout=T)
    slave.join(job_type)

    def run() -> None:
        try:
            for _ in range(count):
                handle(slave, slave.job())
        finally:
            slave.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_installed_command_exists() -> None:
    assert GLOOM.exists(), f"{GLOOM} missing: is the package installed in this venv?"


def test_submit_waits_shows_a_bar_and_prints_compact_json(daemon: Daemon) -> None:
    def work(slave: gloom.Slave, job: gloom.SyncJob) -> None:
        slave.progress({"done": 1, "total": 2})
        slave.respond({"got": job.body, "list": [1, 2.5, None]})

    thread = serve_in_thread(daemon, "cli-echo", work, 1)
    done = gloom_cmd(
        daemon, "submit", "cli-echo", '{"n": 1, "s": "x"}', "--priority", "2", "--timeout", "30"
    )
    thread.join(T)
    assert done.returncode == 0, done.stderr
    assert done.stdout == '{"got":{"n":1,"s":"x"},"list":[1,2.5,null]}\n'
    assert "cli-echo" in done.stderr and "100%" in done.stderr


def test_count_submits_copies_and_counts_completions(daemon: Daemon) -> None:
    thread = serve_in_thread(daemon, "cli-sq", lambda s, j: s.respond(j.body * j.body), 4)
    done = gloom_cmd(daemon, "submit", "cli-sq", "3", "--count", "4")
    thread.join(T)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["9"] * 4
    assert "4/4" in done.stderr


def test_failed_job_exits_1_with_the_reason_and_traceback(daemon: Daemon) -> None:
    def explode(slave: gloom.Slave, job: gloom.SyncJob) -> None:
        slave.fail(
            "ERROR",
            {
                "type": "KeyError",
                "message": "'k'",
                "traceback": "Traceback (most recent call last):\n  boom",
            },
        )

    thread = serve_in_thread(daemon, "cli-bad", explode, 1)
    done = gloom_cmd(daemon, "submit", "cli-bad", "null", "--quiet", "--id", "bad-1")
    thread.join(T)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "gloom: job 'bad-1' error (ERROR): KeyError: 'k'" in done.stderr
    assert "Traceback (most recent call last):" in done.stderr


def test_wait_timeout_exits_1_and_names_the_job(daemon: Daemon) -> None:
    done = gloom_cmd(
        daemon, "submit", "cli-nobody", "1", "--wait-timeout", "0.2", "--id", "w-1", "-q"
    )
    assert done.returncode == 1
    assert "job w-1 not finished after 0.2 s" in done.stderr


def test_detach_result_and_cancel(daemon: Daemon) -> None:
    detached = gloom_cmd(daemon, "submit", "cli-later", '"work"', "--detach", "--id", "d-1")
    assert (detached.returncode, detached.stdout) == (0, "d-1\n")
    pending = gloom_cmd(daemon, "result", "d-1")
    assert pending.returncode == 1 and "not finished yet" in pending.stderr
    answered = threading.Event()

    def answer(slave: gloom.Slave, job: gloom.SyncJob) -> None:
        slave.respond({"did": job.body})
        answered.set()

    thread = serve_in_thread(daemon, "cli-later", answer, 1)
    assert answered.wait(T)
    thread.join(T)
    fetched = gloom_cmd(daemon, "result", "d-1")
    assert (fetched.returncode, fetched.stdout) == (0, '{"did":"work"}\n')

    assert gloom_cmd(daemon, "submit", "cli-never", "1", "--detach", "--id", "d-2").returncode == 0
    cancelled = gloom_cmd(daemon, "cancel", "d-2")
    assert (cancelled.returncode, cancelled.stdout) == (0, "cancelled d-2\n")
    again = gloom_cmd(daemon, "cancel", "d-2")
    assert again.returncode == 1 and "unknown_id" in again.stderr


def test_stats_table_and_json(daemon: Daemon) -> None:
    with gloom.Master(daemon.master_addr, timeout=T) as master:
        master.submit("queued-for-stats", "cli-stats", 1)
        raw = gloom_cmd(daemon, "stats", "--json")
        assert raw.returncode == 0, raw.stderr
        stats = json.loads(raw.stdout)
        assert raw.stdout == json.dumps(stats, separators=(",", ":")) + "\n"
        assert {"types", "totals", "connections", "uptime_s"} <= stats.keys()
        row = next(r for r in stats["types"] if r["type"] == "cli-stats")
        assert row["queued"] == 1
        table = gloom_cmd(daemon, "stats")
        assert table.returncode == 0
        line = next(line for line in table.stdout.splitlines() if "cli-stats" in line)
        cells = [cell.strip() for cell in line.strip().strip("│|").split("│")]
        assert cells == ["cli-stats", "1", "0", "0", "0"]
        for word in ("queued", "running", "slaves", "idle", "submitted"):
            assert word in table.stdout
        assert master.cancel("queued-for-stats")
    assert gloom_cmd(daemon, "stats", "--json", "--watch").returncode == 2


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "t", "1"],
        ["result", "x"],
        ["cancel", "x"],
        ["stats"],
        ["slave", "t", "--", "cat"],
    ],
)
def test_unreachable_daemon_exits_3_with_one_line(args: list[str]) -> None:
    port = str(free_port())
    done = gloom_cmd(None, *args, "--master-port", port, "--slave-port", port, timeout=20)
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("gloom: cannot reach gloomd at")


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "t", "{not json"],
        ["submit", "t", "1", "--count", "2", "--id", "x"],
        ["submit", "t", "1", "--timeout", "-1"],
        ["slave", "t"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    done = gloom_cmd(None, *args)
    assert done.returncode == 2
    assert "usage:" in done.stderr


SCRIPT = r"""
import json, os, sys, time
body = json.load(sys.stdin)
op = body["op"]
if op == "json":
    env = os.environ
    print(json.dumps({"id": env["GLOOM_JOB_ID"], "attempt": env["GLOOM_JOB_ATTEMPT"]}))
elif op == "text":
    sys.stdout.write("plain text\n\n")
elif op == "empty":
    pass
elif op == "sleep":
    time.sleep(30)
else:
    sys.stderr.write("e" * 3000 + "TAIL")
    sys.exit(3)
"""


def _read_line(stream: Any, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while not buf.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise TimeoutError(f"no line in time, got {buf!r}")
            chunk = os.read(stream.fileno(), 1)
            if not chunk:
                break
            buf += chunk
    return buf.decode()


def test_gloom_slave_runs_a_command_per_job(daemon: Daemon) -> None:
    proc = subprocess.Popen(
        [str(GLOOM), "slave", "cli-cmd", "-c", "2", "--", sys.executable, "-c", SCRIPT],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env_for(daemon),
    )
    try:
        assert proc.stderr is not None
        assert "serving 'cli-cmd' with 2 connection(s)" in _read_line(proc.stderr, 20)
        with gloom.Master(daemon.master_addr, timeout=T) as master:
            for op in ("json", "text", "empty"):
                master.submit(op, "cli-cmd", {"op": op})
            results = {}
            for _ in range(3):
                job = master.receive()
                results[job.id] = job.body
            assert results == {
                "json": {"id": "json", "attempt": "1"},
                "text": "plain text\n",
                "empty": None,
            }

            master.submit("fails", "cli-cmd", {"op": "fail"})
            with pytest.raises(gloom.JobError) as raised:
                master.receive()
            reason = raised.value.reason
            assert raised.value.category == "ERROR"
            assert reason["type"] == "CommandFailed" and reason["exitcode"] == 3
            assert len(reason["stderr"]) == 2048 and reason["stderr"].endswith("TAIL")
            assert "exited with status 3" in reason["message"]

            master.submit("slow", "cli-cmd", {"op": "sleep"}, job_timeout=0.3)
            with pytest.raises(gloom.JobFailed) as slow:
                master.receive()
            assert slow.value.category == "TIMEOUT"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
            assert proc.stderr is not None
            proc.stderr.close()
    assert status == 0


def test_progress_shapes_and_stdout_parsing() -> None:
    assert progress_fraction(40) == (40.0, 100.0)
    assert progress_fraction(250) == (100.0, 100.0)
    assert progress_fraction({"done": 3, "total": 4}) == (3.0, 4.0)
    assert progress_fraction({"completed": 1, "total": 2}) == (1.0, 2.0)
    assert progress_fraction({"percent": 12.5}) == (12.5, 100.0)
    assert progress_fraction(True) is None and progress_fraction("half") is None
    assert progress_fraction({"done": 1, "total": 0}) is None
    assert parse_stdout(b'{"a": 1}\n') == {"a": 1}
    assert parse_stdout(b"7\n") == 7
    assert parse_stdout(b"hello\n\n") == "hello\n"
    assert parse_stdout(b"") is None and parse_stdout(b"\n") is None
    assert parse_stdout(b"\xff\n") == "\ufffd"
