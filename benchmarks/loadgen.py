"""One load generator for every system: prints one JSON line per run.

    python -m benchmarks.loadgen --system gloomd --workload throughput
    python -m benchmarks.loadgen --system gearmand --workload deep-1m
    python -m benchmarks.loadgen --system beanstalkd --jobs 1000 --window 1 --slaves 1

The orchestrator (this module) starts a fresh server (or attaches to one with
``--connect``), forks the worker processes and then the master processes (see
`benchmarks.drivers`), reads the server's CPU time and memory from /proc
around the run, and reduces the processes' reports to one JSON line.  It does
nothing itself while the load runs: it blocks on the processes' pipes.

Every result is matched to its job and its body checked; ``lost`` counts jobs
submitted but never answered before the deadline, ``duplicates`` results
delivered twice, ``bad_bodies`` results whose body was not the job's.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import multiprocessing
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any

import orjson

from . import workloads
from .cluster_servers import ClusterGroup, daemons_of, redis_counters, start_cluster
from .drivers import MasterPlan, MasterReport, WorkerPlan, master_main, worker_main
from .procstat import cpu_seconds, cpu_times, memory_kb
from .servers import Server, ServerError, installed, start_server
from .systems import CLUSTER, SYSTEMS
from .workloads import Workload

__all__ = ["RunFailed", "main", "run"]

#: Time the orchestrator allows beyond a run's deadline for reports to arrive.
GRACE = 15.0

_fork = multiprocessing.get_context("fork")


class RunFailed(RuntimeError):
    """A process could not connect, died, or never answered."""


def _raise_fd_limit(wanted: int) -> None:
    # 1,024 slaves need more descriptors than the usual soft limit; servers
    # started afterwards inherit the raised limit too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, max(wanted, soft)), hard))


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _await(pipes: list[Connection], wanted: set[str], until: float) -> dict[int, tuple[str, Any]]:
    """Wait for one message of a kind in ``wanted`` from every pipe."""
    got: dict[int, tuple[str, Any]] = {}
    pending = {id(p): p for p in pipes}
    while pending:
        left = until - time.perf_counter()
        if left <= 0:
            kinds = "/".join(sorted(wanted))
            raise RunFailed(f"no {kinds} from {len(pending)} process(es) in time")
        for p in wait(list(pending.values()), left):
            try:
                kind, payload = p.recv()  # type: ignore[union-attr]
            except EOFError:
                raise RunFailed("a generator process died") from None
            if kind == "failed":
                raise RunFailed(payload)
            if kind in wanted:
                got[id(p)] = (kind, payload)
                del pending[id(p)]
    return got


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cpu {model}, {platform.system()} {platform.release()}"


def _revision() -> str | None:
    """The repository's commit, with ``+dirty`` when gloomd/ has uncommitted changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, timeout=5
            )
            .stdout.decode()
            .strip()
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gloomd"],
            cwd=root,
            capture_output=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def run(
    system: str,
    work: Workload,
    *,
    server: Server | None = None,
    server_args: list[str] | None = None,
    worker_procs: int = 1,
    master_procs: int = 1,
) -> dict[str, Any]:
    """Run ``work`` against ``system`` once and return the JSON line's fields.

    With ``server`` given the run uses it (and leaves it running); otherwise a
    fresh server is started and stopped.
    """
    line: dict[str, Any] = {"system": system, "workload": work.name}
    line.update({k: v for k, v in work.as_dict().items() if k != "name"})
    _raise_fd_limit(work.slaves + 2 * work.masters + 256)
    own = server is None
    if server is None:
        if daemons_of(system):
            server = start_cluster(system, server_args)
        else:
            server = start_server(system, server_args)
    procs: list[multiprocessing.process.BaseProcess] = []
    children0 = os.times()
    try:
        line.update(_drive(system, work, server, procs, worker_procs, master_procs))
    except RunFailed as exc:
        line["error"] = str(exc)
    finally:
        for p in procs:
            p.join(2)
            if p.is_alive():
                p.terminate()
                p.join(2)
        children1 = os.times()
        line["generator_cpu_s"] = round(
            (children1.children_user - children0.children_user)
            + (children1.children_system - children0.children_system),
            3,
        )
        if own:
            server.stop()
    line["server_command"] = " ".join(server.command) if server.command else None
    line["machine"] = _machine()
    if system == "gloomd":
        line["revision"] = _revision()
    line["when"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return line


def _drive(
    system: str,
    work: Workload,
    server: Server,
    procs: list[multiprocessing.process.BaseProcess],
    worker_procs: int,
    master_procs: int,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    deadline = t_start + work.deadline
    setup_until = t_start + min(work.deadline, 60.0)

    def spawn(target: Any, plan: Any) -> Connection:
        ours, theirs = _fork.Pipe()
        p = _fork.Process(target=target, args=(plan, theirs), daemon=True)
        p.start()
        theirs.close()
        procs.append(p)
        return ours

    # A cluster's slaves and masters are spread over its daemons: one worker
    # process (or more) per daemon, masters taking the daemons in turn.
    slave_addrs = server.slaves if isinstance(server, ClusterGroup) else [server.slave]
    master_addrs = server.masters if isinstance(server, ClusterGroup) else [server.master]
    worker_procs = max(worker_procs, len(slave_addrs))
    master_procs = max(master_procs, min(len(master_addrs), work.masters))
    worker_pipes = [
        spawn(
            worker_main,
            WorkerPlan(
                system, slave_addrs[i % len(slave_addrs)], n, deadline + GRACE, hold=work.deep
            ),
        )
        for i, n in enumerate(_split(work.slaves, max(1, min(worker_procs, work.slaves))))
        if n
    ]
    _await(worker_pipes, {"ready"}, setup_until)

    counts = _split(work.jobs, work.masters)
    masters: list[tuple[int, int, int]] = []
    first = 0
    for index, count in enumerate(counts):
        masters.append((index, first, count))
        first += count
    groups = [masters[i :: max(1, master_procs)] for i in range(max(1, master_procs))]
    groups = [g for g in groups if g]
    master_pipes = [
        spawn(
            master_main,
            # A deep queue has no window: everything is queued before any slave joins.
            MasterPlan(
                system,
                master_addrs[i % len(master_addrs)],
                g,
                max(counts) if work.deep else work.window,
                work.body,
                deadline,
                work.deep,
            ),
        )
        for i, g in enumerate(groups)
    ]
    _await(master_pipes, {"ready"}, setup_until)

    pid = server.pid
    # Every process of the system (a cluster: its daemons and Redis): the
    # server CPU figures are their sum, each one's share is reported too.
    pids = server.pids if isinstance(server, ClusterGroup) else {system: pid}
    times0 = {name: cpu_times(p) for name, p in pids.items()}
    user0 = sum(t[0] for t in times0.values())
    sys0 = sum(t[1] for t in times0.values())
    cpu0 = user0 + sys0
    redis = server.redis if isinstance(server, ClusterGroup) else None
    redis0 = redis_counters(redis) if redis is not None else {}
    rss0 = memory_kb(pid)["VmRSS"]
    extra: dict[str, Any] = {}
    t_go = time.perf_counter()
    for p in master_pipes:
        p.send("go")

    early: dict[int, tuple[str, Any]] = {}
    if work.deep:
        got = _await(master_pipes, {"acked", "report"}, deadline + GRACE)
        early = {k: v for k, v in got.items() if v[0] == "report"}
        rss_queued = memory_kb(pid)["VmRSS"]
        cpu_queued = cpu_seconds(pid)
        t_drain = time.perf_counter()
        for p in worker_pipes:
            p.send("go")
        # A master that hit the deadline before all its submits were acked
        # reports instead: the rates then cover the jobs it did queue.
        queued = sum(
            v[1].acked if v[0] == "report" else sum(c for _, _, c in g)
            for g, v in ((g, got[id(p)]) for g, p in zip(groups, master_pipes, strict=False))
        )
        t_queued = max(v[1] if v[0] == "acked" else v[1].t_end for v in got.values())
        if queued and t_queued > t_go:
            per_job = (rss_queued - rss0) * 1024 / queued
            extra.update(
                queued=queued,
                submit_per_s=round(queued / (t_queued - t_go)),
                server_cpu_submit_us_per_job=round((cpu_queued - cpu0) / queued * 1e6, 2),
                rss_queued_mb=round(rss_queued / 1024, 1),
                rss_per_queued_job_b=round(per_job),
                rss_beyond_body_b=round(per_job - work.body),
            )
    pending = [p for p in master_pipes if id(p) not in early]
    reports_raw = dict(early)
    reports_raw.update(_await(pending, {"report"}, deadline + GRACE))
    times1 = {name: cpu_times(p) for name, p in pids.items()}
    user1 = sum(t[0] for t in times1.values())
    sys1 = sum(t[1] for t in times1.values())
    cpu1 = user1 + sys1
    mem1 = memory_kb(pid)
    if len(pids) > 1:
        for name in pids:
            spent = sum(times1[name]) - sum(times0[name])
            extra[f"cpu_s_{name}"] = round(spent, 2)
    if redis is not None:
        redis1 = redis_counters(redis)
        extra["redis"] = {key: redis1[key] - redis0.get(key, 0) for key in redis1}
    for p in worker_pipes:
        try:
            p.send("stop")
        except OSError:
            pass
    try:
        got_workers = _await(worker_pipes, {"report"}, time.perf_counter() + 10)
        worker_reports = [v[1] for v in got_workers.values()]
    except RunFailed as exc:
        worker_reports = [{"jobs": None, "closed": 0, "errors": [str(exc)]}]

    reports: list[MasterReport] = [v[1] for v in reports_raw.values()]
    completed = sum(r.completed for r in reports)
    submitted = sum(r.submitted for r in reports)
    t_last = max((r.t_last for r in reports), default=t_go)
    elapsed = t_last - t_go
    latencies = sorted(x for r in reports for x in r.latencies)
    p50 = _percentile(latencies, 0.50)
    p99 = _percentile(latencies, 0.99)
    errors = [e for r in reports for e in r.errors] + [
        e for w in worker_reports for e in w["errors"]
    ]
    if work.deep and "submit_per_s" in extra and t_last > t_drain and completed:
        extra["drain_per_s"] = round(completed / (t_last - t_drain))
    if len(pids) > 1 and completed:
        for name in pids:
            extra[f"cpu_us_per_job_{name}"] = round(extra[f"cpu_s_{name}"] / completed * 1e6, 1)
    if redis is not None and completed:
        for key in ("fcalls", "commands", "reads"):
            extra[f"redis_{key}_per_job"] = round(extra["redis"][key] / completed, 2)
    return {
        "completed": completed,
        "elapsed_s": round(elapsed, 3),
        "jobs_per_s": round(completed / elapsed) if elapsed > 0 else None,
        "p50_ms": None if p50 is None else round(p50 * 1e3, 3),
        "p99_ms": None if p99 is None else round(p99 * 1e3, 3),
        "server_cpu_s": round(cpu1 - cpu0, 2),
        "server_cpu_us_per_job": round((cpu1 - cpu0) / completed * 1e6, 1) if completed else None,
        "server_cpu_user_s": round(user1 - user0, 2),
        "server_cpu_system_s": round(sys1 - sys0, 2),
        "server_rss_start_mb": round(rss0 / 1024, 1),
        "server_peak_rss_mb": round(mem1["VmHWM"] / 1024, 1),
        **extra,
        "lost": submitted - completed,
        "unsent": work.jobs - submitted,
        "duplicates": sum(r.duplicates for r in reports),
        "bad_bodies": sum(r.bad_bodies for r in reports),
        "unexpected": sum(r.unexpected for r in reports),
        "deadline_hit": any(r.deadline_hit for r in reports),
        "worker_jobs": sum(w["jobs"] or 0 for w in worker_reports),
        # (user, system) CPU seconds of the worker and master processes: the
        # generator's own cost, to check that it leaves the server its share.
        "worker_cpu": [sum(w.get("cpu", (0, 0))[i] for w in worker_reports) for i in (0, 1)],
        "master_cpu": [sum(r.cpu[i] for r in reports) for i in (0, 1)],
        "errors": errors[:10],
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen",
        description="Drive one system with one workload; print one JSON line.",
    )
    ap.add_argument("--system", choices=SYSTEMS + CLUSTER, default="gloomd")
    ap.add_argument("--workload", default="throughput", help="a named workload (see workloads.py)")
    ap.add_argument("--quick", action="store_true", help="the small size of the named workload")
    ap.add_argument("--jobs", type=int, help="override: jobs in all")
    ap.add_argument("--body", type=int, help="override: body bytes")
    ap.add_argument("--slaves", type=int, help="override: slave/worker connections")
    ap.add_argument("--masters", type=int, help="override: master/client connections")
    ap.add_argument("--window", type=int, help="override: jobs in flight per master")
    ap.add_argument("--deep", action="store_true", help="override: queue everything, then drain")
    ap.add_argument("--deadline", type=float, help="override: hard limit in seconds for the run")
    ap.add_argument("--name", help="workload name to report (default: the named workload's)")
    ap.add_argument("--worker-procs", type=int, default=1)
    ap.add_argument("--master-procs", type=int, default=1)
    ap.add_argument(
        "--server-arg", action="append", default=[], help="extra argument for the server (repeat)"
    )
    ap.add_argument(
        "--connect",
        metavar="HOST:MASTER_PORT[:SLAVE_PORT]",
        help="use a running server instead of starting one (needs --server-pid)",
    )
    ap.add_argument("--server-pid", type=int, help="pid of the --connect server, for /proc figures")
    ap.add_argument("--out", help="also append the JSON line to this file")
    return ap.parse_args(argv)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # `timeout` and peers.sh stop a run with SIGTERM: unwind so the server we
    # started is stopped too instead of being left behind.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    work = workloads.get(args.workload, quick=args.quick)
    overrides = {
        k: getattr(args, k)
        for k in ("jobs", "body", "slaves", "masters", "window", "deadline")
        if getattr(args, k) is not None
    }
    if args.deep:
        overrides["deep"] = True
    if overrides:
        work = replace(work, name=args.name or f"{work.name}*", **overrides)
    elif args.name:
        work = replace(work, name=args.name)
    if work.jobs < work.masters or work.jobs <= 0:
        print("--jobs must be at least the number of masters", file=sys.stderr)
        return 2

    server = None
    if args.connect:
        if args.server_pid is None:
            print("--connect needs --server-pid (CPU and memory come from /proc)", file=sys.stderr)
            return 2
        host, mport, *rest = args.connect.split(":")
        sport = rest[0] if rest else mport  # gearmand and beanstalkd use one port for both
        server = Server(args.system, None, args.server_pid, (host, int(mport)), (host, int(sport)))
    elif installed("redis-server" if daemons_of(args.system) else args.system) is None:
        missing = "redis-server" if daemons_of(args.system) else args.system
        skipped = f"{missing} is not installed"
        line = {"system": args.system, "workload": work.name, "skipped": skipped}
        _emit(line, args.out)
        return 3
    try:
        line = run(
            args.system,
            work,
            server=server,
            server_args=args.server_arg,
            worker_procs=args.worker_procs,
            master_procs=args.master_procs,
        )
    except ServerError as exc:
        line = {"system": args.system, "workload": work.name, "error": str(exc)}
    _emit(line, args.out)
    clean = "error" not in line and not (
        line.get("lost") or line.get("duplicates") or line.get("bad_bodies") or line.get("unsent")
    )
    return 0 if clean else 1


def _emit(line: dict[str, Any], out: str | None) -> None:
    text = orjson.dumps(line).decode()
    print(text, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
