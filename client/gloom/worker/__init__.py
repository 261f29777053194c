"""gloom.worker: run a handler for a job type in a supervised process pool.

    gloom.worker.run("resize", "myapp.images:resize", concurrency=4)

or, from trio, ``await nursery.start(partial(gloom.worker.serve, "resize", "myapp.images:resize"))``
(``task_status`` reports the `Runner` once every slave connection has joined).
See `run` for the knobs and the README's "Worker runner" section for the rules.
A handler asks for its job to run again by raising `Retry` (the job's own
``retries`` and ``backoff`` apply).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import trio

from .child import JobContext
from .handler import HandlerError, HandlerImportError, HandlerNotFound
from .retry import Retry
from .runner import Runner, RunnerStats, WorkerEvent, WorkerOptions

__all__ = [
    "HandlerError",
    "HandlerImportError",
    "HandlerNotFound",
    "JobContext",
    "Retry",
    "Runner",
    "RunnerStats",
    "WorkerEvent",
    "WorkerOptions",
    "run",
    "serve",
]


async def serve(
    type: Any,
    handler: str,
    *,
    task_status: trio.TaskStatus[Runner] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> RunnerStats:
    """Serve jobs of `type` with `handler` until stopped; returns the run's counters.

    :param type: the job type to join (any JSON value).
    :param handler: ``pkg.mod:func`` or ``pkg.mod:Class.method``; called as
        ``fn(body)`` or ``fn(body, job)`` (a `JobContext`), sync or ``async def``.
        A path that does not resolve raises `HandlerNotFound` (or
        `HandlerImportError`) before anything connects.
    :param concurrency: pool size; default the number of CPUs.
    :param min, max: scale between these instead (growth reads the backlog from
        the daemon's ``stats`` on `master_port`).
    :param timeout: seconds a job may run, from its start (0 = no limit); a job's
        own ``timeout`` wins when smaller.  Default 300.
    :param grace: seconds between SIGTERM and SIGKILL on a timeout, and the
        time running jobs get to finish at shutdown.  Default 10.
    :param max_jobs_per_process: recycle a process after this many jobs (1000).
    :param import_path: directories put in front of ``sys.path`` in the pool.
    :param class_args, class_kwargs: build the instance of a class handler (fresh per job).
    :param burst: return once nothing of `type` is queued or running (tests, batch jobs).
    :param servers: several independent daemons to serve at once instead of
        `host` (the Gearman way): ``"h1:9999,h2:9999"`` or a list, their slave
        ports.  Each pool slot joins every daemon while its process is free
        and takes the first job any sends (see `gloom.worker.multilink`); a
        lost daemon is reconnected alone.  Not with `min`/`max`/`burst`.
    :param token, token_file: the daemon's shared token, presented on every
        connection the runner opens: `token`, else `token_file`'s first line,
        else $GLOOMD_TOKEN, else none (as `gloom.open_master`).  A refusal
        raises `gloom.Unauthorized`, at startup or when a reconnect is refused
        (then running jobs first get `grace` seconds, as on SIGTERM).
    :param ssl_context, tls, tls_ca: TLS for every connection: `ssl_context`,
        or with `tls=True` the default client context trusting `tls_ca` (a CA
        file, which implies `tls`) or the system's CAs.  A certificate that does
        not verify is a `gloom.TransportError` at startup.
    :param host, slave_port, master_port: the daemon (127.0.0.1, 9999, 9998).
    :param options: these and the finer knobs (heartbeat, liveness,
        reconnect_delay, scale_interval, idle_grace, crash_backoff, ...) are the
        fields of `WorkerOptions`, which holds their defaults and checks them.

    Cancelling it drains like SIGTERM: running jobs get `grace` seconds.
    """
    runner = Runner(WorkerOptions(type, handler, **options))
    await runner.run(task_status=task_status)
    return runner.stats


def run(type: Any, handler: str, **kwargs: Any) -> RunnerStats:
    """Blocking `serve` that also stops on SIGTERM/SIGINT (twice: at once).

    Takes the same keyword arguments as `serve`; see there.
    """
    kwargs.setdefault("handle_signals", True)
    return trio.run(partial(serve, type, handler, **kwargs))
