"""commit(): one transaction per batch, last write wins, all or nothing."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gloomd.journal import (
    Batch,
    BatchBuilder,
    JournalStore,
    JournalWriteError,
    Snapshot,
    job_key,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JournalStore]:
    with JournalStore.open(str(tmp_path / "j.db"), "normal") as opened:
        yield opened


def rows(snapshot: Snapshot) -> dict[bytes, tuple[str, bytes]]:
    return {key: (state, record) for key, state, record in snapshot.jobs}


def test_upserts_deletes_and_pause_flags(store: JournalStore) -> None:
    b = BatchBuilder()
    for i in range(5):
        b.put(job_key(i), "queued", b"r%d" % i)
    b.put(job_key("5"), "delayed", b"s5")
    b.pause(b"resize", b'{"type":"resize"}')
    b.pause(b"mail", b'{"type":"mail"}')
    assert store.commit(b.take()) > 0
    b.put(job_key(1), "running", b"r1'")  # last write wins, across batches
    b.delete(job_key(2))
    b.delete(job_key(99))  # never stored: not an error
    b.resume(b"mail")
    b.resume(b"never-paused")
    store.commit(b.take())
    snap = store.load()
    assert rows(snap) == {
        b"i0": ("queued", b"r0"),
        b"i1": ("running", b"r1'"),
        b"i3": ("queued", b"r3"),
        b"i4": ("queued", b"r4"),
        b"s5": ("delayed", b"s5"),
    }
    assert snap.paused == {b"resize": b'{"type":"resize"}'}
    assert len(snap.jobs) == 5  # one row per key


def test_rows_survive_close_and_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "j.db")
    with JournalStore.open(path, "full") as store:
        store.commit(Batch({job_key("a"): ("dead", b"\x00\xff binary is fine")}, (), {b"t": b"1"}))
    with JournalStore.open(path, "full") as store:
        snap = store.load()
    assert rows(snap) == {b"sa": ("dead", b"\x00\xff binary is fine")}
    assert snap.paused == {b"t": b"1"}


def test_an_empty_batch_is_not_a_commit(store: JournalStore) -> None:
    assert store.commit(Batch()) == 0.0
    assert store.stats()["commits"] == 0


def inject_failure(path: str, table: str, key: bytes) -> sqlite3.Connection:
    """A trigger, added by another connection, that aborts the insert of `key`.

    The store's statements before that row in the same batch have run by
    then: the failure lands in the middle of the transaction.
    """
    column = "key" if table == "jobs" else "type"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute(
        f"CREATE TRIGGER injected BEFORE INSERT ON {table} WHEN NEW.{column} = x'{key.hex()}' "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    return other


@pytest.mark.parametrize("where", ["last put", "pause after the puts"])
def test_a_batch_is_all_or_nothing(store: JournalStore, where: str) -> None:
    first = BatchBuilder()
    for i in range(10):
        first.put(job_key(i), "queued", b"v1")
    first.pause(b"t", b"p1")
    store.commit(first.take())
    before = store.load()

    b = BatchBuilder()
    for i in range(5):
        b.delete(job_key(i))  # the deletes run first
    for i in range(5, 20):
        b.put(job_key(i), "running", b"v2")  # updates and new rows
    b.put(job_key("boom"), "queued", b"v2")  # the last put
    b.resume(b"t")
    b.pause(b"boom", b"p2")  # the last statement of all
    batch = b.take()
    table, key = ("jobs", b"sboom") if where == "last put" else ("paused", b"boom")
    other = inject_failure(store.path, table, key)
    with pytest.raises(JournalWriteError) as caught:
        store.commit(batch)
    assert "injected failure" in caught.value.reason
    assert store.load() == before
    assert store.write_errors == 1

    other.execute("DROP TRIGGER injected")
    other.close()
    store.commit(batch)  # usable again: the same batch now goes in whole
    after = store.load()
    assert rows(after) == {job_key(i): ("running", b"v2") for i in range(5, 20)} | {
        b"sboom": ("queued", b"v2")
    }
    assert after.paused == {b"boom": b"p2"}


def test_a_write_lock_held_elsewhere_fails_the_batch_not_the_store(store: JournalStore) -> None:
    store.commit(Batch({b"sa": ("queued", b"1")}))
    shell = sqlite3.connect(store.path, isolation_level=None)
    shell.execute("BEGIN IMMEDIATE")  # a person's sqlite3 shell, mid-transaction
    try:
        with pytest.raises(JournalWriteError) as caught:
            store.commit(Batch({b"sb": ("queued", b"2")}))
        assert caught.value.reason == "database is locked (SQLITE_BUSY)"
    finally:
        shell.execute("ROLLBACK")
        shell.close()
    store.commit(Batch({b"sb": ("queued", b"2")}))
    assert set(rows(store.load())) == {b"sa", b"sb"}


def test_a_reader_does_not_block_a_commit(store: JournalStore) -> None:
    # WAL: the sqlite3 shell may read a live journal while the daemon writes.
    store.commit(Batch({b"sa": ("queued", b"1")}))
    reader = sqlite3.connect(store.path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall() == [
        ("queued", 1)
    ]
    store.commit(Batch({b"sb": ("queued", b"2")}))  # while the reader's snapshot is open
    assert reader.execute("SELECT count(*) FROM jobs").fetchone() == (1,)  # its snapshot
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM jobs").fetchone() == (2,)
    reader.close()


def test_commit_from_a_worker_thread(store: JournalStore) -> None:
    # As the I/O layer does it: trio.to_thread.run_sync(store.commit, batch).
    with ThreadPoolExecutor(max_workers=1) as pool:
        for n in range(3):
            pool.submit(store.commit, Batch({job_key(n): ("queued", b"x")})).result(10)
    assert len(store.load().jobs) == 3


def test_two_callers_at_once_are_refused(store: JournalStore) -> None:
    held = store._busy  # what a commit under way in another thread holds
    assert held.acquire(blocking=False)
    try:
        with pytest.raises(RuntimeError, match="two threads"):
            store.commit(Batch({b"sa": ("queued", b"1")}))
        with pytest.raises(RuntimeError, match="two threads"):
            store.load()
    finally:
        held.release()


def test_close_waits_for_a_commit_under_way(store: JournalStore) -> None:
    held = store._busy
    assert held.acquire(blocking=False)  # a commit under way
    closed = threading.Event()

    def close() -> None:
        store.close()
        closed.set()

    closer = threading.Thread(target=close)
    closer.start()
    assert not closed.wait(0.2)  # bounded: close must still be waiting
    held.release()
    assert closed.wait(10)
    closer.join(10)


def test_a_closed_store(tmp_path: Path) -> None:
    path = str(tmp_path / "j.db")
    store = JournalStore.open(path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        store.commit(Batch({b"sa": ("queued", b"1")}))
    with JournalStore.open(path):  # the lock went with it
        pass


def test_sync_mode_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync"):
        JournalStore.open(str(tmp_path / "j.db"), "always")  # type: ignore[arg-type]
    assert not (tmp_path / "j.db").exists()


@pytest.mark.parametrize(("sync", "pragma"), [("full", 2), ("normal", 1), ("off", 1)])
def test_sync_modes_set_synchronous(tmp_path: Path, sync: str, pragma: int) -> None:
    with JournalStore.open(str(tmp_path / "j.db"), sync) as store:  # type: ignore[arg-type]
        conn = store._conn
        assert conn is not None
        assert conn.execute("PRAGMA synchronous").fetchone() == (pragma,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (0,)
        assert store.stats()["sync"] == sync
