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
