"""The cluster engine's figures (issue 16): what one job costs Redis, what
one Redis does on this machine, and jobs/s through 1 and 2 engines.

    python -m benchmarks.cluster_engine            # every section (~1 minute)
    python -m benchmarks.cluster_engine --quick    # small counts (~15 s)
    python -m benchmarks.cluster_engine redis cost # chosen sections

Sections:

* ``redis``: redis-benchmark against a fresh redis-server (no persistence):
  ops/s of the commands the library uses, one client at a time and 50
  clients, with and without pipelining: the ceiling one Redis sets.
* ``latency``: one step's round trip through coredis on trio (an FCALL of
  `renew`), against a PING through coredis and a raw RESP PING written on a
  trio socket: what the client library costs per round trip.
* ``cost``: N jobs through one engine (submit, delivery to an idle slave,
  respond, result): Redis commands per job from INFO commandstats (the
  FCALLs the daemon sends and the commands they run inside Redis), round
  trips per job from the engine's counters, Redis CPU per job.
* ``engines``: jobs/s with 1 and 2 engines (each a process: a daemon's
  worth of masters and slaves, submits and responds pipelined per round as
  the ClusterBroker will send them), on one Redis; with 2, every job may
  cross daemons.  Redis and engine CPU per job beside it.

Each section starts its own redis-server in a temporary directory and stops
it after.  Loops are bounded in count and time.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks.cluster_redis import RedisServer
from gloomd.cluster.engine import ClusterEngine
from gloomd.cluster.settings import ClusterSettings
from gloomd.cluster.steps import Delivery, JobSpec, Step, fn

SECTIONS = ("redis", "latency", "cost", "engines")
#: Each engine's peers: slaves answering at once, and jobs kept in flight.
SLAVES = 32
WINDOW = 256
#: Runs of each engines figure (the median is shown: this machine is shared).
REPEAT = 3
#: Seconds any one measured run may last.
RUN_LIMIT = 20.0


def start_redis(directory: Path) -> RedisServer:
    server = RedisServer(directory)
    server.start()
    return server


def commandstats(server: RedisServer) -> dict[str, tuple[int, int]]:
    """(calls, microseconds) per command since the last CONFIG RESETSTAT;
    commands run by functions count too (and inside their FCALL's time)."""
    stats = {}
    for line in server.cli("INFO", "commandstats").splitlines():
        match = re.match(r"cmdstat_([a-z|_]+):calls=(\d+),usec=(\d+)", line)
        if match:
            stats[match.group(1)] = (int(match.group(2)), int(match.group(3)))
    return stats


def redis_cpu(server: RedisServer) -> float:
    info = server.cli("INFO", "cpu")
    found = dict(re.findall(r"(used_cpu_(?:sys|user)):([\d.]+)", info))
    return float(found["used_cpu_sys"]) + float(found["used_cpu_user"])


# ---------------------------------------------------------------- redis


def section_redis(quick: bool, base: Path) -> None:
    server = start_redis(base / "redis")
    try:
        n = 20_000 if quick else 100_000
        tests = "ping,incr,lpush,lpop,zadd,zpopmin,hset"
        print(f"## redis-benchmark (-n {n}), requests/s")
        for label, extra in (
            ("1 client", ["-c", "1"]),
            ("50 clients", ["-c", "50"]),
            ("50 clients, -P 16", ["-c", "50", "-P", "16"]),
        ):
            done = subprocess.run(
                [
                    "redis-benchmark",
                    "-p",
                    str(server.port),
                    "-q",
                    "-n",
                    str(n),
                    "-t",
                    tests,
                    *extra,
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            figures = re.findall(r"([A-Z_]+): ([\d.]+) requests per second", done.stdout)
            row = ", ".join(f"{name} {float(value):,.0f}" for name, value in figures)
            print(f"- {label}: {row}")
    finally:
        server.stop()


# ---------------------------------------------------------------- latency


async def _latency(server: RedisServer, count: int) -> None:
    settings = ClusterSettings(server.url, name="bench-latency")
    async with trio.open_nursery() as nursery:
        engine: ClusterEngine = await nursery.start(ClusterEngine(settings).run)
        ops = engine._ops
        assert ops is not None
        renew = Step(fn("renew"), (5000, 0, 0))
        figures = {}
        for label, call in (
            ("FCALL renew (coredis)", lambda: engine.call(renew)),
            ("PING (coredis)", lambda: ops.ping()),
        ):
            await call()
            start = time.perf_counter()
            for _ in range(count):
                await call()
            figures[label] = (time.perf_counter() - start) / count
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        start = time.perf_counter()
        for _ in range(count):
            await stream.send_all(b"*1\r\n$4\r\nPING\r\n")
            await stream.receive_some(64)
        figures["PING (raw RESP on a trio socket)"] = (time.perf_counter() - start) / count
        await stream.aclose()
        for label, seconds in figures.items():
            print(f"- {label}: {seconds * 1e6:.0f} us per round trip")
        nursery.cancel_scope.cancel()


def section_latency(quick: bool, base: Path) -> None:
    server = start_redis(base / "latency")
    try:
        print("## one round trip, sequential")
        trio.run(_latency, server, 500 if quick else 3000)
    finally:
        server.stop()


# ---------------------------------------------------------------- the driver


class Driver:
    """A daemon's worth of peers on one engine: `masters` submit, `slaves`
    answer at once; each round sends every ready respond and the submits
    that keep `window` jobs in flight, in one pipeline (what the
    ClusterBroker's runner does with a reactor batch)."""

    def __init__(
        self, engine: ClusterEngine, tag: str, jobs: int, slaves: int, window: int, engines: int
    ) -> None:
        self.engine = engine
        self.engines = engines
        self.tag = tag
        self.jobs = jobs
        self.slaves = slaves
        self.window = window
        self.submitted = 0
        self.completed = 0
        self.ready: list[int] = []  # slaves holding a job, to answer
        self.wake = trio.Event()
        self.rounds = 0
        self.crossed = 0  # jobs of another engine's masters run by our slaves
        self._mine = b'"id":"' + tag.encode()

    def on_inbox(self, batch: list[Delivery]) -> None:
        for delivery in batch:
            if delivery.kind == "job":
                self.ready.append(delivery.peer)
                if self._mine not in delivery.frame:
                    self.crossed += 1
            else:
                self.completed += 1
        self.wake.set()

    async def run(self, deadline: float) -> float:
        """Until our jobs are done; returns the seconds that took.  Then,
        with `all_done`, keep answering (other engines' jobs may be held by
        our slaves) until every engine is done."""
        engine = self.engine
        start = time.perf_counter()
        elapsed = 0.0
        for slave in range(self.slaves):
            reply = await engine.join(slave, "bench", 1)
            if reply.code == "job":
                self.ready.append(slave)
        while trio.current_time() < deadline:
            if self.completed >= self.jobs:
                if not elapsed:
                    elapsed = time.perf_counter() - start
                    await self.report_done()
                if await self.all_done():
                    break
            batch: list[Step] = []
            answering = self.ready
            self.ready = []
            for slave in answering:
                batch.append(Step(fn("respond"), (slave, b'"ok"')))
            in_flight = self.submitted - self.completed
            for _ in range(min(self.window - in_flight, self.jobs - self.submitted)):
                spec = JobSpec(f"{self.tag}{self.submitted}", "bench", "x" * 100)
                batch.append(engine.submit_step(self.submitted % 64, spec))
                self.submitted += 1
            if not batch:
                self.wake = trio.Event()
                with trio.move_on_at(min(deadline, trio.current_time() + 0.02)):
                    await self.wake.wait()
                continue
            answers = await engine.call_many(batch)
            self.rounds += 1
            for slave, answer in zip(answering, answers, strict=False):
                if answer[0] == b"job":
                    self.ready.append(slave)
                    if self._mine not in answer[2]:
                        self.crossed += 1
        return elapsed or time.perf_counter() - start

    async def report_done(self) -> None:
        ops = self.engine._ops
        assert ops is not None
        await ops.incrby(self.engine.prefix + "bench:done", 1)

    async def all_done(self) -> bool:
        ops = self.engine._ops
        assert ops is not None
        return int(await ops.get(self.engine.prefix + "bench:done") or 0) >= self.engines


async def drive(
    url: str, name: str, tag: str, jobs: int, slaves: int, window: int, engines: int = 1
) -> dict[str, Any]:
    settings = ClusterSettings(url, name=name)
    async with trio.open_nursery() as nursery:
        engine = ClusterEngine(settings)
        driver = Driver(engine, tag, jobs, slaves, window, engines)
        engine.on_inbox = driver.on_inbox
        await nursery.start(engine.run)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        elapsed = await driver.run(trio.current_time() + RUN_LIMIT)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        counters = engine.counters
        nursery.cancel_scope.cancel()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "completed": driver.completed,
        "elapsed": elapsed,
        "cpu": cpu,
        "round_trips": counters.round_trips,
        "calls": counters.calls,
        "inbox_reads": counters.inbox_reads,
        "rounds": driver.rounds,
        "crossed": driver.crossed,
    }


# ---------------------------------------------------------------- cost


def section_cost(quick: bool, base: Path) -> None:
    server = start_redis(base / "cost")
    try:
        jobs = 2000 if quick else 20_000
        trio.run(drive, server.url, "bench-warm", "w", 200, SLAVES, WINDOW)  # warm
        server.cli("CONFIG", "RESETSTAT")
        cpu0 = redis_cpu(server)
        result = trio.run(drive, server.url, "bench-cost", "c", jobs, SLAVES, WINDOW)
        cpu1 = redis_cpu(server)
        stats = commandstats(server)
        calls = {name: value[0] for name, value in stats.items()}
        done = result["completed"]
        fcalls = calls.pop("fcall", 0)
        fcall_us = stats.get("fcall", (0, 0))[1]
        inner = sum(v for k, v in calls.items() if k not in ("blmpop", "ping", "function|load"))
        print(
            f"## one job's cost ({done} jobs through 1 engine, {SLAVES} slaves, {WINDOW} in flight)"
        )
        print(f"- FCALLs per job: {fcalls / done:.2f} (submit, respond; the rest amortized)")
        print(f"- commands run inside Redis per job: {inner / done:.1f}")
        top = sorted(
            ((k, v) for k, v in calls.items() if k not in ("blmpop", "ping")),
            key=lambda kv: -kv[1],
        )[:12]
        print("  - " + ", ".join(f"{k} {v / done:.2f}" for k, v in top))
        print(f"- BLMPOP (inbox reads) per job: {calls.get('blmpop', 0) / done:.3f}")
        print(
            f"- round trips per job (client side): {result['round_trips'] / done:.3f}"
            f" (pipelines {result['rounds']}, inbox reads {result['inbox_reads']})"
        )
        print(
            f"- Redis CPU per job: {(cpu1 - cpu0) / done * 1e6:.0f} us, of which running"
            f" the functions {fcall_us / done:.0f} us ({fcall_us / max(fcalls, 1):.0f} us"
            " per FCALL); the rest is network I/O"
        )
        print(f"- engine process CPU per job: {result['cpu'] / done * 1e6:.0f} us")
        print(f"- jobs/s: {done / result['elapsed']:,.0f}")
    finally:
        server.stop()


# ---------------------------------------------------------------- engines


def _engines_run(count: int, jobs: int, directory: Path) -> dict[str, float]:
    server = start_redis(directory)
    try:
        cpu0 = redis_cpu(server)
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.cluster_engine",
                    "--worker",
                    server.url,
                    f"e{index}-",
                    str(jobs),
                    str(count),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for index in range(count)
        ]
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=RUN_LIMIT + 30)
            results.append(ast.literal_eval(out.strip().splitlines()[-1]))
        cpu1 = redis_cpu(server)
    finally:
        server.stop()
    done = sum(r["completed"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    return {
        "jobs_s": done / elapsed,
        "redis_us": (cpu1 - cpu0) / done * 1e6,
        "redis_core": (cpu1 - cpu0) / elapsed,
        "engine_us": sum(r["cpu"] for r in results) / done * 1e6,
        "crossed": sum(r["crossed"] for r in results) / done,
    }


def section_engines(quick: bool, base: Path) -> None:
    jobs = 3000 if quick else 20_000
    print(
        f"## jobs/s through N engines (each a process; {jobs} jobs each, {SLAVES} slaves"
        f" each; median of {REPEAT} runs)"
    )
    for count in (1, 2):
        runs = [_engines_run(count, jobs, base / f"engines{count}-{n}") for n in range(REPEAT)]
        runs.sort(key=lambda r: r["jobs_s"])
        mid = runs[len(runs) // 2]
        spread = ", ".join(f"{r['jobs_s']:,.0f}" for r in runs)
        print(
            f"- {count} engine(s): {mid['jobs_s']:,.0f} jobs/s (runs: {spread}); Redis CPU"
            f" {mid['redis_us']:.0f} us/job ({mid['redis_core'] * 100:.0f}% of a core);"
            f" engines' CPU {mid['engine_us']:.0f} us/job; jobs run by another engine's"
            f" slaves {mid['crossed'] * 100:.0f}%"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", choices=[[], *SECTIONS], default=[])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=4, metavar=("URL", "TAG", "JOBS", "ENGINES"))
    args = parser.parse_args(argv)
    if args.worker:
        url, tag, jobs, engines = args.worker
        result = trio.run(drive, url, "bench-engines", tag, int(jobs), SLAVES, WINDOW, int(engines))
        print(repr(result))
        return
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    print(f"# cluster engine figures ({os.cpu_count()} cores; {version.stdout.split()[2]})")
    with tempfile.TemporaryDirectory() as tmp:
        for section in args.sections or SECTIONS:
            directory = Path(tmp)
            globals()[f"section_{section}"](args.quick, directory)


if __name__ == "__main__":
    main()
