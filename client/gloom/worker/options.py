"""The runner's knobs, checked once, and the endpoints and back-off they imply."""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._connect import Backoff, Endpoint
from .._security import client_ssl_context, resolve_token
from .._servers import parse_servers
from .handler import HandlerSpec, split_path

__all__ = ["WorkerOptions"]


@dataclass
class WorkerOptions:
    """The runner's knobs; see `gloom.worker.run` for what each one means."""

    type: Any
    handler: str
    host: str = "127.0.0.1"
    slave_port: int = 9999
    master_port: int = 9998
    concurrency: int | None = None
    min: int | None = None
    max: int | None = None
    timeout: float = 300.0
    grace: float = 10.0
    max_jobs_per_process: int = 1000
    import_path: tuple[str, ...] = ()
    class_args: tuple[Any, ...] = ()
    class_kwargs: dict[str, Any] | None = None
    burst: bool = False
    #: Several daemons to serve at once (the Gearman way): "h1:9999,h2:9999"
    #: or a list of "host:port" / (host, port), their slave ports (a host
    #: without a port takes `slave_port`).  Replaces `host` when given.
    servers: str | Sequence[str | tuple[str, int]] | None = None
    # The finer knobs (API only; README's worker table):
    #: Seconds of silence on a link before it is pinged (0: no pings).
    heartbeat: float = 5.0
    #: Silent `heartbeat` intervals after which a link is declared dead.
    liveness: int = 3
    #: Back-off between reconnects: this, doubling up to `max_reconnect_delay`.
    reconnect_delay: float = 1.0
    max_reconnect_delay: float = 30.0
    #: Seconds between two readings of the backlog when scaling.
    scale_interval: float = 1.0
    #: Seconds a process must have been idle before scaling down retires it.
    idle_grace: float = 10.0
    #: Restart delay of a crash-looping slot: this, doubling up to `max_crash_backoff`.
    crash_backoff: float = 0.5
    max_crash_backoff: float = 30.0
    #: Bounds TCP connect, TLS handshake and auth of every connection.
    connect_timeout: float = 10.0
    #: Stop on SIGTERM/SIGINT (`gloom.worker.run` turns it on).
    handle_signals: bool = False
    #: Security, as for `gloom.open_master`: `token`, else `token_file`'s first
    #: line, else $GLOOMD_TOKEN; `ssl_context`, else `tls`/`tls_ca`.  Resolved
    #: once here, so a bad token file fails before anything starts, and every
    #: connection of the run presents the same credentials.
    token: str | None = field(default=None, repr=False)
    token_file: str | os.PathLike[str] | None = None
    ssl_context: ssl.SSLContext | None = None
    tls: bool = False
    tls_ca: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        self.token = resolve_token(self.token, self.token_file)
        self.ssl_context = client_ssl_context(self.ssl_context, tls=self.tls, tls_ca=self.tls_ca)
        split_path(self.handler)  # a malformed path is a HandlerNotFound right away
        self.import_path = tuple(os.path.abspath(p) for p in self.import_path)
        self.class_args = tuple(self.class_args)
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.scaling:
            low, high = self.bounds
            if low < 1 or high < low:
                raise ValueError(f"need 1 <= min <= max, got min={low} max={high}")
        for name in ("timeout", "grace", "heartbeat", "scale_interval", "idle_grace"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_jobs_per_process < 1:
            raise ValueError("max_jobs_per_process must be at least 1")
        if self.liveness < 1:
            raise ValueError("liveness must be at least 1")
        self._servers: list[tuple[str, int]] = []
        if self.servers is not None:
            self._servers = parse_servers(self.servers, self.slave_port)
            if len(self._servers) > 1 and (self.scaling or self.burst):
                # Both read one daemon's backlog on its master port, which a
                # list of slave ports does not name.
                raise ValueError("servers does not combine with min/max or burst")

    @property
    def scaling(self) -> bool:
        return self.min is not None or self.max is not None

    @property
    def bounds(self) -> tuple[int, int]:
        fixed = self.concurrency or os.cpu_count() or 1
        if not self.scaling:
            return fixed, fixed
        low = 1 if self.min is None else self.min
        high = max(fixed, low) if self.max is None else self.max
        return low, high

    def spec(self) -> HandlerSpec:
        return HandlerSpec(
            self.handler, self.import_path, self.class_args, dict(self.class_kwargs or {})
        )

    @property
    def slave_endpoint(self) -> Endpoint:
        """Where each slot connects (and the start-up probe)."""
        if self._servers:  # one daemon given as a list of one
            host, port = self._servers[0]
            return Endpoint(host, port, self.ssl_context, self.token, self.connect_timeout)
        return Endpoint(
            self.host, self.slave_port, self.ssl_context, self.token, self.connect_timeout
        )

    @property
    def slave_endpoints(self) -> list[Endpoint]:
        """Every daemon the slots serve: `servers`, else the one `slave_endpoint`."""
        if not self._servers:
            return [self.slave_endpoint]
        return [
            Endpoint(host, port, self.ssl_context, self.token, self.connect_timeout)
            for host, port in self._servers
        ]

    @property
    def master_endpoint(self) -> Endpoint:
        """Where scaling and burst mode read the backlog."""
        return Endpoint(
            self.host, self.master_port, self.ssl_context, self.token, self.connect_timeout
        )

    def backoff(self) -> Backoff:
        """A fresh reconnect policy: `reconnect_delay` doubling to `max_reconnect_delay`."""
        return Backoff(self.reconnect_delay, self.max_reconnect_delay)
