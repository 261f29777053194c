"""A full disk at run time: the batch fails whole, the store goes on.

The disk is a file size limit the test sets on a child process
(RLIMIT_FSIZE, with SIGXFSZ ignored, so a write past it fails with EFBIG
as a write to a full disk fails with ENOSPC).  No root, no mount, and the
limit is per process, so nothing else on the machine is touched.
"""

from __future__ import annotations

from pathlib import Path

from gloomd.journal import JournalStore, job_key

from .childstore import ChildStore, digest, record_of

LIMIT = 1 << 20  # bytes per file; the WAL reaches it near 2,000 jobs
SIZE = 200  # bytes per record, like a job with a 100-byte body


def expected(ids: range | list[int]) -> str:
    return digest([(job_key(i), "queued", record_of(i, SIZE)) for i in ids])


def test_full_disk(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with ChildStore() as child:
        assert child.call(op="open", path=str(path), sync="full") == {"ok": True}
        assert child.call(op="fill", first=0, count=100, size=SIZE, batch=100)["ok"]
        assert child.call(op="fsize", limit=LIMIT) == {"ok": True}

        # Fill until a commit fails: it fails as a JournalWriteError with SQLite's reason.
        full = child.call(op="fill", first=100, count=100_000, size=SIZE, batch=100)
        assert full["error"] == "JournalWriteError"
        assert full["reason"] in (
            "disk I/O error (SQLITE_IOERR_WRITE)",
            "database or disk is full (SQLITE_FULL)",
        )
        stored = 100 + full["stored"]
        assert 1_000 < stored < 10_000
        # All or nothing: every batch before the failure, none of the failed one.
        loaded = child.call(op="load")
        assert loaded == {"ok": True, "jobs": stored, "digest": expected(range(stored))}

        # Deleting finished jobs needs no new space: the failure gave the WAL's
        # blocks back (a truncating checkpoint), so the delete goes in...
        gone = stored // 2
        assert child.call(op="commit", deletes=list(range(gone)))["ok"]
        # ...and new jobs reuse the freed pages until the limit bites again.
        more = child.call(op="fill", first=stored, count=100_000, size=SIZE, batch=100)
        assert more["error"] == "JournalWriteError" and more["stored"] >= 500
        held = list(range(gone, stored + more["stored"]))
        assert child.call(op="load")["digest"] == expected(held)
        assert path.stat().st_size <= LIMIT

        # Room again: the batch that failed goes in as it is, and all is there.
        assert child.call(op="fsize", limit=None) == {"ok": True}
        first_failed = stored + more["stored"]
        assert child.call(op="fill", first=first_failed, count=100, size=SIZE, batch=100)["ok"]
        held += list(range(first_failed, first_failed + 100))
        assert child.call(op="load")["digest"] == expected(held)
        assert child.finish() == 0

    with JournalStore.open(str(path)) as store:
        assert digest(store.load().jobs) == expected(held)
