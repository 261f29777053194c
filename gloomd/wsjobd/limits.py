"""The websocket service's caps and timeouts.

The websocket service shares one process, and so one ``RLIMIT_NOFILE``, with
the Gloom ports.  Measured before these caps: 1,010 idle websocket
connections used up a 1,024-descriptor limit and the Gloom ports stopped
accepting.  Its connection cap is fitted to the descriptor limit at start,
together with the Gloom ports' (`gloomd.fdlimit.fit_connection_caps`), so that
it can never take the descriptors the Gloom ports are allowed.  Every accepted
websocket connection counts against the cap from ``accept`` on, handshake
included; over it, the connection gets an HTTP 503 and is closed at once.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_JOBS",
    "DEFAULT_MAX_MESSAGE",
    "WsLimits",
    "positive_float",
    "positive_int",
]

#: Open websocket connections (pykit's default `max_client_number`).
DEFAULT_MAX_CONNECTIONS = 1000
#: Seconds a connection may stay open without sending its job description.
#: pykit clients send it right after the handshake.
DEFAULT_IDLE_TIMEOUT = 30.0
#: Seconds from accept to a complete opening handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Jobs running at once (thread and async).  A job holds its description (up to
#: --ws-max-message) for as long as it runs, and a plain function holds a thread.
DEFAULT_MAX_JOBS = 256
#: Largest message accepted (trio-websocket's default): over it, close 1009.
DEFAULT_MAX_MESSAGE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class WsLimits:
    """Every cap and timeout of the websocket service (the ``--ws-*`` flags)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    max_jobs: int = DEFAULT_MAX_JOBS
    max_message: int = DEFAULT_MAX_MESSAGE

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_jobs", "max_message"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("idle_timeout", "handshake_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


#: The defaults as one shared instance (frozen), for signatures' default arguments.
DEFAULT_LIMITS: Final = WsLimits()


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number greater than 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value
