"""SIGKILL right after commit() returns: the batch is there on reopen.

The child commits batch after batch and answers after each commit returns;
the test kills it with SIGKILL as soon as it has read the answer of batch
K, while the child is already inside the next commits.  On reopen the
journal must hold batches 1..M exactly, for some M >= K: nothing committed
is lost, and the batch the kill cut short is absent, not half there.
(SIGKILL leaves the OS page cache alone, so `normal` survives it as `full`
does; what `full` adds, an fsync per commit, only shows on power loss.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gloomd.journal import JournalStore, Tuning, job_id_of

from .childstore import ChildStore, record_of

SIZE = 40  # jobs per batch
BATCHES = 400


@pytest.mark.parametrize("sync", ["full", "normal"])
@pytest.mark.parametrize("kill_after", [1, 7, 150])
def test_sigkill_after_commit(tmp_path: Path, sync: str, kill_after: int) -> None:
    path = tmp_path / "j.db"
    with ChildStore() as child:
        # A small checkpoint interval so that kills also land around checkpoints.
        tuning = {"wal_autocheckpoint": 50}
        assert child.call(op="open", path=str(path), sync=sync, tuning=tuning) == {"ok": True}
        child.send(op="commit_loop", batches=BATCHES, size=SIZE)
        for n in range(1, kill_after + 1):
            assert child.read() == {"committed": n, "ok": True, "seconds": pytest.approx(0, abs=5)}
        child.kill()

    with JournalStore.open(str(path), tuning=Tuning(wal_autocheckpoint=50)) as store:
        jobs = store.load().jobs
    ids = sorted(int(job_id_of(key)) for key, _, _ in jobs)
    assert len(ids) % SIZE == 0 and ids  # whole batches only
    last = len(ids) // SIZE
    assert last >= kill_after  # every batch acknowledged before the kill
    assert ids == list(range(SIZE, (last + 1) * SIZE))  # batches 1..last, nothing else
    for key, state, record in jobs:
        assert state == "queued" and record == record_of(int(job_id_of(key)), 100)
