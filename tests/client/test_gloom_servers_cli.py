"""`--servers` on the command line: `gloom worker`, `submit`, `result`, `stats`
over two real gloomd processes, each command in its own process."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gloom
from tests.support.daemon import Daemon, spawn_gloomd

pytestmark = pytest.mark.timeout(90)

GLOOM = Path(sys.executable).with_name("gloom")
TESTS = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
WORKER_ARGS = [
    *("--handler", "workerjobs.jobs:echo"),
    *("--import-path", str(TESTS / "worker")),
    *("--concurrency", "1"),
]


@pytest.fixture(scope="module")
def daemons() -> Iterator[list[Daemon]]:
    quiet = {"GLOOMD_TEST_QUIET_LOGS": "1"}
    with spawn_gloomd(env=quiet) as first, spawn_gloomd(env=quiet) as second:
        yield [first, second]


def masters(daemons: list[Daemon]) -> str:
    return ",".join(f"{HOST}:{d.master_port}" for d in daemons)


def gloom_cmd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GLOOM), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "120", **(env or {})},
        check=False,
    )


def submitted(daemon: Daemon) -> int:
    with gloom.Master(daemon.master_addr, timeout=10) as master:
        count: int = master.stats()["totals"]["submitted"]
    return count


def wait_ready(proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    """Block on the worker's ``ready`` log line (stderr), not on a sleep."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise TimeoutError("gloom worker did not report ready")
            line = proc.stderr.readline()
            if not line:
                raise RuntimeError(f"gloom worker exited: {proc.wait()}")
            if "event=ready" in line:
                return


def test_worker_submit_and_stats_over_two_daemons(daemons: list[Daemon]) -> None:
    before = [submitted(d) for d in daemons]
    slaves = ",".join(f"{HOST}:{d.slave_port}" for d in daemons)
    worker = subprocess.Popen(
        [str(GLOOM), "worker", "--servers", slaves, "--type", "cli-spread", *WORKER_ARGS],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready(worker)
        done = gloom_cmd(
            "submit", "--servers", masters(daemons), "-q", "--count", "4", "cli-spread", "7"
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["7"] * 4
        # Round robin: two on each daemon, all served by the one worker.
        assert [submitted(d) - b for d, b in zip(daemons, before, strict=True)] == [2, 2]
        # The list may come from the environment as well.
        stats = gloom_cmd("stats", "--json", env={"GLOOMD_SERVERS": masters(daemons)})
        assert stats.returncode == 0, stats.stderr
        summed = json.loads(stats.stdout)
        assert summed["servers"] == {"up": 2, "total": 2}
        assert summed["totals"]["submitted"] == sum(submitted(d) for d in daemons)
        assert summed["connections"]["slaves"] >= 2  # the worker's slot on each daemon
        table = gloom_cmd("stats", "--servers", masters(daemons))
        assert "servers 2/2 up" in table.stdout
    finally:
        worker.terminate()
        worker.wait(30)
        assert worker.stderr is not None
        worker.stderr.close()
    assert worker.returncode == 0


def test_hash_detach_then_result_from_a_fresh_client(daemons: list[Daemon]) -> None:
    servers = masters(daemons)
    ids = [f"cli-hash-{n}" for n in range(4)]
    for job_id in ids:
        done = gloom_cmd(
            "submit", "--servers", servers, "--spread", "hash", "--id", job_id, "--detach",
            "nobody-serves", "1",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == job_id
    # Another process finds each job on its daemon (asking each in turn).
    result = gloom_cmd("result", "--servers", servers, ids[0])
    assert result.returncode == 1
    assert "not ready" in result.stderr or "not_ready" in result.stderr
    cancelled = gloom_cmd("result", "--servers", servers, "never-submitted")
    assert cancelled.returncode == 1


def test_pause_and_resume_every_daemon(daemons: list[Daemon]) -> None:
    servers = masters(daemons)
    for command, word in (("pause", "paused"), ("resume", "resumed")):
        done = gloom_cmd(command, "--servers", servers, "cli-paused")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{word} cli-paused"
        for daemon in daemons:
            with gloom.Master(daemon.master_addr, timeout=10) as master:
                rows = [r for r in master.stats()["types"] if r["type"] == "cli-paused"]
            paused = [row.get("paused", False) for row in rows]
            # Paused: a row saying so; resumed: no row left, or one saying not paused.
            assert paused == [True] if command == "pause" else True not in paused


def test_commands_of_one_daemon_refuse_servers(daemons: list[Daemon]) -> None:
    done = gloom_cmd("jobs", "--servers", masters(daemons))
    assert done.returncode == 2
    assert "--servers: this command reads one daemon" in done.stderr
    bad = gloom_cmd("submit", "--servers", "h1:x", "t", "1")
    assert bad.returncode == 2
    assert "--servers" in bad.stderr
