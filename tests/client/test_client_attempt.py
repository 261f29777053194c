"""A job frame without ``attempt`` is a first delivery: attempt 1 everywhere.

gloomd sends ``attempt`` only on a redelivery (protocol.md, "Job frame
extras"), as Gloom never sent it at all.  The trio slave, the blocking slave
and `gloom slave` (its GLOOM_JOB_ATTEMPT) must read a missing one as 1 and a
present one as it is.  A stand-in slave port hands out the frames verbatim.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import gloom
from tests.support.slave_port import SlavePort

pytestmark = pytest.mark.timeout(30)

GLOOM = str(Path(sys.executable).with_name("gloom"))

FIRST = {"action": "job", "id": "a", "type": "t", "body": 1}
AGAIN = {"action": "job", "id": "b", "type": "t", "body": 2, "attempt": 3}


async def start(nursery: trio.Nursery, *jobs: dict[str, Any]) -> SlavePort:
    port: SlavePort = await nursery.start(SlavePort([*jobs]).run)
    return port


async def test_trio_slave_reads_a_missing_attempt_as_1(nursery: trio.Nursery) -> None:
    port = await start(nursery, FIRST, AGAIN)
    seen = []
    with trio.fail_after(10):
        async with gloom.open_slave("127.0.0.1", port.port) as slave:
            await slave.join("t")
            async for job in slave.jobs():
                seen.append((job.id, job.attempt))
                await job.respond(None)
                if len(seen) == 2:
                    break
    assert seen == [("a", 1), ("b", 3)]


async def test_blocking_slave_reads_a_missing_attempt_as_1(nursery: trio.Nursery) -> None:
    port = await start(nursery, FIRST, AGAIN)

    def serve() -> list[Any]:
        seen = []
        with gloom.Slave(("127.0.0.1", port.port), timeout=10) as slave:
            slave.join("t")
            for _ in range(2):
                job = slave.job()
                seen.append((job.id, job.attempt, "attempt" in job))
                slave.respond(None)
        return seen

    with trio.fail_after(10):
        seen = await trio.to_thread.run_sync(serve)
    # The frame itself is left as the daemon sent it; only the property reads 1.
    assert seen == [("a", 1, False), ("b", 3, True)]
    assert gloom.SyncJob(id="r", body=1).attempt is None  # a result has no delivery count


PRINT_ATTEMPT = "import os; print(os.environ['GLOOM_JOB_ATTEMPT'])"


async def test_gloom_slave_exports_attempt_1_for_a_frame_without_one(nursery: trio.Nursery) -> None:
    port = await start(nursery, FIRST, AGAIN)
    command = [GLOOM, "slave", "t", "-q", "--slave-port", str(port.port)]
    command += ["--", sys.executable, "-c", PRINT_ATTEMPT]
    proc = await trio.lowlevel.open_process(command)
    try:
        with trio.fail_after(20):
            answers = await port.wait_answers(2)
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await proc.wait()
    assert [a["body"] for a in answers] == [1, 3]
