"""The scheduler: jobs every N units at set times in any zone, as a trio service.

A port of pykit's `jobscheduler` (see `engine` for the fixes it carries).
Its modules, with no import circle between them:

* `firetime`: when a job fires next (pure calendar arithmetic);
* `config`: one job's configuration validated into a `JobSpec`, and the TOML
  schedule file;
* `engine`: `JobScheduler`, the loop that fires jobs and keeps their status;
* `state`: the status on disk (`StateFile`) and its writer thread;
* `service`: `serve_schedule`, and `SchedulerService`, what `gloomd
  --schedule FILE` runs, with `submit` jobs going through
  `gloomd.local.LocalMaster` into the daemon's own broker;
* `listing`: `gloom schedule list`, contributed to the `gloom` command
  through the entry point group `gloom.commands` (only `gloom` imports it).

The public names stay importable from `gloomd.scheduler`, pykit's API first.
"""

from __future__ import annotations

from .engine import FILTERED_MESSAGE, JobExistError, JobScheduler, Submit
from .firetime import JobConfigError, NextFireTimeError, ScheduleError, get_next_fire_time
from .service import SchedulerService, serve_schedule
from .state import BackgroundWriter, StateFile, StatusDict

__all__ = [
    "FILTERED_MESSAGE",
    "BackgroundWriter",
    "JobConfigError",
    "JobExistError",
    "JobScheduler",
    "NextFireTimeError",
    "ScheduleError",
    "SchedulerService",
    "StateFile",
    "StatusDict",
    "Submit",
    "get_next_fire_time",
    "serve_schedule",
]
