"""The runner's pure parts: handler resolution, the scaling rule, timeouts, options, CLI.

Plus two end-to-end checks that fit nowhere else: a pool process killed
while idle is replaced without a job being lost, and the command line's
handler options (class args as JSON, --burst) work in a real run.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import pytest
import trio

import gloom
from gloom.worker import HandlerImportError, HandlerNotFound, WorkerOptions
from gloom.worker.child import JobContext, run_job
from gloom.worker.cli import worker_main
from gloom.worker.handler import HandlerSpec, resolve
from gloom.worker.jobrun import effective_timeout as _effective_timeout
from gloom.worker.scaling import ScalePlan, plan
from gloomwire import codec
from gloomwire.framing import FrameDecoder

from .workerjobs.support import TESTS_DIR, StartWorker, wait_gone

pytestmark = pytest.mark.timeout(60)


def spec(path: str, **kwargs: Any) -> HandlerSpec:
    return HandlerSpec(path, (TESTS_DIR,), **kwargs)


# ---------------------------------------------------------------- handler resolution


def test_resolve_function_shapes() -> None:
    plain = resolve(spec("workerjobs.jobs:echo"))
    assert (plain.wants_job, plain.is_async, plain.method) == (False, False, None)
    with_job = resolve(spec("workerjobs.jobs:echo_job"))
    assert with_job.wants_job and not with_job.is_async
    coroutine = resolve(spec("workerjobs.jobs:async_echo"))
    assert coroutine.wants_job and coroutine.is_async


def test_resolve_class_method_builds_a_new_instance_each_time() -> None:
    handler = resolve(
        spec("workerjobs.jobs:Counter.bump", class_args=(1,), class_kwargs={"step": 2})
    )
    assert handler.method == "bump" and not handler.wants_job
    first, second = handler.make(), handler.make()
    assert first.__self__ is not second.__self__  # type: ignore[attr-defined]
    assert first(None)["count"] == 3 and second(None)["count"] == 3


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("workerjobs.nope:f", HandlerNotFound),
        ("workerjobs.jobs:nope", HandlerNotFound),
        ("workerjobs.jobs:Counter.nope", HandlerNotFound),
        ("workerjobs.jobs:Counter.bump.extra", HandlerNotFound),
        ("workerjobs.jobs:NOT_CALLABLE", HandlerNotFound),
        ("workerjobs.jobs:Counter.created", HandlerNotFound),
        ("no_colon", HandlerNotFound),
        (":f", HandlerNotFound),
        ("workerjobs.jobs:", HandlerNotFound),
        ("workerjobs.broken:f", HandlerImportError),
        ("workerjobs.needs_missing:f", HandlerImportError),
    ],
)
def test_resolve_errors(path: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        resolve(spec(path))


def _decode(data: bytes) -> dict[str, Any]:
    (payload,) = FrameDecoder().feed(data)
    message: dict[str, Any] = codec.loads(payload)
    return message


class _NullWriter:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def test_run_job_outcomes_without_a_process() -> None:
    writer = _NullWriter()
    frame = {"id": 7, "type": "t", "body": {"steps": 2}, "attempt": 1, "timeout": 5}
    done = _decode(run_job(resolve(spec("workerjobs.jobs:reporter")), frame, writer, 1 << 20))  # type: ignore[arg-type]
    assert done == {"op": "done", "frame": {"action": "respond", "body": "reported"}}
    assert [m["body"]["step"] for m in writer.sent] == [0, 1]
    failed = _decode(run_job(resolve(spec("workerjobs.jobs:boom")), frame, writer, 1 << 20))  # type: ignore[arg-type]
    assert failed["frame"]["error"] == "ERROR" and failed["frame"]["reason"]["type"] == "ValueError"
    too_big = _decode(
        run_job(resolve(spec("workerjobs.jobs:echo")), {**frame, "body": "x" * 5000}, writer, 4096)
    )  # type: ignore[arg-type]
    assert too_big["frame"]["reason"]["type"] == "ResultTooLarge"


def test_job_context_fields() -> None:
    job = JobContext(
        {"id": "a", "type": ["t"], "body": 1, "attempt": 2, "timeout": 1.5}, _NullWriter()
    )  # type: ignore[arg-type]
    assert (job.id, job.type, job.body, job.attempt, job.timeout, job.pid) == (
        "a",
        ["t"],
        1,
        2,
        1.5,
        os.getpid(),
    )


# ---------------------------------------------------------------- scaling rule


def test_scaling_plan() -> None:
    base = {"minimum": 1, "maximum": 4, "idle_grace": 1.0, "now": 10.0}
    assert plan(size=0, queued=0, idle=[], **base) == ScalePlan(grow=1)
    assert plan(size=1, queued=9, idle=[], **base) == ScalePlan(grow=3)
    assert plan(size=3, queued=1, idle=[], **base) == ScalePlan(grow=1)
    assert plan(size=4, queued=50, idle=[], **base) == ScalePlan()
    # Shrink only idle slots idle long enough, the longest idle first, one at a time.
    assert plan(size=3, queued=0, idle=[(5, 9.5)], **base) == ScalePlan()
    assert plan(size=3, queued=0, idle=[(5, 8.0), (2, 6.0), (7, 9.9)], **base) == ScalePlan(
        shrink=2
    )
    assert plan(size=1, queued=0, idle=[(0, 0.0)], **base) == ScalePlan()
    assert plan(size=3, queued=2, idle=[(5, 0.0)], **base) == ScalePlan(grow=1)


def test_effective_timeout() -> None:
    assert _effective_timeout(300, None) == 300
    assert _effective_timeout(300, 2) == 2
    assert _effective_timeout(1, 20) == 1
    assert _effective_timeout(0, None) is None
    assert _effective_timeout(0, 2.5) == 2.5
    assert _effective_timeout(300, True) == 300  # not a number on the wire's terms


def test_options_validation_and_bounds() -> None:
    assert WorkerOptions("t", "m:f", concurrency=3).bounds == (3, 3)
    assert WorkerOptions("t", "m:f", min=2, max=5).bounds == (2, 5)
    assert WorkerOptions("t", "m:f", max=5).bounds == (1, 5)
    assert WorkerOptions("t", "m:f", concurrency=3, min=2).bounds == (2, 3)
    for bad in (
        {"min": 3, "max": 2},
        {"min": 0},
        {"concurrency": 0},
        {"grace": -1},
        {"max_jobs_per_process": 0},
    ):
        with pytest.raises(ValueError):
            WorkerOptions("t", "m:f", **bad)
    with pytest.raises(HandlerNotFound):
        WorkerOptions("t", "not a path")


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert worker_main([]) == 2
    assert worker_main(["--type", "t", "--handler", "m:f", "--class-args", "{bad"]) == 2
    assert worker_main(["--type", "t", "--handler", "m:f", "--class-args", '{"a": 1}']) == 2
    assert worker_main(["--type", "t", "--handler", "m:f", "--min", "3", "--max", "1"]) == 2
    assert "--max-jobs-per-process" in (worker_main(["--help"]), capsys.readouterr().out)[1]


# ---------------------------------------------------------------- end to end extras


async def test_process_killed_while_idle_is_replaced(
    start_worker: StartWorker, master: gloom.AsyncMaster
) -> None:
    runner = await start_worker("pid", concurrency=1)
    (victim,) = runner.live_pids()
    os.kill(victim, signal.SIGKILL)
    await wait_gone(victim)
    await runner.wait_for(
        lambda: any(e.kind == "died_idle" for e in runner.events) and len(runner.live_pids()) == 1
    )
    (replacement,) = runner.live_pids()
    assert replacement != victim
    assert await (await master.submit("w", None)).wait(10) == replacement
    assert runner.stats.crashes == 0  # no job was running: nothing to report


async def test_cli_class_args_and_burst(gloomd_server: Any, master: gloom.AsyncMaster) -> None:
    jobs = await master.submit_many([{"type": "cli-burst", "body": None} for _ in range(4)])
    cmd = [
        sys.executable, "-m", "gloom.worker", "--type", "cli-burst",
        "--handler", "workerjobs.jobs:Counter.bump", "--import-path", TESTS_DIR,
        "--class-args", "[5]", "--class-kwargs", '{"step": 2}', "--concurrency", "2", "--burst",
        "--slave-port", str(gloomd_server.slave_port),
        "--master-port", str(gloomd_server.master_port), "--log-level", "WARNING",
    ]  # fmt: skip
    with trio.fail_after(30):
        done = await trio.run_process(cmd, check=False)
    assert done.returncode == 0
    assert [(await job.wait(1))["count"] for job in jobs] == [7, 7, 7, 7]


def test_registers_as_a_gloom_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """``gloom.worker.cli`` is one of `gloom.cli.COMMAND_MODULES`: `gloom worker` exists."""
    from gloom import cli

    assert "gloom.worker.cli" in cli.COMMAND_MODULES
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "worker",
            "--type",
            "t",
            "--handler",
            "m:f",
            "--slave-port",
            "1",
            "--min",
            "1",
            "--max",
            "3",
            "--class-args",
            "[1]",
        ]
    )
    assert (args.type, args.handler, args.slave_port, args.min, args.max, args.class_args) == (
        "t",
        "m:f",
        1,
        1,
        3,
        [1],
    )
    assert (
        cli.main(
            [
                "worker",
                "--type",
                "t",
                "--handler",
                "workerjobs.jobs:nope",
                "--import-path",
                TESTS_DIR,
            ]
        )
        == 2
    )
    assert "has no attribute 'nope'" in capsys.readouterr().err
