"""The scheduler as the daemon runs it: a schedule file, its status file, a submitter."""

from __future__ import annotations

import pathlib

import trio

from .config import default_state_path, load_schedule_file
from .engine import JobScheduler, Submit
from .state import BackgroundWriter, StateFile

__all__ = ["serve_schedule"]


async def serve_schedule(
    path: pathlib.Path,
    *,
    state_path: pathlib.Path | None = None,
    submit: Submit | None = None,
    task_status: trio.TaskStatus[JobScheduler] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the jobs of a schedule TOML file until cancelled (`gloomd --schedule FILE`).

    The status is kept in `state_path`, by default FILE.state.json next to
    FILE.toml (see `default_state_path`), written atomically in a worker
    thread and reloaded from it at start.  `submit` jobs go through `submit`
    (in the daemon: its own broker, in-process).  Raises `JobConfigError`
    before starting if the file is invalid; `func` modules must be importable
    (installed, or on PYTHONPATH).
    """
    state = StateFile(state_path if state_path is not None else default_state_path(path))
    writer = BackgroundWriter(state.dump)
    scheduler = JobScheduler(
        load_schedule_file(path),
        dump_status=writer.submit,
        reload_status=state.reload,
        submit=submit,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await nursery.start(scheduler.run)
        task_status.started(scheduler)
