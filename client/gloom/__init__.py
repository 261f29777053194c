"""gloom: the Python client for gloomd (and for Gloom itself).

Two ways in, with the same names:

* trio: ``async with gloom.open_master(host, port) as m: job = await m.submit(...)``
  and ``async with gloom.open_slave(host, port) as s: ...``;
* blocking: ``gloom.Master`` and ``gloom.Slave``, a drop-in for Gloom's own client.

Both run the same sans-IO protocol code (``_master_protocol``,
``_slave_protocol``), so they match results to jobs the same way.
"""

from ._protocol import JobState
from ._sync import Job as SyncJob
from ._sync import Master, Slave
from ._trio_master import AsyncMaster, Job, new_job_id, open_master
from ._trio_slave import AsyncSlave, SlaveJob, open_slave
from .errors import (
    GloomError,
    JobCancelled,
    JobError,
    JobFailed,
    ProtocolError,
    ServerError,
    TransportError,
    Unauthorized,
    WaitTimeout,
)

__all__ = [
    "AsyncMaster",
    "AsyncSlave",
    "GloomError",
    "Job",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobState",
    "Master",
    "ProtocolError",
    "ServerError",
    "Slave",
    "SlaveJob",
    "SyncJob",
    "TransportError",
    "Unauthorized",
    "WaitTimeout",
    "new_job_id",
    "open_master",
    "open_slave",
]
