"""The websocket job service: pykit wsjobd's protocol, served by trio in the gloomd process.

A client opens a websocket, sends one JSON job description and then listens:
progress reports (the job's data dict, or one value of it) arrive at once and then
every ``progress.interval`` seconds, a final report when the job returns (or a
``JobFailedError`` frame when it raises), then a normal close.  Clients naming the
same ``ident`` while the job runs attach to it instead of starting another.
The full contract, and how it differs from pykit, is in
``shared/reference/wsjobd.md`` section 12; the README section shows a session.

The package's modules, in the order a request travels:

1. `errors`: the error tree and the error frame shape;
2. `request`: :func:`parse_request`, sans-IO: one message in, a validated
   :class:`JobRequest` or an error out, checked in the order the reference fixes;
3. `directory`: :class:`JobsDirectory`, the server-side directory job functions
   come from, imported as a private package so a client can never reach another
   module;
4. `job`: :class:`Job`, what a job function sees, and its per-listener wake-ups;
5. `service`: :class:`WsJobService`, trio-websocket I/O, one task per connection,
   one task per job, reports scheduled per listener; :class:`WsJobdService`
   is what ``gloomd --ws-port`` runs (a `gloomd.service.Service`), and
   :func:`serve` runs it on its own;

and beside them `load` (psutil samples, judged against a client's thresholds),
`limits` (every cap and timeout: connections, handshake, idle, running jobs,
message size; the connection cap must fit the descriptor budget, see
`gloomd.fdlimit`) and `report_encoding` (frames are always JSON).

Threads: a plain ``def`` job runs in a worker thread (as in pykit), an ``async
def`` job runs in the service's nursery.  Everything else that could block
(importing job modules, psutil) also runs in threads, so the event loop only ever
encodes JSON and moves bytes.
"""

from __future__ import annotations

from .directory import JobFunction, JobsDirectory
from .errors import (
    IdleTimeoutError,
    InvalidMessageError,
    InvalidProgressError,
    JobError,
    JobFailedError,
    LoadingError,
    error_frame,
    job_failed_frame,
)
from .job import Job, ProgressAvailable
from .limits import WsLimits
from .load import SystemOverloadError
from .report_encoding import encode_report
from .request import (
    DEFAULT_CPU_SAMPLE_INTERVAL,
    DEFAULT_REPORT_INTERVAL,
    MAX_CPU_SAMPLE_INTERVAL,
    MIN_REPORT_INTERVAL,
    IdentKey,
    JobRequest,
    ReportOptions,
    ident_key,
    parse_request,
)
from .service import CLOSE_TIMEOUT, SEND_TIMEOUT, WsJobdService, WsJobService, serve

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_CPU_SAMPLE_INTERVAL",
    "DEFAULT_REPORT_INTERVAL",
    "MAX_CPU_SAMPLE_INTERVAL",
    "MIN_REPORT_INTERVAL",
    "SEND_TIMEOUT",
    "IdentKey",
    "IdleTimeoutError",
    "InvalidMessageError",
    "InvalidProgressError",
    "Job",
    "JobError",
    "JobFailedError",
    "JobFunction",
    "JobRequest",
    "JobsDirectory",
    "LoadingError",
    "ProgressAvailable",
    "ReportOptions",
    "SystemOverloadError",
    "WsJobService",
    "WsJobdService",
    "WsLimits",
    "encode_report",
    "error_frame",
    "ident_key",
    "job_failed_frame",
    "parse_request",
    "serve",
]
