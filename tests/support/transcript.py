"""Every frame the daemon's core writes for a fixed script of frames in, as one digest.

Run it on two builds of the same tree (compiled with mypyc, and pure Python)
and compare: the frames must be byte for byte the same.  The script walks
the protocol: every error of protocol.md's check order on both ports, jobs
with every kind of id, type and body (big integers, floats, unicode, raw
bodies of the fast path), priorities, cancel, detached results, `after`,
progress, fail, a timeout, a slave lost, stats; sans-IO, with a fixed clock.

    python -m tests.support.transcript            # prints the digest and the frame count
    python -m tests.support.transcript --frames   # prints every frame
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from gloomd.broker import Broker, BrokerLimits, Peer, iter_frames
from gloomd.ingest import Ingest, ingest_for

__all__ = ["transcript"]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


BODIES: list[bytes] = [
    b"null",
    b'"x"',
    b"12345678901234567890123",
    b"-0.5",
    b'[1,2.5,{"a":[true,false,null]}]',
    b'"\\u00e9\\ud83d\\ude00"',
    b'"\xc3\xa9"',
    b'{ "spaced" : [ 1 , 2 ] }',
    b'{"a":1,"a":2}',
    b"1e3",
    b'"' + b"y" * 5000 + b'"',
]

MASTER_ERRORS: list[bytes] = [
    b"not json",
    b"[1]",
    b"{}",
    b'{"action":"join","type":"t"}',
    b'{"action":"progress","body":1}',
    b'{"action":"nope"}',
    b'{"action":"submit"}',
    b'{"action":"submit","id":true,"type":"t","body":1}',
    b'{"action":"submit","id":1}',
    b'{"action":"submit","id":1,"type":"t","priority":5.0,"body":1}',
    b'{"action":"submit","id":1,"type":"t"}',
    b'{"action":"submit","id":1,"type":"t","timeout":0,"body":1}',
    b'{"action":"submit","id":1,"type":"t","detach":1,"body":1}',
    b'{"action":"submit","id":1,"type":"t","after":"x","body":1}',
    b'{"action":"submit","id":1,"type":"t","body":1e400}',
    b'{"action":"submit","id":"\\ud800","type":"t","body":1}',
    b'{"action":"cancel"}',
    b'{"action":"result","id":"unknown"}',
    b'{"action":"ping"}',
]

SLAVE_ERRORS: list[bytes] = [
    b"{",
    b'{"type":"t"}',
    b'{"action":"join"}',
    b'{"action":"respond"}',
    b'{"action":"submit","id":1,"type":"t","body":1}',
    b'{"action":"stats"}',
    b'{"action":"what"}',
    b'{"action":"ping"}',
]


def transcript() -> list[tuple[str, bytes]]:
    """Run the script; every frame written, with the name of its peer, in order."""
    clock = _Clock()
    broker = Broker(BrokerLimits(max_retries=1), clock=clock, wall=clock)  # age_s fixed too
    out: list[tuple[str, bytes]] = []
    ingests: dict[str, Ingest] = {}

    def peer(name: str, role: str) -> Ingest:
        node: Peer = broker.connect_master(name) if role == "m" else broker.connect_slave(name)
        ingests[name] = ingest_for(broker, node)
        return ingests[name]

    def send(name: str, payload: bytes) -> None:
        ingests[name].receive(payload)
        flush()

    def flush() -> None:
        for node in broker.take_dirty():
            out.extend((node.name, frame) for frame in iter_frames(node.outbox))
            node.outbox = []
            node.pending = 0

    peer("m1", "m")
    peer("m2", "m")
    peer("s1", "s")
    peer("s2", "s")
    for payload in MASTER_ERRORS:
        send("m1", payload)
    for payload in SLAVE_ERRORS:
        send("s1", payload)
    send("s1", b'{"action":"join","type":"t"}')
    send("s2", b'{"action":"join","type":[1,{"b":2,"a":1}]}')
    ids = [b"1", b'"one"', b"123456789012345678901234567890", b'"\xc3\xa9"']
    for n, body in enumerate(BODIES):
        job_id = ids[n % len(ids)]
        send(
            "m1",
            b'{"action":"submit","id":%s,"type":"t","priority":%d,"body":%s}'
            % (job_id, n % 3, body),
        )
        send("s1", b'{"action":"progress","body":{"p":%d}}' % n)
        send("s1", b'{"action":"respond","body":%s}' % body)
    for n in range(6):  # queued behind nobody: priorities decide
        send(
            "m2",
            b'{"action":"submit","id":"q%d","type":"t","priority":%d,"body":%d}' % (n, n % 3, n),
        )
    send("m2", b'{"action":"cancel","id":"q0"}')
    send("m2", b'{"action":"submit","id":"d","type":"t","detach":true,"after":["q1"],"body":1}')
    send("m2", b'{"action":"submit","id":"t","type":"t","timeout":2.5,"body":[]}')
    send("m2", b'{"action":"submit","id":"t30","type":"t","timeout":30,"body":[]}')
    send("m2", b'{"action":"stats"}')
    for n in range(8):
        send("s1", b'{"action":"respond","body":"r%d"}' % n)
    send("m1", b'{"action":"submit","id":"f","type":"t","body":null}')
    send("s1", b'{"action":"fail","error":"ERROR","reason":{"why":"x"}}')
    send("m1", b'{"action":"result","id":"d"}')
    send("m1", b'{"action":"submit","id":"late","type":"t","timeout":5,"body":0}')
    send("s1", b'{"action":"respond","body":"rf"}')  # "late" goes to s1, and times out
    send("m1", b'{"action":"submit","id":"x","type":[1,{"a":1,"b":2}],"body":{}}')
    clock.now += 10
    broker.tick(clock.now)
    flush()
    broker.disconnect(ingests["s2"].peer)
    flush()
    send("m1", b'{"action":"stats","type":"t"}')
    _lifecycle(send, clock, broker, flush)
    # A job that times out with a retry left goes on as a copy (`Job.retry_copy`).
    peer("s3", "s")
    send("s3", b'{"action":"join","type":"slow"}')
    send("m1", b'{"action":"submit","id":"slow","type":"slow","timeout":1,"retries":1,"body":0}')
    clock.now += 2
    broker.tick(clock.now)
    flush()
    send("m1", b'{"action":"jobs","type":"slow"}')
    broker.halt()
    flush()
    return out


def _lifecycle(send: Any, clock: _Clock, broker: Broker, flush: Any) -> None:
    """The job lifecycle (delay, retries with back-off, unique, dead letters,
    kick, delete, jobs, pause/resume) and its errors, on the split broker."""
    send("s1", b'{"action":"join","type":"life"}')
    send("m1", b'{"action":"submit","id":"r","type":"life","retries":1,"backoff":2,"body":1}')
    send("s1", b'{"action":"fail","error":"ERROR","reason":"once"}')
    clock.now += 3
    broker.tick(clock.now)
    flush()
    send("s1", b'{"action":"fail","error":"ERROR","reason":"twice"}')  # dead now
    for n in range(3):
        send("m2", b'{"action":"submit","id":"z%d","type":"life","detach":true,"body":%d}' % (n, n))
        send("s1", b'{"action":"fail","error":"ERROR","reason":%d}' % n)
    send("m2", b'{"action":"submit","id":"u","type":"idle","unique":true,"body":"x"}')
    send("m1", b'{"action":"submit","id":"u","type":"idle","unique":true,"body":"x"}')
    send("m2", b'{"action":"submit","id":"dl","type":"idle","delay":5,"body":null}')
    send("m2", b'{"action":"jobs","type":"life","state":"dead","limit":2}')
    send("m2", b'{"action":"jobs","state":"delayed"}')
    send("m2", b'{"action":"kick","id":"z0"}')
    send("m2", b'{"action":"kick","type":"life","limit":1}')
    send("m2", b'{"action":"delete","id":"z2"}')
    send("m2", b'{"action":"pause","type":"life"}')
    send("m2", b'{"action":"resume","type":"life"}')
    for payload in LIFECYCLE_ERRORS:
        send("m2", payload)
    clock.now += 6
    broker.tick(clock.now)
    flush()
    send("m2", b'{"action":"stats"}')


LIFECYCLE_ERRORS: list[bytes] = [
    b'{"action":"submit","id":1,"type":"t","delay":-1,"body":1}',
    b'{"action":"submit","id":1,"type":"t","retries":1.5,"body":1}',
    b'{"action":"submit","id":1,"type":"t","backoff":"x","body":1}',
    b'{"action":"submit","id":1,"type":"t","unique":1,"body":1}',
    b'{"action":"kick"}',
    b'{"action":"kick","id":"nobody"}',
    b'{"action":"kick","type":"t","limit":-1}',
    b'{"action":"delete","id":"nobody"}',
    b'{"action":"jobs","state":"bogus"}',
    b'{"action":"jobs","cursor":[1]}',
    b'{"action":"pause"}',
]


def main(argv: list[str]) -> int:
    frames = transcript()
    if "--frames" in argv:
        for name, frame in frames:
            print(name, frame[4:].decode("utf-8", "replace"))
    digest = hashlib.sha256(json.dumps([[n, f.hex()] for n, f in frames]).encode()).hexdigest()
    print(json.dumps({"frames": len(frames), "sha256": digest}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
