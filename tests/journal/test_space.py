"""The file grows with what is held, not with what passed.

50,000 jobs go through at a depth of 2,000 (each batch stores 100 new jobs
and deletes the 100 oldest): the journal must stay under twice its size at
that depth.  A store that kept the finished jobs, or never reused their
pages, would end 25 times larger.  (The benchmark runs 1M through 10k.)

Sizes are the database's own (`Space.database_bytes`: the size of the file
once the WAL is checkpointed into it), since at this depth the rows may
still sit in the WAL; the WAL is bounded on its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from gloomd.journal import Batch, JournalStore, job_key

from .childstore import record_of

DEPTH = 2_000
THROUGH = 50_000
PER_BATCH = 100
WAL_PAGES = 1000  # Tuning().wal_autocheckpoint


def test_the_file_holds_what_is_held(tmp_path: Path) -> None:
    path = str(tmp_path / "j.db")
    at_depth = largest = largest_wal = 0
    with JournalStore.open(path, "normal") as store:
        for first in range(0, THROUGH, PER_BATCH):
            puts = {
                job_key(i): ("queued", record_of(i, 200)) for i in range(first, first + PER_BATCH)
            }
            old = first - DEPTH
            deletes = {job_key(i) for i in range(old, old + PER_BATCH)} if old >= 0 else set()
            store.commit(Batch(puts, deletes))
            space = store.space()
            if first + PER_BATCH == DEPTH:
                at_depth = space.database_bytes
            largest = max(largest, space.database_bytes, space.file_bytes)
            largest_wal = max(largest_wal, space.wal_bytes)
        assert len(store.load().jobs) == DEPTH
        final = store.space()
    assert at_depth > DEPTH * 200  # the rows, and little else
    assert largest < 2 * at_depth, (largest, at_depth)
    assert final.free_pages < final.pages // 2  # freed pages were taken again
    # The WAL starts over after each checkpoint (every 1,000 pages): bounded too.
    assert largest_wal < (WAL_PAGES + 200) * (final.page_size + 24)
    assert os.path.getsize(path) == final.database_bytes  # closing checkpointed it all
