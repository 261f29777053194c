"""gloom: the Python client for gloomd (and for Gloom itself).

Two ways in, with the same names:

* trio: ``async with gloom.open_master(host, port) as m: job = await m.submit(...)``
  and ``async with gloom.open_slave(host, port) as s: ...``;
* blocking: ``gloom.Master`` and ``gloom.Slave``, a drop-in for Gloom's own client;
* several independent daemons (the Gearman way): ``gloom.open_masters("h1:9998,h2:9998")``
  (blocking: ``gloom.Masters``) spreads submits and fails over, ``gloom.open_slaves``
  (blocking: ``gloom.Slaves``) serves every daemon, and the worker runner takes ``servers=``.

Both run the same sans-IO protocol code (``_master_protocol``,
``_slave_protocol``), so they match results to jobs the same way.

The job lifecycle (delays, retries, unique ids, dead letters, pause) adds
submit keywords and the master methods ``kick``, ``kick_type``, ``delete``,
``jobs`` (rows: `JobInfo`, states: `ListedState`), ``pause`` and ``resume``.
"""

from ._lifecycle import ANY_TYPE, JobInfo, JobsPage, ListedState
from ._protocol import JobState
from ._servers import AsyncServers, SpreadError, open_masters
from ._servers_slave import AsyncSlaves, open_slaves
from ._servers_sync import Masters, Slaves
from ._sync import Job as SyncJob
from ._sync import Master, Slave
from ._trio_master import AsyncMaster, Job, new_job_id, open_master
from ._trio_slave import AsyncSlave, SlaveJob, open_slave
from .errors import (
    GloomError,
    InvalidState,
    JobCancelled,
    JobError,
    JobFailed,
    ProtocolError,
    ServerError,
    TransportError,
    Unauthorized,
    UnknownJob,
    WaitTimeout,
)

__all__ = [
    "ANY_TYPE",
    "AsyncMaster",
    "AsyncServers",
    "AsyncSlave",
    "AsyncSlaves",
    "GloomError",
    "InvalidState",
    "Job",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobInfo",
    "JobState",
    "JobsPage",
    "ListedState",
    "Master",
    "Masters",
    "ProtocolError",
    "ServerError",
    "Slave",
    "SlaveJob",
    "Slaves",
    "SpreadError",
    "SyncJob",
    "TransportError",
    "Unauthorized",
    "UnknownJob",
    "WaitTimeout",
    "new_job_id",
    "open_master",
    "open_masters",
    "open_slave",
    "open_slaves",
]
