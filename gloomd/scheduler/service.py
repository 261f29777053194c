"""The scheduler as the daemon runs it: a schedule file, its status file, a submitter."""

from __future__ import annotations

import functools
import pathlib

import trio

from ..local import LocalMaster
from ..server import GloomServer
from ..service import Service
from .config import default_state_path, load_schedule_file
from .engine import JobScheduler, Submit
from .state import BackgroundWriter, StateFile

__all__ = ["SchedulerService", "serve_schedule"]


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


class SchedulerService(Service):
    """`gloomd --schedule FILE` as one of the daemon's services.

    Its `submit` jobs go straight into `server`'s broker through an
    in-process master (`gloomd.local`): no socket, no TLS, no token.  It
    listens on nothing, so it adds nothing to the ready line.
    """

    name = "scheduler"

    def __init__(
        self, server: GloomServer, path: pathlib.Path, *, state_path: pathlib.Path | None = None
    ) -> None:
        self.path = path
        self.state_path = state_path
        self.master = LocalMaster(server, "scheduler")

    async def run(
        self, *, task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(
                        serve_schedule,
                        self.path,
                        state_path=self.state_path,
                        submit=self.master.call,
                    )
                )
                task_status.started(None)
        finally:
            # As a master that disconnects: jobs it submitted and that still
            # wait in a queue go with it.
            self.master.close()
