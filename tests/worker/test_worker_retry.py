"""`gloom.worker.Retry`: a handler asks for its job to run again.

The runner reports it as ``fail`` ERROR with reason ``{"type":"Retry",
"message":...,"traceback":""}`` (the daemon applies the job's own retries and
back-off), counts it in `RunnerStats.retries`, and the next delivery's
`attempt` reaches the handler.  Here against a stand-in slave port that hands
out the frames a daemon would (a redelivery carries ``attempt``); over a
real daemon in tests/e2e/test_lifecycle_edges_e2e.py.  Burst mode waits for
the type's delayed jobs (a retry in its back-off) as for queued ones.
"""

from __future__ import annotations

import importlib.util
import os
from functools import partial
from typing import Any

import pytest
import trio

import gloom.worker
from gloom.worker import Retry, Runner, serve
from gloom.worker.child import run_job
from gloom.worker.handler import HandlerSpec, resolve
from gloom.worker.retry import is_retry
from gloomwire import codec
from tests.support.master_port import MasterPort
from tests.support.slave_port import SlavePort

from .workerjobs.support import TESTS_DIR

pytestmark = pytest.mark.timeout(60)


class _Sink:
    """Stands in for the pool process's pipe writer (progress is not used here)."""

    def send(self, message: dict[str, Any]) -> None:
        raise AssertionError(f"unexpected message {message}")


def done_message(handler: str, frame: dict[str, Any]) -> dict[str, Any]:
    resolved = resolve(HandlerSpec(handler, (TESTS_DIR,)))
    data = run_job(resolved, frame, _Sink(), 1 << 24)  # type: ignore[arg-type]
    message: dict[str, Any] = codec.loads(data[4:])
    return message


def test_retry_is_reported_as_error_with_its_message_and_no_traceback() -> None:
    frame = {"op": "job", "id": "r", "type": "w", "body": {"succeed_at": 3}, "attempt": 2}
    message = done_message("workerjobs.jobs:retry_until", frame)
    assert message == {
        "op": "done",
        "frame": {
            "action": "fail",
            "error": "ERROR",
            "reason": {"type": "Retry", "message": "attempt 2 is too early", "traceback": ""},
        },
        "retry": True,
    }


def test_the_attempt_that_may_succeed_responds() -> None:
    frame = {"op": "job", "id": "r", "type": "w", "body": {"succeed_at": 3}, "attempt": 3}
    message = done_message("workerjobs.jobs:retry_until", frame)
    assert message == {"op": "done", "frame": {"action": "respond", "body": {"attempt": 3,
                                                                           "id": "r"}}}  # fmt: skip


def test_a_subclass_of_retry_is_a_retry() -> None:
    frame = {"op": "job", "id": "s", "type": "w", "body": None, "attempt": 1}
    message = done_message("workerjobs.jobs:retry_subclass", frame)
    assert message["retry"] is True and message["frame"]["reason"]["message"] == "upstream busy"


def test_other_exceptions_are_no_retry_request() -> None:
    frame = {"op": "job", "id": "k", "type": "w", "body": None, "attempt": 1}
    message = done_message("workerjobs.jobs:echo_job", {**frame, "body": None})
    assert "retry" not in message
    message = done_message("workerjobs.jobs:retry_until", {**frame, "body": {}})  # KeyError
    assert "retry" not in message and message["frame"]["reason"]["type"] == "KeyError"


def test_the_pool_recognises_retry_from_its_own_copy_of_the_module() -> None:
    # A pool process loads this module as _gloom_pool.retry while the handler
    # raises gloom.worker.retry.Retry: two classes, one marker.
    path = os.path.join(os.path.dirname(gloom.worker.__file__), "retry.py")
    spec = importlib.util.spec_from_file_location("_gloom_pool_copy.retry", path)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert copy.Retry is not Retry
    assert copy.is_retry(Retry("x")) and is_retry(copy.Retry("y"))
    assert not is_retry(ValueError("x")) and not copy.is_retry(Exception("Retry"))


def test_retry_is_exported_and_keeps_its_reason() -> None:
    exc = gloom.worker.Retry("busy")
    assert isinstance(exc, Exception) and exc.reason == "busy" and str(exc) == "busy"
    assert str(gloom.worker.Retry()) == "retry requested"


async def test_runner_reports_retries_and_gives_the_handler_the_attempt(
    nursery: trio.Nursery,
) -> None:
    # What a daemon with retries sends: the first delivery, then redeliveries.
    body = {"succeed_at": 3}
    jobs = [
        {"action": "job", "id": "r", "type": "w", "body": body},
        {"action": "job", "id": "r", "type": "w", "body": body, "attempt": 2},
        {"action": "job", "id": "r", "type": "w", "body": body, "attempt": 3},
    ]
    port: SlavePort = await nursery.start(SlavePort(jobs).run)
    options: dict[str, Any] = {"slave_port": port.port, "concurrency": 1, "grace": 1.0}
    options["import_path"] = [TESTS_DIR]
    runner: Runner = await nursery.start(
        partial(serve, "w", "workerjobs.jobs:retry_until", **options)
    )
    with trio.fail_after(30):
        answers = await port.wait_answers(3)
    runner.stop()
    with trio.fail_after(20):
        await runner.wait_for(lambda: not runner.slots)
    assert [(a["action"], a.get("error")) for a in answers] == [
        ("fail", "ERROR"),
        ("fail", "ERROR"),
        ("respond", None),
    ]
    assert answers[0]["reason"]["message"] == "attempt 1 is too early"
    assert answers[1]["reason"]["type"] == "Retry"
    assert answers[2]["body"] == {"attempt": 3, "id": "r"}
    assert (runner.stats.retries, runner.stats.errors, runner.stats.succeeded) == (2, 0, 1)
    outcomes = [e.detail["outcome"] for e in runner.events if e.kind == "job_finished"]
    assert outcomes == ["retry", "retry", "ok"]


async def test_burst_waits_for_a_delayed_job_of_its_type(nursery: trio.Nursery) -> None:
    # A retry waiting out its back-off is `delayed` in the daemon's stats: a
    # burst run that stopped then would leave it to nobody.
    readings = [1, 1, 1, 0]  # the type's `delayed` at each stats: the start-up check's first

    def stats(frame: dict[str, Any]) -> list[dict[str, Any]]:
        assert frame["action"] == "stats"
        delayed = readings.pop(0) if len(readings) > 1 else readings[0]
        row = {"type": "w", "queued": 0, "running": 0, "slaves": 1, "idle": 1, "delayed": delayed}
        return [{"ok": True, "stats": {"types": [row], "totals": {}}}]

    slaves: SlavePort = await nursery.start(SlavePort([]).run)
    masters: MasterPort = await nursery.start(MasterPort(stats).run)
    options: dict[str, Any] = {"slave_port": slaves.port, "master_port": masters.port}
    options.update(concurrency=1, grace=1.0, import_path=[TESTS_DIR], burst=True)
    with trio.fail_after(30):
        await serve("w", "workerjobs.jobs:echo", **options)
    # The start-up check, two readings with a delayed job, and the one that ends it.
    assert masters.actions() == ["stats"] * 4
    assert readings == [0]
