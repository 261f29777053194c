"""stats() and commit_histogram(): the figures of the stats answer and of /metrics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gloomd.journal import COMMIT_BOUNDS, Batch, JournalStore, job_key
from gloomd.journal.figures import CommitFigures


def test_histogram_counts_per_bucket_with_an_inf_slot() -> None:
    figures = CommitFigures(bounds=(0.001, 0.01, 0.1))
    for seconds in (0.0002, 0.001, 0.002, 0.01, 0.05, 0.5, 3.0):
        figures.observe(seconds)
    bounds, counts, total = figures.histogram()
    assert bounds == (0.001, 0.01, 0.1)
    # le: a commit of exactly a bound counts in that bound's bucket; not cumulative.
    assert counts == (2, 2, 1, 2)
    assert total == pytest.approx(3.5632)
    assert figures.commits == 7


def test_bounds_must_ascend() -> None:
    with pytest.raises(ValueError):
        CommitFigures(bounds=(0.1, 0.01))
    with pytest.raises(ValueError):
        CommitFigures(bounds=(0.1, 0.1))


def test_p99_is_the_nearest_rank_of_the_recent_commits() -> None:
    figures = CommitFigures(window=100)
    assert figures.p99_ms() == 0.0
    for ms in range(100, 0, -1):
        figures.observe(ms / 1000)
    assert figures.p99_ms() == pytest.approx(99.0)
    for _ in range(100):  # the window moves on: old slow commits drop out
        figures.observe(0.002)
    assert figures.p99_ms() == pytest.approx(2.0)
    assert figures.commits == 200


def test_store_stats_and_histogram(tmp_path: Path) -> None:
    path = str(tmp_path / "j.db")
    with JournalStore.open(path, "full") as store:
        assert store.stats() == {
            "path": path,
            "sync": "full",
            "bytes": store.stats()["bytes"],
            "commits": 0,
            "commit_ms_p99": 0.0,
        }
        for n in range(20):
            store.commit(Batch({job_key(n): ("queued", b"x" * 200)}))
        stats = store.stats()
        assert set(stats) == {"path", "sync", "bytes", "commits", "commit_ms_p99"}
        assert stats["commits"] == 20
        assert stats["bytes"] == os.path.getsize(path) + os.path.getsize(path + "-wal")
        assert stats["bytes"] > 20 * 200
        bounds, counts, total = store.commit_histogram()
        assert bounds == COMMIT_BOUNDS and len(counts) == len(bounds) + 1
        assert sum(counts) == 20 and total > 0
        assert 0 < stats["commit_ms_p99"] <= 1000 * max(total, 0)
        assert stats["commit_ms_p99"] >= 1000 * total / 20 / 20  # not far below the mean
