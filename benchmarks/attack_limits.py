"""What the caps of a gloomd allow, and the targets of issue 18.

`rss_bound` is the memory an attack may cost: README's formula ("Memory, per
the caps", in the Security section) for the connections it involves, plus the
byte caps of the stores it fills.  The issue's target is a peak below twice
that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BASE_CAPS",
    "CLIENT_MAX_FRAME",
    "FLAGS",
    "LOG_TARGET_PER_10S",
    "PROBE_CONNS",
    "RSS_FACTOR",
    "RT_TARGET",
    "Caps",
    "KiB",
    "MiB",
    "rss_bound",
]

KiB = 1024
MiB = 1024 * 1024

#: Targets of issue 18.
RT_TARGET = 0.250  # seconds, the probe's worst round trip
RSS_FACTOR = 2.0  # peak RSS < RSS_FACTOR x rss_bound(...)
#: The probe's own connections, always part of the bound.
PROBE_CONNS = 2
#: Per websocket connection beyond its message cap: wsproto's and trio's buffers.
WS_CONN_BUFFERS = 64 * KiB
#: The `gloom` client's frame cap: a stats answer above it cannot be read.
CLIENT_MAX_FRAME = 16 * MiB
#: Log volume allowed while one peer re-joins 10,000 times a second.
LOG_TARGET_PER_10S = 256 * KiB


@dataclass(frozen=True)
class Caps:
    """The daemon's caps an attack runs under: gloomd's defaults unless it asks."""

    max_frame: int = 16 * MiB
    max_outbuf: int = 64 * MiB
    frame_timeout: float = 30.0
    max_connections: int = 10_000
    max_result_bytes: int = 256 * MiB  # detached results kept, in bytes
    max_outcome_bytes: int = 32 * MiB  # outcomes kept for `after`, in bytes
    max_id_bytes: int = 1 * KiB
    max_type_bytes: int = 1 * KiB
    max_frame_values: int = 262_144
    write_timeout: float = 60.0  # a peer whose output makes no progress is dropped
    ws_max_connections: int = 1000
    ws_max_jobs: int = 256
    ws_idle_timeout: float = 30.0
    ws_max_message: int = 1 * MiB

    def store(self, name: str) -> int:
        return {"results": self.max_result_bytes, "outcomes": self.max_outcome_bytes}[name]


#: Caps every attack runs under unless it asks otherwise: the Gloom caps
#: matter to few attacks, and at their defaults (80 MiB a connection) the
#: probe's two connections alone would put 168 MB in every bound.
BASE_CAPS: dict[str, Any] = {"max_frame": 1 * MiB, "max_outbuf": 4 * MiB}

#: Flag of each cap.
FLAGS: dict[str, str] = {
    "max_frame": "--max-frame",
    "max_outbuf": "--max-outbuf",
    "frame_timeout": "--frame-timeout",
    "max_connections": "--max-connections",
    "max_result_bytes": "--max-result-bytes",
    "max_outcome_bytes": "--max-outcome-bytes",
    "max_id_bytes": "--max-id-size",
    "max_type_bytes": "--max-type-size",
    "max_frame_values": "--max-frame-values",
    "write_timeout": "--write-timeout",
    "ws_max_connections": "--ws-max-connections",
    "ws_max_jobs": "--ws-max-jobs",
    "ws_idle_timeout": "--ws-idle-timeout",
    "ws_max_message": "--ws-max-message",
}


def rss_bound(
    caps: Caps,
    baseline: int,
    *,
    conns: int,
    ws_conns: int = 0,
    ws_jobs: int = 0,
    stores: Iterable[str] = (),
) -> int:
    """Bytes of resident memory the caps allow for what an attack involves.

    README's formula, with F = max_frame, O = max_outbuf, V = max_frame_values:

        baseline                                   (RSS when the attack starts)
      + conns x (2F + 256 KiB + 2O)                (each Gloom connection's input and output)
      + F + 64 B x V + O + conns x 256 KiB         (the frame being decoded, one flush, and
                                                    one reactor round's input)
      + ws_conns x (ws_max_message + buffers)      (websocket connections involved)
      + min(ws_jobs, ws_max_jobs) x ws_max_message (running websocket jobs' descriptions)
      + the byte cap of each store the attack fills (detached results, outcomes)

    `conns` counts the probe's two connections too.
    """
    recv = 256 * KiB
    return (
        baseline
        + conns * (2 * caps.max_frame + recv + 2 * caps.max_outbuf)
        + caps.max_frame
        + 64 * caps.max_frame_values
        + caps.max_outbuf
        + conns * recv
        + ws_conns * (caps.ws_max_message + WS_CONN_BUFFERS)
        + min(ws_jobs, caps.ws_max_jobs) * caps.ws_max_message
        + sum(caps.store(name) for name in stores)
    )
