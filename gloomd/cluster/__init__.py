"""Several daemons, one queue: the cluster's shared state in Redis.

`engine.ClusterEngine` calls the rules (`library.lua`, one Redis function
per atomic step) and reads the daemon's inbox; `keys` maps ids, types and
priorities to Redis keys and members; `steps` builds the calls and decodes
their answers; `settings` holds the flags.  See docs/cluster.md.
"""

from __future__ import annotations

from .errors import BackendUnavailable, BackendUncertain, Fenced
from .settings import ClusterLimits, ClusterSettings
from .steps import Delivery, JobSpec, Reply, Step

__all__ = [
    "BackendUnavailable",
    "BackendUncertain",
    "ClusterLimits",
    "ClusterSettings",
    "Delivery",
    "Fenced",
    "JobSpec",
    "Reply",
    "Step",
]
