"""The worker runner reads a job frame without ``attempt`` as attempt 1.

gloomd sends ``attempt`` only on a redelivery; the handler's `JobContext` and
the runner's ``job_started`` event must still say 1 for a first delivery, and
the redelivery's own count otherwise.  A stand-in slave port hands out the
frames verbatim (the runner's start-up ping and its joins are answered too).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio

from gloom.worker import Runner, serve
from tests.support.slave_port import SlavePort

from .workerjobs.support import TESTS_DIR

pytestmark = pytest.mark.timeout(60)


async def test_handler_and_events_see_attempt_1_when_the_frame_has_none(
    nursery: trio.Nursery,
) -> None:
    first = {"action": "job", "id": "a", "type": "w", "body": 1}
    again = {"action": "job", "id": "b", "type": "w", "body": 2, "attempt": 4}
    port: SlavePort = await nursery.start(SlavePort([first, again]).run)
    options: dict[str, Any] = {"slave_port": port.port, "concurrency": 1, "grace": 1.0}
    options["import_path"] = [TESTS_DIR]
    runner: Runner = await nursery.start(partial(serve, "w", "workerjobs.jobs:echo_job", **options))
    with trio.fail_after(20):
        answers = await port.wait_answers(2)
    runner.stop()
    with trio.fail_after(20):
        await runner.wait_for(lambda: not runner.slots)
    assert [(a["action"], a["body"]["id"], a["body"]["attempt"]) for a in answers] == [
        ("respond", "a", 1),
        ("respond", "b", 4),
    ]
    started = [e.detail["attempt"] for e in runner.events if e.kind == "job_started"]
    assert started == [1, 4]
    assert port.received[0] == {"action": "ping"}  # the start-up check
