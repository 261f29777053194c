"""Which wire classes speak to which system."""

from __future__ import annotations

from .beanstalk_wire import BeanstalkMaster, BeanstalkWorker
from .gearman_wire import GearmanMaster, GearmanWorker
from .gloom_wire import GloomMaster, GloomWorker
from .wire import MasterFactory, WorkerFactory

__all__ = ["CLUSTER", "SYSTEMS", "wires"]

SYSTEMS = ("gloomd", "gearmand", "beanstalkd")
#: gloomd daemons on one Redis (issue 16): they speak gloomd's wire.
CLUSTER = ("gloomd-cluster1", "gloomd-cluster2")

_WIRES: dict[str, tuple[MasterFactory, WorkerFactory]] = {
    "gloomd": (GloomMaster, GloomWorker),
    "gearmand": (GearmanMaster, GearmanWorker),
    "beanstalkd": (BeanstalkMaster, BeanstalkWorker),
    **dict.fromkeys(CLUSTER, (GloomMaster, GloomWorker)),
}


def wires(system: str) -> tuple[MasterFactory, WorkerFactory]:
    try:
        return _WIRES[system]
    except KeyError:
        raise ValueError(
            f"unknown system {system!r}; choose from {', '.join(SYSTEMS + CLUSTER)}"
        ) from None
