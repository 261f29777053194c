"""A `submit` job's lifecycle keys: `delay`, `retries`, `backoff`, `unique`.

Validated when the file is loaded, with the daemon's ranges (lifecycle.md,
"Validation"), so a file gloomd would refuse at every fire is refused once;
passed to the submit only when set, so a `Submit` written before them keeps
working; and `unique` makes every fire submit the id ``sched:NAME``, a fire
while that job is live attaching to it.  The engine is driven here with a
stand-in submit on trio's MockClock; the same against a real gloomd is in
tests/e2e/test_lifecycle_edges_e2e.py.
"""

from __future__ import annotations

import datetime as dt
import pathlib
import re
from typing import Any

import pytest
import trio
import trio.testing

from gloomd.messages import MAX_TIMEOUT
from gloomd.scheduler import JobScheduler
from gloomd.scheduler.config import (
    MAX_SUBMIT_BACKOFF,
    MAX_SUBMIT_DELAY,
    MAX_SUBMIT_RETRIES,
    SubmitSpec,
    build_job,
    load_schedule_file,
    unique_id,
)
from gloomd.scheduler.firetime import JobConfigError

from .schedjobs.store import Store

pytestmark = pytest.mark.timeout(30)

ROOT = pathlib.Path(__file__).resolve().parents[3]


def submit_conf(**keys: Any) -> dict[str, Any]:
    return {"submit": {"type": "report", **keys}, "every": [1, "hour"]}


# --- validation ------------------------------------------------------------------------


def test_the_ranges_are_the_daemons() -> None:
    assert MAX_SUBMIT_DELAY == MAX_TIMEOUT == 365 * 24 * 3600
    assert (MAX_SUBMIT_RETRIES, MAX_SUBMIT_BACKOFF) == (1000, 3600)


@pytest.mark.parametrize(
    "keys",
    [
        {"delay": 0}, {"delay": 0.0}, {"delay": 2.5}, {"delay": MAX_SUBMIT_DELAY},
        {"delay": int(MAX_SUBMIT_DELAY)}, {"retries": 0}, {"retries": MAX_SUBMIT_RETRIES},
        {"backoff": 0.001}, {"backoff": MAX_SUBMIT_BACKOFF}, {"backoff": 2},
        {"unique": True}, {"unique": False},
        {"delay": 1, "retries": 3, "backoff": 0.5, "unique": True},
    ],
)  # fmt: skip
def test_lifecycle_keys_in_range_are_accepted(keys: dict[str, Any]) -> None:
    sub = build_job("j", submit_conf(**keys)).submit
    assert sub is not None
    for key, value in keys.items():
        assert getattr(sub, key) == value and type(getattr(sub, key)) is type(value)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"delay": -0.001}, "submit.delay must be a number of seconds from 0 to 31536000, got"),
        ({"delay": MAX_SUBMIT_DELAY + 1}, "submit.delay must be"),
        ({"delay": float("inf")}, "submit.delay must be"),
        ({"delay": float("nan")}, "submit.delay must be"),
        ({"delay": "5"}, "submit.delay must be"),
        ({"delay": True}, "submit.delay must be"),
        ({"retries": -1}, "submit.retries must be an integer from 0 to 1000, got -1"),
        ({"retries": 1001}, "submit.retries must be an integer from 0 to 1000, got 1001"),
        ({"retries": 2.0}, "submit.retries must be an integer"),
        ({"retries": True}, "submit.retries must be an integer"),
        ({"retries": 10**400}, "submit.retries must be an integer"),
        ({"backoff": 0}, "submit.backoff must be a number of seconds above 0 and at most 3600"),
        ({"backoff": -1}, "submit.backoff must be"),
        ({"backoff": 3600.5}, "submit.backoff must be"),
        ({"backoff": float("nan")}, "submit.backoff must be"),
        ({"backoff": False}, "submit.backoff must be"),
        ({"unique": 1}, "submit.unique must be true or false, got 1"),
        ({"unique": "yes"}, "submit.unique must be true or false"),
        ({"defer": 1}, "unknown keys in submit: defer"),
    ],
)
def test_lifecycle_keys_out_of_range_are_refused_naming_the_job(
    keys: dict[str, Any], message: str
) -> None:
    with pytest.raises(JobConfigError, match=f"^job 'nightly': {re.escape(message)}"):
        build_job("nightly", submit_conf(**keys))


