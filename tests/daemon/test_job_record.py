"""The job record's rare fields live in one `JobRare`, made only when one is
set (issue 20: memory per queued job), and read the same either way."""

from __future__ import annotations

from gloomd.state import Job
from tests.support.brokerkit import Kit


def _job(k: Kit, job_id: str) -> Job:
    job: Job = k.broker.jobs[job_id]
    return job


def test_a_plain_queued_job_has_no_rare_fields_and_reads_their_defaults() -> None:
    k = Kit()
    m = k.master()
    k.submit(m, "a", "echo")
    k.submit(m, "b", "echo")
    job = _job(k, "a")
    assert job.rare is None
    assert (job.others, job.retries, job.retried, job.backoff, job.losses) == (
        None,
        None,
        0,
        None,
        0,
    )
    assert (job.mark, job.ready_at, job.final, job.waiting, job.dependents) == (
        0,
        0.0,
        None,
        0,
        None,
    )
    job.others = None  # what every answered job is told: still nothing made
    job.ready_at = 0.0
    job.losses = 0
    assert job.rare is None
    # One string per type: the queue's, not one per job.
    assert _job(k, "b").type is job.type is k.broker.types["echo"].type


def test_set_fields_are_kept_and_a_retry_copy_has_its_own() -> None:
    k = Kit()
    m = k.master()
    k.submit(m, "r", retries=2, backoff=1.5)
    job = _job(k, "r")
    assert job.rare is not None and (job.retries, job.backoff) == (2, 1.5)
    job.losses = 1
    copy = job.retry_copy(k.broker.types[job.key])
    job.losses = 5  # the orphan's later writes do not reach the job that goes on
    job.others = []
    assert (copy.losses, copy.others, copy.retries, copy.backoff) == (1, None, 2, 1.5)
    assert copy.rare is not job.rare


def test_a_type_that_is_not_a_string_keeps_its_own_spelling() -> None:
    k = Kit()
    m = k.master()
    k.submit(m, 1, {"a": 1, "b": 2})
    k.submit(m, 2, {"b": 2, "a": 1})  # the same queue (canonical key), spelled otherwise
    assert list(_job(k, 2).type) == ["b", "a"]
    assert _job(k, 1).key is _job(k, 2).key
