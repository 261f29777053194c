"""The cluster's settings: which Redis, which cluster on it, the lease.

`--cluster URL` takes `redis://[[USER]:PASSWORD@]HOST:PORT/DB`, or
`rediss://...` for TLS; a password may also come from a file
(`--cluster-password-file`), so that it is not on the command line where
`ps` shows it.  `--cluster-name` (default `gloomd`) names the cluster: every
daemon given the same Redis and name is one cluster, and two names share a
Redis without seeing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ClusterLimits", "ClusterSettings", "masked", "read_password"]


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    url: str
    name: str = "gloomd"
    #: Seconds a daemon's lease lasts; renewed every third of it.
    lease: float = 5.0
    password_file: str | None = None
    #: Seconds to open a connection to Redis.
    connect_timeout: float = 2.0
    #: Seconds to wait for an answer before Redis counts as unreachable.
    op_timeout: float = 5.0
    #: Reconnect back-off: first wait, longest wait (doubling between).
    backoff_min: float = 0.05
    backoff_max: float = 2.0

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"--cluster {self.url!r}: redis://, rediss:// or unix:// expected")
        if not self.lease > 0:
            raise ValueError("--cluster-lease must be positive")

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for `coredis.Redis.from_url` besides the URL."""
        options: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "stream_timeout": self.op_timeout,
        }
        if self.password_file is not None:
            options["password"] = read_password(self.password_file)
        return options


@dataclass(frozen=True, slots=True)
class ClusterLimits:
    """The rules' knobs, cluster-wide (each daemon writes them at start, the
    last one started wins); their defaults are the embedded broker's."""

    max_queued: int = 1_000_000
    max_retries: int = 3
    result_ttl: float = 3600.0
    max_results: int = 100_000
    max_dead: int = 100_000
    max_stats_types: int = 1000

    def as_args(self) -> list[str | int]:
        """Name/value pairs for the `cfg` hash (times in milliseconds)."""
        return [
            "max_queued",
            self.max_queued,
            "max_retries",
            self.max_retries,
            "result_ttl",
            round(self.result_ttl * 1000),
            "max_results",
            self.max_results,
            "max_dead",
            self.max_dead,
        ]


def read_password(path: str) -> str:
    """The first line of a password file, without its line end."""
    text = Path(path).read_text()
    return text.splitlines()[0] if text else ""


def masked(text: str) -> str:
    """A URL (or a message quoting one) without its password, for messages
    and logs."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", text)
