"""Random broker actions with restarts at random points: the restored broker equals
the durable part of the one that stopped.

Sans-IO but for the store: a broker on fake clocks (tests/support/brokerkit)
with its journal effects (`gloomd.durable`) collected into a real
`JournalStore` in tmp_path, as the server's writer does; at a restart the
store is read back (`load`, `decode_snapshot`) and replayed into a fresh
broker (`restore`).  The comparison is every detached job's fields and
state (a running one as queued: what a restart makes of it), the dispatch
order of each type, the dead letters' order, the waiting jobs' links, kept
results and pause flags.  Seeded, so a failure replays.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from gloomd.durable import Durable
from gloomd.journal import BatchBuilder, JournalStore
from gloomd.replay import decode_snapshot, restore
from gloomd.state import DEAD, QUEUED, RUNNING, STATE_NAMES, WAITING, Peer
from tests.support.brokerkit import Kit

TYPES = ("a", "b")
#: The suite's size; GLOOMD_REPLAY_SEEDS=200 GLOOMD_REPLAY_STEPS=1200 runs about a
#: minute (it passed at 699071c).
SEEDS = int(os.environ.get("GLOOMD_REPLAY_SEEDS", "12"))
STEPS = int(os.environ.get("GLOOMD_REPLAY_STEPS", "400"))


def view(kit: Kit) -> dict[str, Any]:
    """The durable part of a broker, as a restart should rebuild it."""
    broker = kit.broker
    mono, wall = kit.clock.now, kit.wall.now
    jobs = {}
    parents: dict[Any, list[Any]] = {}
    for job in broker.jobs.values():
        for dependent in job.dependents or ():
            if dependent.state == WAITING and dependent.detached:
                parents.setdefault(dependent.id, []).append(job.id)
    for job in broker.jobs.values():
        if not job.detached:
            continue
        state = "queued" if job.state == RUNNING else STATE_NAMES[job.state]
        ready = round(wall + (job.ready_at - mono), 3) if job.ready_at else None
        jobs[repr(job.id)] = (
            job.type, job.priority, job.body, state, job.attempt, job.retries, job.retried,
            job.backoff, job.timeout, job.accepted, ready, job.final,
            sorted(map(repr, parents.get(job.id, []))),
        )  # fmt: skip

    def dispatch(t: str) -> list[str]:
        held = [
            j for j in broker.jobs.values()
            if j.detached and j.type == t and j.state in (QUEUED, RUNNING)
        ]  # fmt: skip
        return [repr(j.id) for j in sorted(held, key=lambda j: (-j.priority, j.seq))]

    order = {t: dispatch(t) for t in TYPES}
    dead = [repr(j.id) for j in sorted(
        (j for j in broker.jobs.values() if j.state == DEAD), key=lambda j: j.mark)]  # fmt: skip
    results = {
        repr(i): (frame, round(wall + (expires - mono), 3))
        for i, (expires, frame, _) in broker.stores.results.items()
    }
    paused = sorted(q.type for q in broker.types.values() if q.paused)
    return {"jobs": jobs, "order": order, "dead": dead, "results": results, "paused": paused}


def commit(kit: Kit, durable: Durable, store: JournalStore) -> None:
    builder = BatchBuilder()
    durable.collect(
        kit.broker.jobs, kit.broker.stores, kit.broker.types, builder, kit.wall.now, kit.clock.now
    )
    store.commit(builder.take())
    durable.close()


def fresh_kit(path: str, clock: float, wall: float) -> tuple[Kit, Durable, JournalStore]:
    kit = Kit(max_retries=1000, result_ttl=30.0)
    kit.clock.now, kit.wall.now = clock, wall
    store = JournalStore.open(path, "normal")
    restored = decode_snapshot(path, store.load())
    durable = Durable(None)
    kit.broker.journal = durable
    restore(kit.broker, restored, kit.wall.now, kit.clock.now)
    kit.broker.stores.dropped = durable.touched
    return kit, durable, store


@pytest.mark.parametrize("seed", range(SEEDS))
def test_restored_broker_equals_the_durable_part(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = str(tmp_path / "j.db")
    kit, durable, store = fresh_kit(path, 100.0, 1_700_000_000.0)
    masters: list[Peer] = []
    slaves: list[Peer] = []
    ids = 0
    restarts = 0
    for _ in range(STEPS):
        op = rng.random()
        if not masters or op < 0.04:
            masters.append(kit.master(f"m{len(masters)}"))
        elif op < 0.40:
            ids += 1
            live = [j.id for j in kit.broker.jobs.values() if j.detached and j.state != DEAD]
            extra: dict[str, Any] = {}
            if rng.random() < 0.7:
                extra["detach"] = True
            if rng.random() < 0.2:
                extra["delay"] = rng.choice((0.5, 3.0))
            if live and rng.random() < 0.2:
                extra["after"] = rng.sample(live, min(len(live), 2))
            if rng.random() < 0.3:
                extra["retries"] = rng.randint(0, 2)
            kit.submit(rng.choice(masters), rng.choice((ids, f"j{ids}")), rng.choice(TYPES),
                       rng.randint(0, 2), {"n": ids, "big": 2**70 + ids}, **extra)  # fmt: skip
        elif op < 0.48:
            slaves.append(kit.slave(rng.choice(TYPES), f"s{len(slaves)}"))
        elif op < 0.70 and slaves:
            slave = rng.choice(slaves)
            if slave.job is not None:  # type: ignore[attr-defined]
                kind = rng.random()
                if kind < 0.6:
                    kit.deliver(slave, {"action": "respond", "body": rng.randint(0, 9)})
                elif kind < 0.85:
                    kit.deliver(slave, {"action": "fail", "error": "ERROR", "reason": "x"})
                else:
                    kit.broker.disconnect(slave)
                    slaves.remove(slave)
        elif op < 0.74 and len(masters) > 1:
            master = masters.pop(rng.randrange(len(masters)))
            kit.broker.disconnect(master)
        elif op < 0.82:
            held = [j.id for j in kit.broker.jobs.values()]
            if held:
                action = rng.choice(("kick", "delete", "cancel"))
                kit.deliver(rng.choice(masters), {"action": action, "id": rng.choice(held)})
        elif op < 0.86:
            action = rng.choice(("pause", "resume"))
            kit.deliver(rng.choice(masters), {"action": action, "type": rng.choice(TYPES)})
        elif op < 0.95:
            kit.tick(rng.choice((0.1, 1.0, 5.0)))
        elif op < 0.98:
            commit(kit, durable, store)
        else:
            commit(kit, durable, store)
            before = view(kit)
            store.close()
            clock, wall = kit.clock.now, kit.wall.now
            kit, durable, store = fresh_kit(path, clock, wall)
            assert view(kit) == before
            masters, slaves = [], []
            restarts += 1
        for peer in [*masters, *slaves]:
            kit.out(peer)
    commit(kit, durable, store)
    before = view(kit)
    store.close()
    kit, durable, store = fresh_kit(path, kit.clock.now, kit.wall.now)
    assert view(kit) == before
    store.close()
