"""What the caps of a gloomd allow, and the targets of issue 18.

`rss_bound` is the memory an attack may cost: the baseline, plus the caps of
every connection it involves, plus the byte caps of the stores it fills.  The
issue's target is a peak below twice that.  Caps issue 18 adds (byte caps on
ids, types and stores, a write timeout, websocket caps) are named in `FLAGS`
as the harness expects them; reconcile the names there when the fixes land.
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
    """The daemon's caps an attack runs under: gloomd's defaults unless it asks.

    Fields marked *future* are caps issue 18 asks for; their defaults here are
    assumptions until the fix names them (see `FLAGS`).
    """

    max_frame: int = 16 * MiB
    max_outbuf: int = 64 * MiB
    frame_timeout: float = 30.0
    max_connections: int = 10_000
    max_result_bytes: int = 256 * MiB  # future: detached results kept, in bytes
    max_outcome_bytes: int = 64 * MiB  # future: outcomes kept for `after`, in bytes
    max_id_bytes: int = 1 * KiB  # future
    max_type_bytes: int = 1 * KiB  # future
    write_timeout: float = 60.0  # future: a peer whose output has not drained is dropped
    ws_max_connections: int = 512  # future
    ws_max_jobs: int = 1000  # wsjobd's job-thread cap (DEFAULT_MAX_JOB_THREADS)
    ws_idle_timeout: float = 60.0  # future
    ws_max_message: int = 1 * MiB  # trio-websocket's default max_message_size

    def store(self, name: str) -> int:
        return {"results": self.max_result_bytes, "outcomes": self.max_outcome_bytes}[name]


#: Caps every attack runs under unless it asks otherwise: the Gloom caps
#: matter to few attacks, and at their defaults (80 MiB a connection) the
#: probe's two connections alone would put 168 MB in every bound.
BASE_CAPS: dict[str, Any] = {"max_frame": 1 * MiB, "max_outbuf": 4 * MiB}

#: Flag of each cap.  The core and wsjobd fixes choose the final names of the
#: future ones; reconcile here (one line each) when they land.
FLAGS: dict[str, str] = {
    "max_frame": "--max-frame",
    "max_outbuf": "--max-outbuf",
    "frame_timeout": "--frame-timeout",
    "max_connections": "--max-connections",
    "max_result_bytes": "--max-result-bytes",
    "max_outcome_bytes": "--max-outcome-bytes",
    "max_id_bytes": "--max-id-bytes",
    "max_type_bytes": "--max-type-bytes",
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

        baseline                                   (RSS when the attack starts)
      + conns    x (max_frame + max_outbuf)        (Gloom connections involved)
      + ws_conns x (ws_max_message + buffers)      (websocket connections involved)
      + min(ws_jobs, ws_max_jobs) x ws_max_message (running websocket jobs' descriptions)
      + the byte cap of each store the attack fills (detached results, outcomes)

    `conns` counts the probe's two connections too.  An input buffer holds
    at most one frame, an output buffer at most `max_outbuf`; what a decoded
    frame costs beyond its bytes is what the factor 2 of the target leaves room for.
    """
    return (
        baseline
        + conns * (caps.max_frame + caps.max_outbuf)
        + ws_conns * (caps.ws_max_message + WS_CONN_BUFFERS)
        + min(ws_jobs, caps.ws_max_jobs) * caps.ws_max_message
        + sum(caps.store(name) for name in stores)
    )
