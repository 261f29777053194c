"""The journal store's own figures (issue 13): load, group commit, space, settings.

    python -m benchmarks.journal_store                 # every section (~2 minutes)
    python -m benchmarks.journal_store --quick         # small sizes (~15 s)
    python -m benchmarks.journal_store load commit     # chosen sections
    python -m benchmarks.journal_store --dir /var/tmp  # where the files go

Sections:

* ``load``: open (every start-up check) and `load()` of a journal of 100k
  and 1M queued jobs, records of ~200 B (a job with a 100 B body), page
  cache warm; beside it, decoding every record with orjson, the least that
  replay does with each row, so the load's share of the 10 s replay
  budget for 1M jobs shows.
* ``commit``: `commit()` of batches of 1, 10, 100 and 1,000 new jobs with
  ``--sync full`` and ``normal``: ms per commit (median, p99) and jobs/s.
* ``space``: 1M jobs through at a depth of 10k (batches of 100: store 100
  new jobs, delete the 100 oldest): the database at that depth, its
  largest and its final size, the ratio (target < 2), the WAL's largest;
  with sequential integer ids and with random string ids.
* ``settings``: the measurements behind the store's SQLite settings: table
  layout (rowid + key index against WITHOUT ROWID), auto_vacuum (none
  against incremental), journal_size_limit and wal_autocheckpoint.

Every file is made fresh in a temporary directory and removed after.
The figures recorded in store.py and schema.py come from this script.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from gloomd.journal import Batch, JournalStore, Tuning, job_key
from gloomd.journal import schema as journal_schema

SECTIONS = ("load", "commit", "space", "settings")
BODY = "x" * 100


def record(job_id: int, priority: int = 0) -> bytes:
    """A record shaped like the broker's: about 200 bytes with a 100-byte body."""
    return orjson.dumps(
        {
            "id": job_id,
            "type": "echo",
            "priority": priority,
            "body": BODY,
            "attempt": 0,
            "accepted": 1733400000.123456 + job_id,
        }
    )


def int_ids() -> Iterator[bytes]:
    n = 0
    while True:
        yield job_key(n)
        n += 1


