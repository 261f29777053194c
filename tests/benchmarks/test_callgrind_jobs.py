"""The callgrind workload drives a real server to the end, whatever the body."""

from __future__ import annotations

import pytest

from benchmarks.callgrind_jobs import body_json, run


@pytest.mark.parametrize(("size", "kind"), [(100, "string"), (65536, "string"), (4096, "object")])
def test_every_job_is_answered(size: int, kind: str) -> None:
    result = run(jobs=40, slaves=4, window=16, body=body_json(size, kind))
    assert result["done"] == 40
    assert result["acks"] == 40


def test_bodies_have_the_size_asked_for() -> None:
    assert len(body_json(100, "string")) == 100
    assert abs(len(body_json(65536, "object")) - 65536) < 64


def test_many_masters_each_keep_their_window_and_get_every_answer() -> None:
    result = run(jobs=300, slaves=4, window=3, body=body_json(100, "string"), n_masters=20)
    assert (result["done"], result["acks"]) == (300, 300)


def test_queued_memory_counts_every_job_and_a_plausible_size() -> None:
    from benchmarks.callgrind_jobs import queued_memory

    result = queued_memory(2000, body_json(100, "string"))
    assert result["answered"] == 1000 + 2 * 2000  # every submit acked: all were queued
    # A job holds at least its 100 B body and a record; far less than 4 KiB.
    assert 150 < result["traced_bytes_per_job"] < 4096