def test_a_toml_file_with_lifecycle_keys_loads(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text(
        '[jobs.report]\nsubmit = { type = "report", retries = 3, backoff = 30, delay = 5,'
        ' unique = true }\nevery = [1, "hour"]\n'
        '[jobs.bad]\nsubmit = { type = "report", backoff = inf }\nevery = [1, "hour"]\n'
    )
    jobs = load_schedule_file(path)
    sub = build_job("report", jobs["report"]).submit
    assert sub == SubmitSpec("report", retries=3, backoff=30, delay=5, unique=True)
    with pytest.raises(JobConfigError, match=r"^job 'bad': submit\.backoff must be"):
        build_job("bad", jobs["bad"])


def test_the_readme_schedule_example_loads(tmp_path: pathlib.Path) -> None:
    # The scheduler section's TOML example, as a user would copy it.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Scheduled jobs", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert examples, "the scheduler section lost its TOML example"
    lifecycle = [text for text in examples if "unique" in text]
    assert lifecycle, "no TOML example shows the lifecycle keys"
    for text in examples:
        path = tmp_path / "jobs.toml"
        path.write_text(text)
        for name, conf in load_schedule_file(path).items():
            build_job(name, conf, resolve_func=False)


def test_lifecycle_keys_are_sent_only_when_set() -> None:
    assert SubmitSpec("t").lifecycle() == {}
    assert SubmitSpec("t", delay=0, retries=0).lifecycle() == {"delay": 0, "retries": 0}
    assert SubmitSpec("t", backoff=2.0, unique=True).lifecycle() == {"backoff": 2.0, "unique": True}
    assert unique_id("nightly") == "sched:nightly"


# --- the engine ---------------------------------------------------------------------------

T0 = dt.datetime(2020, 1, 1, 10, tzinfo=dt.UTC).timestamp()


class Wall:
    def __init__(self) -> None:
        self.start = trio.current_time()

    def __call__(self) -> float:
        return T0 + (trio.current_time() - self.start)


class FakeGloomd:
    """A `Submit` that records each call and holds the job until told.

    Like gloomd with `unique`: a call for an id that is still live attaches
    (its ack says so: `on_attached`), and every call on that id ends with the
    one result.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.live: dict[str, trio.Event] = {}
        self.results: dict[str, Any] = {}

    async def __call__(self, job_id: str, job_type: Any, body: Any, **options: Any) -> Any:
        self.calls.append((job_id, options))
        if options.get("unique") and job_id in self.live:
            options["on_attached"]()
        else:
            self.live[job_id] = trio.Event()
        await self.live[job_id].wait()
        return self.results[job_id]

    def finish(self, job_id: str, result: Any) -> None:
        self.results[job_id] = result
        self.live.pop(job_id).set()


async def test_unique_fires_submit_one_id_and_an_overlapping_fire_attaches(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    gloomd = FakeGloomd()
    store = Store()
    conf = {"submit": {"type": "report", "body": 1, "unique": True, "retries": 2},
            "every": [1, "minute"], "concurrence_n": 2}  # fmt: skip
    sched = JobScheduler({"rep": conf}, store.dump, submit=gloomd, wall_clock=Wall())
    await nursery.start(sched.run)
    await trio.sleep(90)  # two fires; the first job still runs at the second
    assert [job_id for job_id, _ in gloomd.calls] == ["sched:rep", "sched:rep"]
    for _, options in gloomd.calls:
        assert options["unique"] is True and options["retries"] == 2
        assert "delay" not in options and "backoff" not in options
    st = sched.status_snapshot()["rep"]
    runs = list(st["active_threads"])
    assert len(runs) == 2 and all(r.startswith("sched:rep:") for r in runs)
    assert all(st["active_threads"][r]["job_id"] == "sched:rep" for r in runs)
    assert st["log"][-1] == f"run {runs[1]} attached to job sched:rep"

    gloomd.finish("sched:rep", {"rows": 3})
    with trio.fail_after(5):
        st = (await store.wait_until(lambda s: not s["rep"]["active_threads"]))["rep"]
    finished = [line for line in st["log"] if " finished at: " in line]
    assert len(finished) == 2 and st["message"] == 'result: {"rows":3}'


async def test_plain_submit_jobs_pass_no_lifecycle_keys(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def old_style_submit(
        job_id: str, job_type: Any, body: Any, *, priority: int = 0, timeout: Any = None
    ) -> Any:
        # A Submit written before the lifecycle: it takes no other keyword.
        seen.append((job_id, {"priority": priority, "timeout": timeout}))
        return "ok"

    store = Store()
    conf = {"submit": {"type": "r", "priority": 3}, "every": [1, "hour"]}
    sched = JobScheduler({"p": conf}, store.dump, submit=old_style_submit, wall_clock=Wall())
    await nursery.start(sched.run)
    with trio.fail_after(5):
        await store.wait_until(lambda s: s["p"]["message"] == 'result: "ok"')
    (job_id, options), *_ = seen
    assert job_id.startswith("sched:p:") and job_id != "sched:p"
    assert options == {"priority": 3, "timeout": None}


async def test_lifecycle_keys_reach_the_submit(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    gloomd = FakeGloomd()
    store = Store()
    conf = {"submit": {"type": "r", "delay": 30, "retries": 4, "backoff": 0.5},
            "every": [1, "hour"]}  # fmt: skip
    sched = JobScheduler({"k": conf}, store.dump, submit=gloomd, wall_clock=Wall())
    await nursery.start(sched.run)
    await trio.sleep(1)
    ((job_id, options),) = gloomd.calls
    assert job_id.startswith("sched:k:")
    assert options == {"priority": 0, "timeout": None, "delay": 30, "retries": 4, "backoff": 0.5}
    gloomd.finish(job_id, None)
