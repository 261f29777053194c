"""The comparison table: ratios, medians of repeated runs, flagged runs."""

from __future__ import annotations

import pytest

from benchmarks.compare import render, summary

pytestmark = pytest.mark.timeout(10)


def run(system: str, workload: str, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {"system": system, "workload": workload, "lost": 0, "duplicates": 0,
                               "bad_bodies": 0, "unsent": 0, "deadline_hit": False}  # fmt: skip
    base.update(fields)
    return base


def rows(table: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]


def test_ratio_is_gloomd_over_each_peer() -> None:
    table = render([
        run("gloomd", "throughput", jobs_per_s=12000, server_cpu_us_per_job=50.0),
        run("gearmand", "throughput", jobs_per_s=8000, server_cpu_us_per_job=100.0),
        run("beanstalkd", "throughput", jobs_per_s=16000, server_cpu_us_per_job=40.0),
    ])  # fmt: skip
    header, jobs, cpu = rows(table)[:3]
    assert header == ["workload", "metric", "gloomd", "gearmand", "beanstalkd",
                      "gloomd/gearmand", "gloomd/beanstalkd"]  # fmt: skip
    assert jobs == ["throughput", "jobs/s ↑", "12,000", "8,000", "16,000", "1.50×", "0.75×"]
    assert cpu[1:] == ["server CPU µs/job ↓", "50.0", "100", "40.0", "0.50×", "1.25×"]


def test_median_of_repeats_and_flagged_runs() -> None:
    table = render([
        run("gloomd", "latency", p50_ms=0.9, jobs_per_s=1),
        run("gloomd", "latency", p50_ms=0.5, jobs_per_s=1),
        run("gloomd", "latency", p50_ms=0.7, jobs_per_s=1),
        run("gearmand", "latency", p50_ms=0.35, lost=3),
        {"system": "beanstalkd", "workload": "latency", "skipped": "beanstalkd is not installed"},
    ])  # fmt: skip
    p50 = rows(table)[1]
    assert p50[:5] == ["latency", "p50 ms ↓", "0.7", "0.35 !", "n/a"]
    assert "- latency / gearmand: incomplete: lost=3" in table
    assert "- latency / beanstalkd: beanstalkd is not installed" in table


def test_summary_names_the_headline_figures() -> None:
    line = run("gloomd", "deep-1k", submit_per_s=50000, drain_per_s=4000, rss_beyond_body_b=512)
    assert summary(line) == (
        "deep-1k / gloomd: submit jobs/s 50,000, drain jobs/s 4,000, "
        "server B/queued job beyond body 512"
    )
