"""The scheduler as the daemon runs it: a schedule file, its status file, a submitter."""

from __future__ import annotations

import pathlib

import trio

from ..local import LocalMaster
from ..server import GloomServer
from ..service import ConfigError, Service
from .config import default_state_path, load_schedule_file
from .engine import JobScheduler, Submit
from .firetime import JobConfigError
from .state import BackgroundWriter, StateFile

__all__ = ["SchedulerService", "open_schedule", "serve_schedule"]


def open_schedule(
    path: pathlib.Path,
    *,
    state_path: pathlib.Path | None = None,
    submit: Submit | None = None,
) -> tuple[JobScheduler, BackgroundWriter]:
    """Read and validate a schedule file; the scheduler and its state writer, not running.

    Everything is checked here, before anything runs: the TOML, every job
    (its `func` imported), and that the status file can be written.  Raises
    `JobConfigError` (a bad file or job), or OSError: the file cannot be
    read (`filename` is the schedule), or the state cannot be written
    (`filename` is the state path).
    """
    jobs = load_schedule_file(path)
    state = StateFile(state_path if state_path is not None else default_state_path(path))
    try:
        state.check_writable()
    except OSError as exc:
        exc.filename = str(state.path)
        raise
    writer = BackgroundWriter(state.dump)
    scheduler = JobScheduler(
        jobs, dump_status=writer.submit, reload_status=state.reload, submit=submit
    )
    return scheduler, writer


async def serve_schedule(
    path: pathlib.Path,
    *,
    state_path: pathlib.Path | None = None,
    submit: Submit | None = None,
    task_status: trio.TaskStatus[JobScheduler] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the jobs of a schedule TOML file until cancelled.

    The status is kept in `state_path`, by default FILE.state.json next to
    FILE.toml (see `default_state_path`), written atomically in a worker
    thread and reloaded from it at start.  `submit` jobs go through `submit`
    (in the daemon: its own broker, in-process).  Raises what `open_schedule`
    raises before starting; `func` modules must be importable.
    """
    scheduler, writer = open_schedule(path, state_path=state_path, submit=submit)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await nursery.start(scheduler.run)
        task_status.started(scheduler)


class SchedulerService(Service):
    """`gloomd --schedule FILE` as one of the daemon's services.

    Its `submit` jobs go straight into `server`'s broker through an
    in-process master (`gloomd.local`): no socket, no TLS, no token.  It
    listens on nothing, so it adds nothing to the ready line.  The file is
    read and every job checked when the service is built, before the daemon
    binds a port (`ConfigError`, naming the flag); the first fire waits for
    `ready()`, so that the ready line comes before anything a job prints.
    """

    name = "scheduler"

    def __init__(
        self, server: GloomServer, path: pathlib.Path, *, state_path: pathlib.Path | None = None
    ) -> None:
        self.path = path
        self.state_path = state_path
        self.master = LocalMaster(server, "scheduler")
        self._ready = trio.Event()
        try:
            self.scheduler, self._writer = open_schedule(
                path, state_path=state_path, submit=self.master.call
            )
        except JobConfigError as exc:
            raise ConfigError(f"--schedule {path}: {exc}") from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.filename == str(path):
                raise ConfigError(f"--schedule {path}: cannot read it: {reason}") from None
            flag = (
                f"--schedule-state {state_path}"
                if state_path is not None
                else f"--schedule {path}: its state file {exc.filename}"
            )
            raise ConfigError(f"{flag}: cannot be written: {reason}") from None

    def ready(self) -> None:
        self._ready.set()

    async def run(
        self, *, task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer.run)
                task_status.started(None)
                await self._ready.wait()
                await nursery.start(self.scheduler.run)
        finally:
            # As a master that disconnects: jobs it submitted and that still
            # wait in a queue go with it.
            self.master.close()
