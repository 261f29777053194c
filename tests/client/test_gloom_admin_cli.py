"""`gloom jobs`, `dead`, `kick`, `delete`, `pause`, `resume` and submit's lifecycle flags.

The installed command runs in its own process, as a user runs it, against a
stand-in master port that answers with frames written from the reference
(durability-and-operations.md, section 2): what is checked here is what the
command sends, prints and exits with.  The same commands against the real
daemon are in tests/e2e/test_lifecycle_edges_e2e.py.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from gloom.cli.admin import format_age
from tests.support.master_port import MasterPort, paged_jobs, row

pytestmark = pytest.mark.timeout(60)

GLOOM = str(Path(sys.executable).with_name("gloom"))

ROWS = [
    row("q1", "resize", "queued", priority=5),
    row("q2", "resize", "queued"),
    row(7, ["odd", "type"], "running", attempt=1, age_s=75),
    row("d1", "resize", "dead", attempt=3, age_s=7300.0, detach=True),
    row("d2", "mail", "dead", attempt=1, age_s=200000, detach=True),
]


def answer(frame: dict[str, Any]) -> list[dict[str, Any]]:
    action, job_id = frame.get("action"), frame.get("id")
    if action == "jobs":
        return paged_jobs(ROWS)(frame)
    if action == "kick" and "type" in frame:
        return [{"ok": True, "kicked": min(frame.get("limit", 2), 2)}]
    if action in ("kick", "delete"):
        state = {r["id"]: r["state"] for r in ROWS}.get(job_id)
        if state is None:
            return [{"error": "unknown_id", "reason": job_id}]
        if (action == "kick" and state != "dead") or (action == "delete" and state == "running"):
            return [{"error": "invalid_state", "reason": state}]
        return [{"ok": True, "id": job_id}]
    if action in ("pause", "resume"):
        return [{"ok": True}]
    if action == "submit":
        return [{"ok": True, "id": job_id, **({"attached": True} if frame.get("unique") else {})}]
    return [{"error": "unknown_action", "reason": action}]


@pytest.fixture
async def port(nursery: trio.Nursery) -> MasterPort:
    started: MasterPort = await nursery.start(MasterPort(answer).run)
    return started


async def gloom(port: int, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "160"}
    command = [GLOOM, *args, "--master-port", str(port)]
    with trio.fail_after(30):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True,
                                      check=False, env=env)  # fmt: skip
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        number: int = probe.getsockname()[1]
    return number


# -- jobs, dead ---------------------------------------------------------------------------


async def test_jobs_prints_a_table_in_the_daemons_order(port: MasterPort) -> None:
    status, out, err = await gloom(port.port, "jobs")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert "gloomd jobs (5)" in lines[0]
    for header in ("id", "type", "state", "priority", "attempt", "age", "detach"):
        assert header in lines[2]
    body = [line for line in lines if "│" in line]  # data rows (the header uses ┃)
    order = [next(rid for rid in ("q1", "q2", " 7 ", "d1", "d2") if rid in line) for line in body]
    assert order == ["q1", "q2", " 7 ", "d1", "d2"]
    assert '["odd","type"]' in out and "2h01m" in out and "2d07h" in out and "1m15s" in out
    assert port.received == [{"action": "jobs", "limit": 101}]


async def test_jobs_json_is_one_object_per_line(port: MasterPort) -> None:
    status, out, _ = await gloom(port.port, "jobs", "--json", "--type", "resize")
    assert status == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {**r, "age_s": float(r["age_s"])} for r in ROWS if r["type"] == "resize"
    ]
    assert port.received == [{"action": "jobs", "type": "resize", "limit": 101}]


async def test_jobs_filters_and_says_when_there_are_more(port: MasterPort) -> None:
    status, out, err = await gloom(port.port, "jobs", "--state", "queued", "--limit", "1", "--json")
    assert status == 0
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["q1"]
    assert err == "gloom: more than 1 jobs; --limit N shows more\n"
    assert port.received == [{"action": "jobs", "state": "queued", "limit": 2}]


async def test_dead_lists_dead_jobs(port: MasterPort) -> None:
    status, out, _ = await gloom(port.port, "dead", "--json")
    assert status == 0
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["d1", "d2"]
    assert port.received == [{"action": "jobs", "state": "dead", "limit": 101}]
    status, out, _ = await gloom(port.port, "dead", "--type", "nothing-dead")
    assert (status, out) == (0, "no dead jobs of type nothing-dead\n")


@pytest.mark.parametrize(
    "args",
    [["jobs", "--state", "buried"], ["jobs", "--limit", "0"], ["dead", "--state", "dead"],
     ["jobs", "--limit", "x"]],
)  # fmt: skip
async def test_listing_usage_errors_exit_2(port: MasterPort, args: list[str]) -> None:
    status, _, err = await gloom(port.port, *args)
    assert status == 2 and "usage:" in err
    assert port.received == []


def test_ages_read_like_a_person_would_write_them() -> None:
    assert [format_age(s) for s in (0, 4.25, 59.94, 60, 3599, 3600, 86399, 86400, 10**6)] == [
        "0.0s", "4.2s", "59.9s", "1m00s", "59m59s", "1h00m", "23h59m", "1d00h", "11d13h",
    ]  # fmt: skip


# -- kick, delete -------------------------------------------------------------------------


async def test_kick_one_and_kick_a_type(port: MasterPort) -> None:
    assert await gloom(port.port, "kick", "d1") == (0, "kicked d1\n", "")
    assert await gloom(port.port, "kick", "--type", "resize") == (
        0, "kicked 2 dead jobs of type resize\n", "",
    )  # fmt: skip
    assert await gloom(port.port, "kick", "--type", "resize", "--limit", "1") == (
        0, "kicked 1 dead job of type resize\n", "",
    )  # fmt: skip
    assert port.received == [
        {"action": "kick", "id": "d1"},
        {"action": "kick", "type": "resize"},
        {"action": "kick", "type": "resize", "limit": 1},
    ]


async def test_kick_and_delete_errors_exit_1_with_a_sentence(port: MasterPort) -> None:
    assert await gloom(port.port, "kick", "q1") == (
        1, "", "gloom: job q1 is queued: only dead jobs are kicked\n",
    )  # fmt: skip
    assert await gloom(port.port, "kick", "nope") == (1, "", "gloom: gloomd holds no job nope\n")
    assert await gloom(port.port, "delete", "7") == (1, "", "gloom: gloomd holds no job 7\n")
    assert await gloom(port.port, "delete", "q2") == (0, "deleted q2\n", "")


async def test_delete_of_a_running_job_exits_1(nursery: trio.Nursery) -> None:
    def running(frame: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"error": "invalid_state", "reason": "running"}]

    busy: MasterPort = await nursery.start(MasterPort(running).run)
    assert await gloom(busy.port, "delete", "r1") == (
        1, "", "gloom: job r1 is running: a running job cannot be deleted\n",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["kick"], "give a job ID or --type T (one of them)"),
        (["kick", "d1", "--type", "t"], "give a job ID or --type T (one of them)"),
        (["kick", "d1", "--limit", "3"], "--limit goes with --type"),
        (["kick", "--type", "t", "--limit", "0"], "must be at least 1"),
        (["delete"], "the following arguments are required: ID"),
        (["pause"], "the following arguments are required: TYPE"),
    ],
)
async def test_kick_delete_pause_usage_errors_exit_2(
    port: MasterPort, args: list[str], message: str
) -> None:
    status, out, err = await gloom(port.port, *args)
    assert (status, out) == (2, "") and message in err
    assert port.received == []


# -- pause, resume, unreachable -------------------------------------------------------------


async def test_pause_and_resume(port: MasterPort) -> None:
    assert await gloom(port.port, "pause", "resize") == (0, "paused resize\n", "")
    assert await gloom(port.port, "resume", "resize") == (0, "resumed resize\n", "")
    assert port.received == [
        {"action": "pause", "type": "resize"},
        {"action": "resume", "type": "resize"},
    ]


@pytest.mark.parametrize("args", [["jobs"], ["dead"], ["kick", "x"], ["delete", "x"],
                                  ["pause", "t"], ["resume", "t"]])  # fmt: skip
async def test_unreachable_daemon_exits_3(args: list[str]) -> None:
    status, _, err = await gloom(free_port(), *args)
    assert status == 3 and err.startswith("gloom: ")


# -- submit's lifecycle flags -----------------------------------------------------------


async def test_submit_sends_the_lifecycle_flags(port: MasterPort) -> None:
    args = ["submit", "t", "1", "--detach", "--id", "s1", "--delay", "2.5", "--retries", "3"]
    status, out, _ = await gloom(port.port, *args, "--backoff", "0.5", "--unique")
    assert (status, out) == (0, "s1\n")
    assert port.received == [
        {"action": "submit", "id": "s1", "type": "t", "priority": 0, "body": 1, "detach": True,
         "delay": 2.5, "retries": 3, "backoff": 0.5, "unique": True},
    ]  # fmt: skip


async def test_submit_without_the_flags_sends_none_of_them(port: MasterPort) -> None:
    status, _, _ = await gloom(port.port, "submit", "t", "1", "--detach", "--id", "s2")
    assert status == 0
    assert port.received == [
        {"action": "submit", "id": "s2", "type": "t", "priority": 0, "body": 1, "detach": True}
    ]
    status, _, _ = await gloom(port.port, "submit", "t", "1", "--detach", "--delay", "0")
    assert status == 0 and port.received[-1]["delay"] == 0.0  # 0 is a value, sent


@pytest.mark.parametrize(
    "flags",
    [["--delay", "-1"], ["--delay", "nan"], ["--delay", "inf"], ["--retries", "-1"],
     ["--retries", "1.5"], ["--backoff", "0"], ["--backoff", "x"]],
)  # fmt: skip
async def test_submit_refuses_bad_lifecycle_flags_with_usage(
    port: MasterPort, flags: list[str]
) -> None:
    status, _, err = await gloom(port.port, "submit", "t", "1", *flags)
    assert status == 2 and "usage:" in err
    assert port.received == []
