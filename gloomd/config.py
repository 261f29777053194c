"""The daemon's settings, with the defaults it runs on when given none."""

from __future__ import annotations

from dataclasses import dataclass, field

from .broker import BrokerLimits
from .framing import DEFAULT_MAX_FRAME

__all__ = ["Config"]


@dataclass(frozen=True)
class Config:
    """Everything `gloomd` can be told; the CLI flags map one to one onto these."""

    host: str = "127.0.0.1"
    master_port: int = 9998
    slave_port: int = 9999
    #: Largest frame payload accepted; over it: `size_error` and close.
    max_frame: int = DEFAULT_MAX_FRAME
    #: Open master + slave connections; over it: `too_many_connections` and close.
    max_connections: int = 10_000
    #: Bytes waiting to be written to one connection before it is dropped as a
    #: peer that does not read (its jobs are then handled as a disconnect).
    max_outbuf: int = 64 * 1024 * 1024
    #: Seconds the daemon waits, at shutdown, for its last frames to be written.
    shutdown_grace: float = 5.0
    limits: BrokerLimits = field(default_factory=BrokerLimits)
