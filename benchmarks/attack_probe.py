"""The well-behaved client of the attack benchmark: a timed round trip every 100 ms.

    python -m benchmarks.attack_probe MASTER_PORT SLAVE_PORT [--token T]

One master and one slave connection (authenticated when a token is given);
every `--period` seconds the master submits a job, the slave takes it and
responds, and the time from the submit to the result reaching the master is
printed as one JSON line: ``{"t": start, "rt": seconds, "ok": true}``, with
``t`` on the system-wide monotonic clock (the harness compares it with its
own).  A failed round trip prints ``"ok": false`` and an ``error``, then the
probe reconnects (quietly retrying every 0.2 s while the daemon is gone).

It is a process of its own so that the attacker's Python work (building
16 MiB frames, reading floods) cannot delay it through a shared GIL: what it
measures is the daemon.  On SIGTERM a round trip still in flight is printed
with ``"error": "inflight"`` and its elapsed time, so a daemon stalled at the
end of an attack is not hidden by the probe being stopped.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from .attack_kit import FrameSocket

PROBE_TYPE = "__attack_probe__"


class Stop(Exception):
    """SIGTERM: print what is in flight and leave."""


def _on_term(signum: int, frame: Any) -> None:
    raise Stop


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def connect(
    master_port: int, slave_port: int, token: str | None
) -> tuple[FrameSocket, FrameSocket]:
    master = FrameSocket(master_port, token=token, timeout=2.0)
    slave = FrameSocket(slave_port, token=token, timeout=2.0)
    if slave.request({"action": "join", "type": PROBE_TYPE}) != {"ok": True}:
        raise ConnectionError("join refused")
    return master, slave


def round_trip(master: FrameSocket, slave: FrameSocket, n: int, limit: float) -> None:
    """submit -> job -> respond -> result; raises on anything unexpected or late."""
    deadline = time.monotonic() + limit
    job_id = f"probe-{n}"
    master.send({"action": "submit", "id": job_id, "type": PROBE_TYPE, "body": n})
    job = slave.recv(deadline - time.monotonic())
    if job.get("action") != "job" or job.get("id") != job_id:
        raise ValueError(f"unexpected job frame {str(job)[:120]}")
    slave.send({"action": "respond", "body": n})
    answered = acked = False
    while not (answered and acked):
        reply = master.recv(deadline - time.monotonic())
        if reply == {"ok": True, "id": job_id}:
            acked = True
        elif reply == {"id": job_id, "body": n}:
            answered = True
        else:
            raise ValueError(f"unexpected master frame {str(reply)[:120]}")
    if slave.recv(deadline - time.monotonic()) != {"ok": True}:
        raise ValueError("respond not acked")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("master_port", type=int)
    p.add_argument("slave_port", type=int)
    p.add_argument("--token", default=None)
    p.add_argument("--period", type=float, default=0.1, help="seconds between round trips")
    p.add_argument("--limit", type=float, default=10.0, help="seconds before a round trip fails")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    conns: tuple[FrameSocket, FrameSocket] | None = None
    started: float | None = None
    n = 0
    try:
        conns = connect(args.master_port, args.slave_port, args.token)
        emit(ready=True)
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at = max(next_at + args.period, time.monotonic())
            if conns is None:
                try:
                    conns = connect(args.master_port, args.slave_port, args.token)
                    emit(reconnected=True, t=time.monotonic())
                except OSError:
                    next_at = time.monotonic() + 0.2
                    continue
            n += 1
            started = time.monotonic()
            try:
                round_trip(*conns, n, args.limit)
            except (OSError, EOFError, ValueError) as exc:
                emit(t=started, rt=time.monotonic() - started, ok=False, error=type(exc).__name__)
                for conn in conns:
                    conn.close()
                conns = None
            else:
                emit(t=started, rt=time.monotonic() - started, ok=True)
            started = None
    except Stop:
        if started is not None:
            emit(t=started, rt=time.monotonic() - started, ok=False, error="inflight")
    except OSError as exc:
        emit(ready=False, error=repr(exc))
        return 1
    finally:
        for conn in conns or ():
            conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
