"""Which wire classes speak to which system."""

from __future__ import annotations

from .beanstalk_wire import BeanstalkMaster, BeanstalkWorker
from .gearman_wire import GearmanMaster, GearmanWorker
from .gloom_wire import GloomMaster, GloomWorker
from .wire import MasterFactory, WorkerFactory

__all__ = ["SYSTEMS", "wires"]

SYSTEMS = ("gloomd", "gearmand", "beanstalkd")

_WIRES: dict[str, tuple[MasterFactory, WorkerFactory]] = {
    "gloomd": (GloomMaster, GloomWorker),
    "gearmand": (GearmanMaster, GearmanWorker),
    "beanstalkd": (BeanstalkMaster, BeanstalkWorker),
}


def wires(system: str) -> tuple[MasterFactory, WorkerFactory]:
    try:
        return _WIRES[system]
    except KeyError:
        raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}") from None
