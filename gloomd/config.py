"""The daemon's settings, with the defaults it runs on when given none."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from gloomwire.framing import DEFAULT_MAX_FRAME

from .broker import BrokerLimits
from .cluster.settings import ClusterSettings
from .journal import JournalStore
from .replay import Restored
from .transport import DEFAULT_HIGH_WATER

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
    #: Connections from one peer address; over it: `too_many_connections`.
    max_per_host: int = 1_000
    #: Seconds a frame that has started may take to arrive in full (slowloris).
    frame_timeout: float = 30.0
    #: Seconds a connection has to authenticate (and finish TLS) when a token is set.
    auth_timeout: float = 10.0
    #: Unsent output (bytes) past which a connection is not read until half of
    #: it has drained: its own requests cannot pile up more output than this.
    output_high_water: int = DEFAULT_HIGH_WATER
    #: Seconds output may wait to be written before the connection is dropped.
    write_timeout: float = 60.0
    #: TCP keepalive on every accepted socket: first probe after `keepalive_idle`
    #: idle seconds, then every `keepalive_interval` s; dropped after `keepalive_count`
    #: unanswered probes (a vanished host is noticed after 60 + 6 x 10 = 120 s).
    keepalive_idle: int = 60
    keepalive_interval: int = 10
    keepalive_count: int = 6
    #: Shared secret every connection must present first; None: no authentication.
    token: str | None = field(default=None, repr=False)
    #: TLS for every port; None: plaintext.
    ssl_context: ssl.SSLContext | None = None
    limits: BrokerLimits = field(default_factory=BrokerLimits)
    #: The journal (`--journal`), open and checked; None: jobs live in memory only.
    journal: JournalStore | None = field(default=None, compare=False)
    #: What it held at start, decoded (`gloomd.replay`), replayed before listening.
    restored: Restored | None = field(default=None, repr=False, compare=False)
    #: The cluster (`--cluster`): the queue lives in this Redis, shared by
    #: every daemon given it (`gloomd.cluster`); None: the embedded broker.
    cluster: ClusterSettings | None = field(default=None, repr=False)
