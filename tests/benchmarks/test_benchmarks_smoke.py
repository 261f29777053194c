"""The load generator end to end, for a few hundred jobs against real servers.

Each test runs the command line a user runs (``python -m benchmarks.loadgen``
or ``benchmarks/throughput.py``) and checks its JSON line: every job answered
once with its own body.  gearmand and beanstalkd are exercised only where
installed (``benchmarks/peers.sh --install``); otherwise those tests skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from benchmarks.latency_floor import compare, forwarder_latency
from benchmarks.servers import installed
from tests.support.daemon import spawn_gloomd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.timeout(60)


def loadgen(
    *args: str, script: str | None = None, timeout: float = 45
) -> tuple[int, dict[str, Any]]:
    cmd = [sys.executable, script] if script else [sys.executable, "-m", "benchmarks.loadgen"]
    done = subprocess.run(
        [*cmd, *args], cwd=ROOT, capture_output=True, timeout=timeout, check=False
    )
    lines = done.stdout.decode().strip().splitlines()
    assert lines, done.stderr.decode()[-2000:]
    return done.returncode, json.loads(lines[-1])


def assert_clean(line: dict[str, Any], jobs: int) -> None:
    assert "error" not in line, line
    assert line["completed"] == jobs, line
    assert (line["lost"], line["duplicates"], line["bad_bodies"], line["unsent"]) == (0, 0, 0, 0)
    assert line["worker_jobs"] == jobs
    assert line["jobs_per_s"] > 0
    assert 0 < line["p50_ms"] <= line["p99_ms"]
    assert line["server_cpu_s"] >= 0 and line["server_peak_rss_mb"] > 0


def test_gloomd_windowed_run_answers_every_job_once() -> None:
    rc, line = loadgen("--system", "gloomd", "--jobs", "400", "--window", "50", "--slaves", "3")
    assert rc == 0
    assert (line["system"], line["workload"], line["window"]) == ("gloomd", "throughput*", 50)
    assert_clean(line, 400)


def test_gloomd_deep_queue_reports_rates_and_memory() -> None:
    rc, line = loadgen("--system", "gloomd", "--workload", "deep-1k", "--jobs", "300")
    assert rc == 0
    assert_clean(line, 300)
    assert line["submit_per_s"] > 0 and line["drain_per_s"] > 0
    assert "rss_per_queued_job_b" in line


def test_throughput_script_latency_mode_uses_window_one() -> None:
    rc, line = loadgen("--mode", "latency", "--jobs", "200", script="benchmarks/throughput.py")
    assert rc == 0
    assert (line["workload"], line["window"]) == ("latency", 1)
    assert_clean(line, 200)


def test_attached_server_many_masters_in_two_processes() -> None:
    with spawn_gloomd() as d:
        rc, line = loadgen(
            "--system", "gloomd", "--connect", f"127.0.0.1:{d.master_port}:{d.slave_port}",
            "--server-pid", str(d.proc.pid), "--jobs", "300", "--masters", "6",
            "--window", "5", "--master-procs", "2",
        )  # fmt: skip
        assert d.proc.poll() is None  # an attached server is left running
    assert rc == 0
    assert_clean(line, 300)


def test_deadline_stops_a_run_whose_jobs_are_never_served() -> None:
    # Masters submit to one daemon while the workers wait on another: nothing
    # is ever answered, and the run must stop by itself and say so.
    with spawn_gloomd() as a, spawn_gloomd() as b:
        rc, line = loadgen(
            "--system", "gloomd", "--connect", f"127.0.0.1:{a.master_port}:{b.slave_port}",
            "--server-pid", str(a.proc.pid), "--jobs", "50", "--window", "10", "--deadline", "1.5",
        )  # fmt: skip
    assert rc == 1
    assert line["deadline_hit"] is True
    assert (line["completed"], line["lost"], line["unsent"]) == (0, 10, 40)


def test_latency_floor_compare_runs_every_contender_cleanly() -> None:
    """The yardstick behind the latency floor in benchmarks/README.md: both
    forwarders serve the generator's latency workload with every job answered."""
    summary = compare(rounds=1, jobs=100)
    names = [s["contender"] for s in summary]
    assert names[:3] == ["floor-epoll", "floor-trio", "gloomd"]
    assert ("beanstalkd" in names) == (installed("beanstalkd") is not None)
    for row in summary:
        assert row["p50_ms"] > 0 and len(row["p50_each"]) == 1
        assert (row["vs_beanstalkd"] is not None) == ("beanstalkd" in names)
    line = forwarder_latency(True, 200)
    assert line["window"] == 1
    assert_clean(line, 200)


@pytest.mark.parametrize("system", ["gearmand", "beanstalkd"])
def test_peer_round_trip(system: str) -> None:
    if installed(system) is None:
        pytest.skip(f"{system} is not installed (benchmarks/peers.sh --install)")
    rc, line = loadgen("--system", system, "--jobs", "300", "--window", "40", "--masters", "2")
    assert rc == 0
    assert_clean(line, 300)


def test_durable_benchmark_runs_each_installed_system_and_a_replay() -> None:
    configs = ["gloomd", "gloomd-full", "gloomd-off"]
    configs += [c for c, s in (("beanstalkd-f50", "beanstalkd"), ("gearmand-sqlite", "gearmand"))
                if installed(s)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.durable", "--jobs", "300", "--window", "50",
         "--rounds", "1", "--systems", ",".join(configs), "--replay", "2000"],
        cwd=ROOT, capture_output=True, timeout=55, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = [json.loads(x) for x in done.stdout.decode().splitlines() if x.startswith("{")]
    assert lines[0]["restored"] == 2000 and lines[0]["restore_s"] is not None
    runs = {line["config"]: line for line in lines[1:]}
    assert set(runs) == set(configs)
    for line in runs.values():
        assert (line["acked"], line["finished"]) == (300, 300), line
    assert runs["gloomd-full"]["commits"] >= 1 and runs["gloomd"]["commits"] is None
    assert runs["gloomd-full"]["written_bytes_per_job"] > 0


def test_cluster_of_two_daemons_spreads_the_load_and_counts_redis() -> None:
    """peers.sh's cluster workload (issue 16): masters and slaves spread over
    two daemons on one Redis, every job answered once, each process' CPU and
    Redis' calls per job reported."""
    if installed("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing under CI: .ci/install-redis installs it")
        pytest.skip("no redis-server (bash .ci/install-redis)")
    rc, line = loadgen(
        "--system", "gloomd-cluster2", "--workload", "cluster", "--quick", "--jobs", "400"
    )  # fmt: skip
    assert rc == 0, line
    assert (line["system"], line["slaves"], line["masters"]) == ("gloomd-cluster2", 8, 2)
    assert_clean(line, 400)
    # Both daemons served (each has a master and half the slaves), and Redis
    # ran the steps: at least a submit and a respond per job, pipelined.
    assert line["cpu_s_gloomd1"] > 0 and line["cpu_s_gloomd2"] > 0, line
    assert line["redis_fcalls_per_job"] >= 2, line
    assert line["redis_commands_per_job"] > line["redis_fcalls_per_job"], line
    assert 0 < line["redis_reads_per_job"] < line["redis_fcalls_per_job"], line
    assert line["server_command"].count("--cluster ") == 2
