"""Drive a Broker by hand: peers, frames in, decoded frames out. No sockets."""

from __future__ import annotations

import json
from typing import Any

from gloomd.broker import Broker, BrokerLimits, Peer, iter_frames
from gloomd.ingest import ingest_for
from gloomwire import codec


def receive(broker: Broker, peer: Peer, payload: bytes) -> None:
    """One payload through `peer`'s ingest, as its connection hands it over."""
    ingest_for(broker, peer).receive(payload)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Kit:
    """A broker on fake clocks: `clock` (monotonic) and `wall` (wall clock,
    for `age_s`); `tick` moves both."""

    def __init__(self, **limits: Any) -> None:
        self.clock = FakeClock()
        self.wall = FakeClock()
        self.wall.now = 1_700_000_000.0
        self.broker = Broker(BrokerLimits(**limits), clock=self.clock, wall=self.wall)

    def master(self, name: str = "m") -> Peer:
        return self.broker.connect_master(name)

    def slave(self, job_type: Any = None, name: str = "s") -> Peer:
        peer = self.broker.connect_slave(name)
        if job_type is not None:
            frames = self.send(peer, {"action": "join", "type": job_type})
            assert frames[0] == {"ok": True}
            peer.outbox.extend(frames[1:])  # a job handed over at once stays to be read
        return peer

    def send(self, peer: Peer, obj: Any) -> list[Any]:
        """Deliver one frame; return what `peer` itself got back."""
        receive(self.broker, peer, json.dumps(obj).encode())
        return self.out(peer)

    def deliver(self, peer: Peer, obj: Any) -> None:
        """Deliver one frame and leave every reply in the outboxes."""
        receive(self.broker, peer, json.dumps(obj).encode())

    def receive(self, peer: Peer, payload: bytes) -> None:
        """Deliver one payload as sent (it may be invalid JSON)."""
        receive(self.broker, peer, payload)

    def out(self, peer: Peer) -> list[Any]:
        """Decode and clear the frames waiting for `peer` (as the server's flush does)."""
        frames = [codec.loads(f[4:]) for f in iter_frames(peer.outbox)]
        peer.outbox.clear()
        peer.pending = 0
        self.broker.dirty.pop(peer, None)
        return frames

    def submit(
        self,
        master: Peer,
        job_id: Any,
        job_type: Any = "t",
        priority: int = 0,
        body: Any = None,
        **extra: Any,
    ) -> list[Any]:
        msg = {
            "action": "submit",
            "id": job_id,
            "type": job_type,
            "priority": priority,
            "body": body,
            **extra,
        }
        return self.send(master, msg)

    def tick(self, advance: float) -> None:
        """Move both clocks and fire what is due, as the server's timer would
        (again while the broker says work is left for the next pass)."""
        self.clock.now += advance
        self.wall.now += advance
        self.broker.tick(self.clock.now)
        while self.broker.next_deadline() == float("-inf"):
            self.broker.tick(self.clock.now)

    def step(self) -> None:
        """One pass of the timer at the present time (no catching up)."""
        self.broker.tick(self.clock.now)

    def assert_empty(self) -> None:
        """No job, type, id or outbox left behind."""
        b = self.broker
        assert b.jobs == {}
        assert b.types == {}
        assert b.queued_total == 0
        assert b.masters == set() and b.slaves == set()
