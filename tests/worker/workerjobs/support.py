"""Fixtures and helpers shared by the worker test modules (imported by them)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import psutil
import pytest
import trio

import gloom
from gloom.worker import Runner, serve

from .gate import Gate, open_gate

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

StartWorker = Callable[..., Awaitable[Runner]]


def gone(pid: int) -> bool:
    """No such process (a zombie nobody reaps counts as gone: it runs nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait for a process to exit, by its pidfd (an event, not a poll)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with trio.fail_after(timeout):
            await trio.lowlevel.wait_readable(fd)
    finally:
        trio.lowlevel.notify_closing(fd)
        os.close(fd)


def worker_options(server: Any, **options: Any) -> dict[str, Any]:
    options.setdefault("concurrency", 2)
    options.setdefault("grace", 1.0)
    options.setdefault("import_path", [TESTS_DIR])
    options.setdefault("reconnect_delay", 0.05)
    options.setdefault("max_reconnect_delay", 0.2)
    return {"slave_port": server.slave_port, "master_port": server.master_port, **options}


@pytest.fixture
async def gate(nursery: trio.Nursery) -> Gate:
    return await open_gate(nursery)


@pytest.fixture
async def master(gloomd_server: Any) -> AsyncIterator[gloom.AsyncMaster]:
    async with gloom.open_master("127.0.0.1", gloomd_server.master_port) as m:
        yield m


@pytest.fixture
async def start_worker(gloomd_server: Any, nursery: trio.Nursery) -> AsyncIterator[StartWorker]:
    """Factory: ``runner = await start_worker("echo", concurrency=2)``; every
    runner is stopped at teardown, and none may leave a process behind."""
    runners: list[Runner] = []

    async def start(handler: str, *, type: Any = "w", server: Any = None, **options: Any) -> Runner:
        target = server or gloomd_server
        path = handler if ":" in handler else f"workerjobs.jobs:{handler}"
        runner: Runner = await nursery.start(
            partial(serve, type, path, **worker_options(target, **options))
        )
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        runner.stop(force=True)
    with trio.fail_after(15):
        for runner in runners:
            await runner.wait_for(lambda r=runner: not r.slots)
        for runner in runners:
            for pid in runner.pids_ever:
                await wait_gone(pid)
                assert gone(pid), f"pool process {pid} outlived its runner"


async def type_stats(master: gloom.AsyncMaster, job_type: Any = "w") -> dict[str, Any]:
    stats = await master.stats()
    for entry in stats["types"]:
        if entry["type"] == job_type:
            return dict(entry)
    return {"type": job_type, "queued": 0, "running": 0, "slaves": 0, "idle": 0}
