"""`JournalStore`: gloomd's journal file, an SQLite database in WAL mode.

The store keeps opaque per-job records keyed by job id, and per-type pause
records; the broker decides what a record holds, the store only keeps it.
It has no trio and no broker: the I/O layer calls `commit` once per pass of
the event loop from a worker thread (one commit at a time), and `open` and
`load` before the loop starts.

Why SQLite in WAL mode: a commit appends to the ``-wal`` file and fsyncs
that one file (``synchronous=FULL``), so one fsync makes a whole batch
durable (group commit); readers (the sqlite3 shell of a person looking at a
live journal) do not block the writer; and SQLite reuses freed pages itself,
so the file holds what is held, not what passed.  The settings, measured by
benchmarks/journal_store.py (``space`` and ``settings``; three runs on a
2-core VM, whose noise is larger than most differences below):

* ``auto_vacuum=NONE``: freed pages go on SQLite's freelist and new rows
  reuse them, which is all the "grows with what is held" rule needs: 1M
  jobs through at a depth of 10k leave the database at 1.02x its size at
  that depth (1.03x with random string ids).  INCREMENTAL gives the same
  ratio at no commit cost we could measure, but it shrinks the file only
  when someone runs ``PRAGMA incremental_vacuum``, a compaction step the
  daemon would have to schedule; we leave the file at its peak instead.
  To give a drained backlog's space back, ``VACUUM`` the journal of a
  stopped daemon with the sqlite3 shell: it rewrites only what is held
  (after 100k jobs drained: 23 MB to 0.02 MB in 0.01-0.03 s).
* ``wal_autocheckpoint`` at SQLite's 1,000 pages: the WAL stays near 4 MB.
  250 and 4,000 pages gave no steady difference in commit time (0.6-1.6 ms
  per commit of 100 with sync full, each way, run to run); each
  checkpoint runs in the committing thread after its commit, so it delays
  that batch's acks, not the loop.
* ``journal_size_limit`` of 8 MiB: above the WAL's steady 4.2-4.6 MB, so
  it does not truncate and regrow the file at every checkpoint (1 MiB
  does), yet a burst does not leave a large ``-wal`` behind: one commit of
  100k jobs writes a 23 MB WAL, which stays 23 MB without a limit and is
  cut to 8 MiB at the next checkpoint with it.
* SQLite's page cache is left at its default (2 MB): on a journal of 1M
  jobs, commits of 100 puts and 100 deletes of random ids took the same
  time with 2, 8 and 64 MB (median 2.4-3.4 ms, run to run); the OS page
  cache holds the file anyway.
* ``synchronous``: FULL for ``--sync full`` (fsync at every commit: nothing
  committed is lost on power loss), NORMAL for ``normal`` and ``off`` (in
  WAL mode: fsync only at checkpoints; a commit survives SIGKILL, as it
  sits in the OS page cache, but not power loss).  ``off`` differs only in
  the I/O layer, which then commits at least every 50 ms without holding
  acks; the store does not know the difference.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, TypedDict

from . import checks, schema
from .batch import Batch, JobRow, Snapshot
from .errors import JournalError, JournalWriteError
from .figures import CommitFigures, CommitHistogram

Sync = Literal["full", "normal", "off"]

SYNC_PRAGMA: Final[dict[str, str]] = {"full": "FULL", "normal": "NORMAL", "off": "NORMAL"}

#: How long a commit waits for a write lock someone else holds (a person's
#: sqlite3 shell in a write transaction) before it fails: one second of
#: held acks is already long, and a failed batch is reported at once.
BUSY_TIMEOUT_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class Tuning:
    """SQLite knobs; the defaults are the measured choice (see the module docstring).

    Kept as arguments so that the benchmark measures the store itself with
    other values.  `auto_vacuum` only applies when a file is created (SQLite
    fixes it then); the others apply at every open.
    """

    wal_autocheckpoint: int = 1000  # pages
    journal_size_limit: int = 8 << 20  # bytes
    auto_vacuum: Literal["none", "incremental"] = "none"


class Space(NamedTuple):
    """Where the journal's bytes are, for the benchmark and a curious operator.

    `pages` counts the database as the last commit left it (WAL included),
    so ``pages * page_size`` is the size the file has once checkpointed;
    `free_pages` are on SQLite's freelist, waiting for new rows.
    """

    file_bytes: int
    wal_bytes: int
    page_size: int
    pages: int
    free_pages: int

    @property
    def database_bytes(self) -> int:
        return self.pages * self.page_size


class JournalStats(TypedDict):
    """The ``journal`` object of the ``stats`` answer."""

    path: str
    sync: str
    bytes: int
    commits: int
    commit_ms_p99: float


class JournalStore:
    """One gloomd's journal file, open with every start-up check passed.

    Use from one thread at a time: `commit` may run in a worker thread (the
    connection is opened with ``check_same_thread=False``); two calls at once
    are a bug of the caller and raise RuntimeError rather than interleave.
    `stats` and `commit_histogram` never touch the connection, so the loop
    thread may call them while a commit runs.
    """

    def __init__(self, path: str, sync: Sync, conn: sqlite3.Connection, lock_fd: int) -> None:
        """Use `JournalStore.open`, which runs the checks."""
        self._path = path
        self._sync: Sync = sync
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd = lock_fd
        self._figures = CommitFigures()
        self._busy = threading.Lock()
        self._write_errors = 0

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str, sync: Sync = "full", *, tuning: Tuning = Tuning()) -> JournalStore:
        """Open (or create) the journal at `path` after every start-up check.

        Raises JournalError(reason) with the file's bytes unchanged when it
        is refused (see `checks` for the checks and their order).
        """
        if sync not in SYNC_PRAGMA:
            raise ValueError(f"sync is one of full, normal, off, not {sync!r}")
        admitted = checks.admit(path)
        try:
            conn = _connect(path, sync, tuning, admitted.fresh)
        except BaseException:
            os.close(admitted.lock_fd)
            raise
        return cls(path, sync, conn, admitted.lock_fd)

    # ------------------------------------------------------------ reading

    def load(self) -> Snapshot:
        """Every job row and pause record, read in one transaction.

        For replay, before the loop starts.  An unreadable file (damaged
        pages, say) raises JournalError: replay is part of the start.
        """
        with self._exclusive() as conn:
            try:
                conn.execute("BEGIN")
                try:
                    jobs: list[JobRow] = conn.execute(schema.SELECT_JOBS).fetchall()
                    paused = dict(conn.execute(schema.SELECT_PAUSED).fetchall())
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise JournalError(self._path, f"cannot read ({exc})") from None
        return Snapshot(jobs, paused)

    # ------------------------------------------------------------ writing

    def commit(self, batch: Batch) -> float:
        """Store `batch` in one transaction; returns the seconds it took.

        With ``sync="full"`` the batch is on disk when this returns.  On
        failure the transaction is rolled back (the journal is as before the
        batch) and JournalWriteError says why; the next batch is tried
        afresh.  An empty batch is not a commit (nothing is written).
        """
        with self._exclusive() as conn:
            if not batch:
                return 0.0
            start = time.perf_counter()
            try:
                conn.execute("BEGIN IMMEDIATE")
                if batch.deletes:
                    conn.executemany(schema.DELETE_JOB, [(key,) for key in batch.deletes])
                if batch.puts:
                    conn.executemany(
                        schema.UPSERT_JOB,
                        [(key, state, record) for key, (state, record) in batch.puts.items()],
                    )
                for type_key, record in batch.paused.items():
                    if record is None:
                        conn.execute(schema.DELETE_PAUSED, (type_key,))
                    else:
                        conn.execute(schema.UPSERT_PAUSED, (type_key, record))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._write_errors += 1
                _abandon(conn)
                raise JournalWriteError(_describe(exc)) from exc
            seconds = time.perf_counter() - start
        self._figures.observe(seconds)
        return seconds

    # ------------------------------------------------------------ figures

    @property
    def path(self) -> str:
        return self._path

    @property
    def sync(self) -> Sync:
        return self._sync

    @property
    def write_errors(self) -> int:
        """Batches that raised JournalWriteError since the store opened."""
        return self._write_errors

    def stats(self) -> JournalStats:
        """The ``journal`` object of ``stats``; reads no page of the database.

        `bytes` is the space the journal takes: the file and its ``-wal``.
        """
        return {
            "path": self._path,
            "sync": self._sync,
            "bytes": _size(self._path) + _size(self._path + "-wal"),
            "commits": self._figures.commits,
            "commit_ms_p99": self._figures.p99_ms(),
        }

    def space(self) -> Space:
        """The file's and the WAL's sizes and SQLite's page counts.

        Reads the connection: not while a commit runs (the rule of `commit`).
        """
        with self._exclusive() as conn:
            page_size, pages, free = (
                int(conn.execute(f"PRAGMA {name}").fetchone()[0])
                for name in ("page_size", "page_count", "freelist_count")
            )
        return Space(_size(self._path), _size(self._path + "-wal"), page_size, pages, free)

    def commit_histogram(self) -> CommitHistogram:
        """(bounds, counts, total) of commit seconds, for gloomd_journal_commit_seconds."""
        return self._figures.histogram()

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """Close the file, then drop the lock; waits for a commit under way.

        SQLite checkpoints the WAL into the file as the last connection
        closes and removes ``-wal``, so a stopped daemon's journal is one
        self-contained file, easy to copy.  Idempotent.
        """
        with self._busy:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                conn.close()
            finally:
                # Only now: closing the lock's descriptor while the
                # connection is open would drop SQLite's fcntl locks.
                os.close(self._lock_fd)

    def __enter__(self) -> JournalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ helpers

    def _exclusive(self) -> _Exclusive:
        return _Exclusive(self)


class _Exclusive:
    """Holds the store's busy lock around one call; refuses a second caller."""

    __slots__ = ("_store",)

    def __init__(self, store: JournalStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        if not store._busy.acquire(blocking=False):
            raise RuntimeError("the journal is used by two threads at once")
        if store._conn is None:
            store._busy.release()
            raise RuntimeError("the journal is closed")
        return store._conn

    def __exit__(self, *exc: object) -> None:
        self._store._busy.release()


def _connect(path: str, sync: Sync, tuning: Tuning, fresh: bool) -> sqlite3.Connection:
    """The read-write connection, set up; a fresh file gets gloomd's schema."""
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise JournalError(path, f"cannot open ({exc})") from None
    try:
        if fresh:
            _create(conn, tuning)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(path, f"cannot use WAL mode (journal_mode is {mode})")
        for pragma in (
            f"synchronous = {SYNC_PRAGMA[sync]}",
            f"wal_autocheckpoint = {int(tuning.wal_autocheckpoint)}",
            f"journal_size_limit = {int(tuning.journal_size_limit)}",
        ):
            conn.execute(f"PRAGMA {pragma}")
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise JournalError(path, f"cannot open ({exc})") from None
        raise
    return conn


def _create(conn: sqlite3.Connection, tuning: Tuning) -> None:
    """gloomd's schema and marks, in one transaction.

    WAL mode first: on an empty file it writes only the header page, and
    then the transaction that follows is atomic through the WAL, so a crash
    leaves either a blank database (adopted again at the next start) or a
    complete journal, never a file with gloomd's mark and no tables.
    """
    conn.execute(f"PRAGMA auto_vacuum = {tuning.auto_vacuum.upper()}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute(schema.SELECT_TABLES).fetchone() is not None:
            # Inspected blank a moment ago under our lock, but the sqlite3
            # shell does not honour our lock.
            raise sqlite3.IntegrityError("tables appeared while the journal was opened")
        for statement in schema.CREATE:
            conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _abandon(conn: sqlite3.Connection) -> None:
    """After a failed commit: roll back, then try to give the WAL's space back.

    SQLite rolls back by itself after some errors (SQLITE_FULL, SQLITE_IOERR),
    hence the check.  The checkpoint copies the committed frames into the
    main file and truncates ``-wal`` to nothing: on a full disk that frees
    the WAL's blocks (several MB), so deleting finished jobs, whose pages new
    rows then reuse, lets the journal go on without new space.  Best effort:
    its own failure changes nothing for the caller, who reports the commit's.
    """
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error:
        pass


def _describe(exc: sqlite3.Error) -> str:
    name: Any = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
