"""What the daemon's tests share: a real gloomd process (`daemon`), raw frames
over sockets (`wire`), a broker driven by hand (`brokerkit`), HTTP from the
outside (`httpkit`), and the websocket service's job modules (`wsjobs/`)."""

from __future__ import annotations

from pathlib import Path

#: The repository's root (README.md, contrib/, benchmarks/).
ROOT = Path(__file__).resolve().parent.parent.parent
#: The jobs directory the websocket service's tests serve (`--jobs-dir`).
WSJOBS = Path(__file__).resolve().parent / "wsjobs"
