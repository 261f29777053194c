"""Jobs that the tests hold open and release, so no test waits on the clock.

Every job takes a ``gate`` name from its description.  The test (which runs the
service in its own process) reaches this module through
``service.jobs.load_module("gates")`` and calls ``release(name)``; it learns that
a job started by waiting on ``started(name)``.  Names are unique per test.
"""

import threading

import trio

_lock = threading.Lock()
_releases: dict[str, threading.Event] = {}
_starts: dict[str, threading.Event] = {}
_async_releases: dict[str, trio.Event] = {}
start_counts: dict[str, int] = {}


def _event(table, name):
    with _lock:
        return table.setdefault(name, threading.Event())


def started(name):
    """Set once a job with this gate name has begun running."""
    return _event(_starts, name)


def release(name):
    """Let every job waiting on this gate name go on (thread and async jobs alike)."""
    _event(_releases, name).set()
    with _lock:
        async_event = _async_releases.setdefault(name, trio.Event())
    async_event.set()


def _begin(job):
    name = job.data["gate"]
    with _lock:
        start_counts[name] = start_counts.get(name, 0) + 1
    job.data["state"] = "waiting"
    job.data["result"] = job.data.get("echo")
    started(name).set()
    return name


def _end(job):
    job.data["state"] = "released"
    if job.data.get("fail"):
        raise ValueError("failed on purpose after release")


def blocking(job):
    """Blocks its worker thread until released: a blocking job must not stall trio."""
    name = _begin(job)
    if not _event(_releases, name).wait(timeout=60):
        raise TimeoutError("the test never released this job")
    _end(job)


async def waiting(job):
    """The async twin of ``blocking``: runs in the service's nursery."""
    name = _begin(job)
    with _lock:
        release_event = _async_releases.setdefault(name, trio.Event())
    with trio.fail_after(60):
        await release_event.wait()
    _end(job)


def stepping(job):
    """Three gated steps, each announced with an immediate report (thread side)."""
    name = job.data["gate"]
    started(name).set()
    for step in (1, 2, 3):
        if not _event(_releases, f"{name}/{step}").wait(timeout=60):
            raise TimeoutError("the test never released this step")
        job.data["step"] = step
        if step == 1:
            job.report_now()
        elif step == 2:
            job.progress_available.set()  # pykit's spelling


async def stepping_async(job):
    """The async twin of ``stepping``."""
    name = job.data["gate"]
    started(name).set()
    for step in (1, 2, 3):
        with _lock:
            release_event = _async_releases.setdefault(f"{name}/{step}", trio.Event())
        with trio.fail_after(60):
            await release_event.wait()
        job.data["step"] = step
        if step == 1:
            job.report_now()
        elif step == 2:
            job.progress_available.set()