def random_ids(seed: int = 13) -> Iterator[bytes]:
    rng = random.Random(seed)
    while True:
        yield job_key(f"{rng.getrandbits(128):032x}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


class Scratch:
    """A fresh journal path per measurement, in one temporary directory."""

    def __init__(self, base: str | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gloomd-journal-bench-", dir=base))
        self.n = 0

    def path(self) -> str:
        self.n += 1
        return str(self.dir / f"j{self.n}.db")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def fill(store: JournalStore, count: int, per_batch: int = 10_000) -> None:
    for first in range(0, count, per_batch):
        ids = range(first, min(count, first + per_batch))
        store.commit(Batch({job_key(i): ("queued", record(i, i % 3)) for i in ids}))


# ---------------------------------------------------------------- load


def section_load(scratch: Scratch, quick: bool) -> None:
    print("== load: open + load() of N queued jobs (records ~200 B), page cache warm")
    print(
        f"{'jobs':>9} {'file MB':>8} {'B/job':>6} {'open s':>7} {'load s':>7} "
        f"{'rows/s':>10} {'decode s':>9}  load share of 10 s"
    )
    for count in (10_000, 100_000) if quick else (100_000, 1_000_000):
        path = scratch.path()
        with JournalStore.open(path, "normal") as store:
            fill(store, count)
        size = os.path.getsize(path)
        opens, loads, decodes = [], [], []
        for _ in range(3):
            t0 = time.perf_counter()
            store = JournalStore.open(path, "normal")
            t1 = time.perf_counter()
            snapshot = store.load()
            t2 = time.perf_counter()
            decoded = [orjson.loads(rec) for _, _, rec in snapshot.jobs]
            t3 = time.perf_counter()
            store.close()
            assert len(snapshot.jobs) == count and len(decoded) == count
            opens.append(t1 - t0)
            loads.append(t2 - t1)
            decodes.append(t3 - t2)
            del snapshot, decoded
        load_s = statistics.median(loads)
        print(
            f"{count:>9,} {size / 1e6:>8.1f} {size / count:>6.0f} "
            f"{statistics.median(opens):>7.3f} {load_s:>7.3f} {count / load_s:>10,.0f} "
            f"{statistics.median(decodes):>9.3f}  "
            f"{100 * load_s / 10 * 1_000_000 / count:.1f}% (scaled to 1M)"
        )
        os.unlink(path)


# ---------------------------------------------------------------- commit


def section_commit(scratch: Scratch, quick: bool) -> None:
    print("== commit: one transaction of K new jobs; ms per commit and jobs/s")
    print(f"{'sync':>6} {'K':>5} {'commits':>8} {'median ms':>10} {'p99 ms':>8} {'jobs/s':>10}")
    budget = 0.5 if quick else 2.0
    for sync in ("full", "normal"):
        for per in (1, 10, 100, 1000):
            path = scratch.path()
            with JournalStore.open(path, sync) as store:
                fill(store, 10_000)  # a journal that holds something
                times: list[float] = []
                next_id = 10_000
                deadline = time.perf_counter() + budget
                while (time.perf_counter() < deadline or len(times) < 20) and len(times) < 20_000:
                    ids = range(next_id, next_id + per)
                    next_id += per
                    batch = Batch({job_key(i): ("queued", record(i)) for i in ids})
                    times.append(store.commit(batch))
            median = statistics.median(times)
            print(
                f"{sync:>6} {per:>5} {len(times):>8} {median * 1e3:>10.3f} "
                f"{percentile(times, 0.99) * 1e3:>8.3f} {per / statistics.mean(times):>10,.0f}"
            )
            os.unlink(path)


# ---------------------------------------------------------------- space


def through(
    store: JournalStore, count: int, depth: int, ids: Iterator[bytes], per: int = 100
) -> dict[str, float]:
    """`count` jobs through at `depth`; sizes from `Space` (the file once checkpointed)."""
    live: list[bytes] = []
    at_depth = 0
    largest = largest_wal = 0
    times: list[float] = []
    stored = 0
    sample_every = max(1, count // per // 200)
    batches = 0
    while stored < count:
        keys = [next(ids) for _ in range(per)]
        live.extend(keys)
        stored += per
        gone = live[:-depth] if len(live) > depth else []
        del live[: len(gone)]
        times.append(store.commit(Batch({k: ("queued", record(0)) for k in keys}, set(gone))))
        batches += 1
        if not at_depth and len(live) >= depth:
            at_depth = store.space().database_bytes
        if batches % sample_every == 0:
            space = store.space()
            largest = max(largest, space.database_bytes, space.file_bytes)
            largest_wal = max(largest_wal, space.wal_bytes)
    final = store.space()
    largest = max(largest, final.database_bytes)
    return {
        "at_depth": at_depth,
        "largest": largest,
        "final": final.database_bytes,
        "ratio": largest / at_depth,
        "wal": max(largest_wal, final.wal_bytes),
        "free_pages": final.free_pages,
        "commit_ms": statistics.mean(times) * 1e3,
        "commit_p99_ms": percentile(times, 0.99) * 1e3,
    }


def print_through(label: str, r: dict[str, float], seconds: float) -> None:
    print(
        f"{label:<34} {r['at_depth'] / 1e6:>7.2f} {r['largest'] / 1e6:>8.2f} "
        f"{r['final'] / 1e6:>7.2f} {r['ratio']:>6.2f} {r['wal'] / 1e6:>7.2f} "
        f"{r['commit_ms']:>7.3f} {r['commit_p99_ms']:>7.3f} {seconds:>6.1f}"
    )


THROUGH_HEADER = (
    f"{'':<34} {'depth MB':>7} {'largest':>8} {'final':>7} {'ratio':>6} "
    f"{'WAL MB':>7} {'ms/com':>7} {'p99 ms':>7} {'sec':>6}"
)


def section_space(scratch: Scratch, quick: bool) -> None:
    count, depth = (100_000, 2_000) if quick else (1_000_000, 10_000)
    print(
        f"== space: {count:,} jobs through at a depth of {depth:,}, 100 per commit, "
        "sync normal (target: largest < 2x the size at depth)"
    )
    print(THROUGH_HEADER)
    for name, ids in (("integer ids", int_ids()), ("random string ids", random_ids())):
        path = scratch.path()
        t0 = time.perf_counter()
        with JournalStore.open(path, "normal") as store:
            result = through(store, count, depth, ids)
        print_through(name, result, time.perf_counter() - t0)
        os.unlink(path)


# ---------------------------------------------------------------- settings


def raw_layout(path: str, without_rowid: bool) -> sqlite3.Connection:
    """The store's table, or the same keyed by the job key, for the layout comparison."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    if without_rowid:
        conn.execute(
            "CREATE TABLE jobs (key BLOB PRIMARY KEY, state TEXT NOT NULL, "
            "record BLOB NOT NULL) WITHOUT ROWID"
        )
    else:
        conn.execute(journal_schema.CREATE[0])
    return conn


def raw_through(
    conn: sqlite3.Connection, path: str, count: int, depth: int, ids: Iterator[bytes]
) -> dict[str, float]:
    live: list[bytes] = []
    at_depth = largest = 0
    times = []
    stored = 0
    while stored < count:
        keys = [next(ids) for _ in range(100)]
        live.extend(keys)
        stored += 100
        gone = live[:-depth] if len(live) > depth else []
        del live[: len(gone)]
        t = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(journal_schema.DELETE_JOB, [(k,) for k in gone])
        conn.executemany(journal_schema.UPSERT_JOB, [(k, "queued", record(0)) for k in keys])
        conn.execute("COMMIT")
        times.append(time.perf_counter() - t)
        pages = conn.execute("PRAGMA page_count").fetchone()[0] * 4096
        if not at_depth and len(live) >= depth:
            at_depth = pages
        largest = max(largest, pages)
    return {
        "at_depth": at_depth,
        "largest": largest,
        "final": pages,
        "ratio": largest / at_depth,
        "wal": os.path.getsize(path + "-wal"),
        "commit_ms": statistics.mean(times) * 1e3,
        "commit_p99_ms": percentile(times, 0.99) * 1e3,
    }


def section_settings(scratch: Scratch, quick: bool) -> None:
    count, depth = (50_000, 2_000) if quick else (200_000, 10_000)
    print(f"== settings: layout, {count:,} through at depth {depth:,}, sync normal")
    print(THROUGH_HEADER)
    for without_rowid in (False, True):
        for name, make_ids in (("int", int_ids), ("random", random_ids)):
            path = scratch.path()
            conn = raw_layout(path, without_rowid)
            t0 = time.perf_counter()
            result = raw_through(conn, path, count, depth, make_ids())
            conn.close()
            label = ("WITHOUT ROWID" if without_rowid else "rowid + key index") + f", {name} ids"
            print_through(label, result, time.perf_counter() - t0)
            os.unlink(path)

    print(f"== settings: auto_vacuum, {count:,} through at depth {depth:,}")
    print(THROUGH_HEADER)
    for vacuum in ("none", "incremental"):
        for name, make_ids in (("int", int_ids), ("random", random_ids)):
            path = scratch.path()
            t0 = time.perf_counter()
            tuning = Tuning(auto_vacuum=vacuum)
            with JournalStore.open(path, "normal", tuning=tuning) as store:
                result = through(store, count, depth, make_ids())
            print_through(f"auto_vacuum={vacuum}, {name} ids", result, time.perf_counter() - t0)
            os.unlink(path)

    backlog = 20_000 if quick else 100_000
    print(
        f"== settings: auto_vacuum after a backlog of {backlog:,} jobs drained "
        "(file MB after close), and what giving the space back takes"
    )
    print(f"{'auto_vacuum':>12} {'peak MB':>8} {'drained MB':>11}  giving it back")
    for vacuum in ("none", "incremental"):
        path = scratch.path()
        tuning = Tuning(auto_vacuum=vacuum)  # type: ignore[arg-type]
        with JournalStore.open(path, "normal", tuning=tuning) as store:
            fill(store, backlog, per_batch=1_000)
            peak = store.space().database_bytes
            for first in range(0, backlog, 1_000):
                store.commit(Batch({}, {job_key(i) for i in range(first, first + 1_000)}))
        drained = os.path.getsize(path)
        # Giving the space back is a step someone runs: PRAGMA incremental_vacuum
        # where the file allows it, a full VACUUM (a rewrite) where it does not.
        step = "PRAGMA incremental_vacuum" if vacuum == "incremental" else "VACUUM"
        t0 = time.perf_counter()
        conn = sqlite3.connect(path, isolation_level=None)
        if vacuum == "incremental":
            # Python's sqlite3 steps a statement without result columns once, and
            # each step of incremental_vacuum frees one page (the sqlite3 shell
            # steps it to the end): step it by hand, in one transaction.
            conn.execute("BEGIN")
            while conn.execute("PRAGMA freelist_count").fetchone()[0]:
                conn.execute(step)
            conn.execute("COMMIT")
        else:
            conn.execute(step)
        conn.close()  # the last connection: checkpointed into the file
        seconds = time.perf_counter() - t0
        shrink = f"{step}: {os.path.getsize(path) / 1e6:.2f} MB in {seconds:.3f} s"
        print(f"{vacuum:>12} {peak / 1e6:>8.2f} {drained / 1e6:>11.2f}  {shrink}")
        os.unlink(path)

    burst = 20_000 if quick else 100_000
    print(
        f"== settings: journal_size_limit: the WAL after one pass that stores {burst:,} jobs, "
        "then 50 commits of 100 (MB), and ms per commit of 100 in steady state"
    )
    print(
        f"{'limit':>10} {'WAL after burst':>16} {'WAL after':>10} {'ms/commit':>10} {'p99 ms':>7}"
    )
    for limit in (-1, 1 << 20, 8 << 20):
        path = scratch.path()
        with JournalStore.open(path, "normal", tuning=Tuning(journal_size_limit=limit)) as store:
            fill(store, burst, per_batch=burst)
            after_burst = store.space().wal_bytes
            result = through(store, 200_000 if not quick else 30_000, 5_000, int_ids())
            wal_after = store.space().wal_bytes
        shown = "none" if limit < 0 else f"{limit >> 20} MiB"
        print(
            f"{shown:>10} {after_burst / 1e6:>16.2f} {wal_after / 1e6:>10.2f} "
            f"{result['commit_ms']:>10.3f} {result['commit_p99_ms']:>7.3f}"
        )
        os.unlink(path)

    print("== settings: wal_autocheckpoint, sync full, commits of 100 new jobs at depth 10k")
    print(f"{'pages':>6} {'ms/commit':>10} {'p99 ms':>7} {'max ms':>7} {'WAL MB':>7}")
    for pages in (250, 1000, 4000):
        path = scratch.path()
        with JournalStore.open(path, "full", tuning=Tuning(wal_autocheckpoint=pages)) as store:
            times: list[float] = []
            ids = int_ids()
            live: list[bytes] = []
            for _ in range(500 if quick else 3000):
                keys = [next(ids) for _ in range(100)]
                live.extend(keys)
                gone = live[:-10_000] if len(live) > 10_000 else []
                del live[: len(gone)]
                times.append(
                    store.commit(Batch({k: ("queued", record(0)) for k in keys}, set(gone)))
                )
            wal = store.space().wal_bytes
        print(
            f"{pages:>6} {statistics.mean(times) * 1e3:>10.3f} "
            f"{percentile(times, 0.99) * 1e3:>7.3f} {max(times) * 1e3:>7.3f} {wal / 1e6:>7.2f}"
        )
        os.unlink(path)


RUNNERS: dict[str, Callable[[Scratch, bool], None]] = {
    "load": section_load,
    "commit": section_commit,
    "space": section_space,
    "settings": section_settings,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sections", nargs="*", choices=[*SECTIONS, []], default=[])
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--dir", default=None, help="directory for the files (default: $TMPDIR)")
    args = ap.parse_args(argv)
    print(f"sqlite {sqlite3.sqlite_version}, python {sys.version.split()[0]}")
    scratch = Scratch(args.dir)
    try:
        for name in args.sections or SECTIONS:
            t0 = time.perf_counter()
            RUNNERS[name](scratch, args.quick)
            print(f"   ({name}: {time.perf_counter() - t0:.1f} s)\n", flush=True)
    finally:
        scratch.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
