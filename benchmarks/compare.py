"""Render JSON lines from the load generator as a side-by-side table.

    python -m benchmarks.compare benchmarks/results/latest.jsonl

One block of rows per workload, one column per system, and the ratio
gloomd/peer for every peer.  Each metric says which way is better (↑ higher,
↓ lower), so a ratio above 1 is a gloomd win for ↑ metrics and a loss for ↓
ones.  When a (system, workload) pair was run more than once, the median run
(by its headline metric) is shown.  A run that lost, duplicated or garbled a
job, or failed, is flagged and listed under the table: its figures are not
comparable.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from typing import Any

import orjson

from .systems import SYSTEMS

__all__ = ["load", "main", "render"]

Line = dict[str, Any]

#: (field, label, higher is better)
THROUGHPUT_METRICS = [
    ("jobs_per_s", "jobs/s ↑", True),
    ("server_cpu_us_per_job", "server CPU µs/job ↓", False),
    ("p50_ms", "p50 ms ↓", False),
    ("p99_ms", "p99 ms ↓", False),
    ("server_peak_rss_mb", "server peak RSS MB ↓", False),
]
LATENCY_METRICS = [
    ("p50_ms", "p50 ms ↓", False),
    ("p99_ms", "p99 ms ↓", False),
    ("jobs_per_s", "jobs/s ↑", True),
    ("server_cpu_us_per_job", "server CPU µs/job ↓", False),
]
DEEP_METRICS = [
    ("submit_per_s", "submit jobs/s ↑", True),
    ("drain_per_s", "drain jobs/s ↑", True),
    ("rss_beyond_body_b", "server B/queued job beyond body ↓", False),
    ("server_cpu_us_per_job", "server CPU µs/job ↓", False),
    ("server_peak_rss_mb", "server peak RSS MB ↓", False),
]
CLUSTER_METRICS = [
    ("jobs_per_s", "jobs/s ↑", True),
    ("server_cpu_us_per_job", "server CPU µs/job (all processes) ↓", False),
    ("cpu_us_per_job_gloomd1", "daemon 1 CPU µs/job ↓", False),
    ("cpu_us_per_job_gloomd2", "daemon 2 CPU µs/job ↓", False),
    ("cpu_us_per_job_redis", "Redis CPU µs/job ↓", False),
    ("redis_fcalls_per_job", "Redis function calls/job ↓", False),
    ("redis_commands_per_job", "Redis commands/job ↓", False),
    ("redis_reads_per_job", "Redis reads (round trips)/job ↓", False),
    ("p50_ms", "p50 ms ↓", False),
    ("p99_ms", "p99 ms ↓", False),
]


def metrics_for(workload: str) -> list[tuple[str, str, bool]]:
    base = workload.rstrip("*")
    if base.startswith("cluster"):
        return CLUSTER_METRICS
    if base.startswith("deep"):
        return DEEP_METRICS
    if base.startswith("latency"):
        return LATENCY_METRICS
    return THROUGHPUT_METRICS


def load(paths: list[str]) -> list[Line]:
    lines: list[Line] = []
    for path in paths:
        with open(path, "rb") as f:
            for raw in f:
                raw = raw.strip()
                if raw:
                    lines.append(orjson.loads(raw))
    return lines


def _problem(line: Line) -> str | None:
    if "skipped" in line:
        return str(line["skipped"])
    if "error" in line:
        return f"failed: {str(line['error']).splitlines()[0][:160]}"
    bad = {k: line.get(k) for k in ("lost", "duplicates", "bad_bodies", "unsent") if line.get(k)}
    if bad or line.get("deadline_hit"):
        return (
            "incomplete: "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
            + (" (deadline hit)" if line.get("deadline_hit") else "")
        )
    return None


def _median(runs: list[Line], key: str) -> Line:
    good = [r for r in runs if _problem(r) is None and r.get(key) is not None]
    if not good:
        return runs[-1]
    good.sort(key=lambda r: r[key])
    return good[(len(good) - 1) // 2]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and abs(value) < 100:
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{round(value):,}"


def render(lines: list[Line]) -> str:
    runs: dict[tuple[str, str], list[Line]] = defaultdict(list)
    workloads: list[str] = []
    systems_seen: list[str] = []
    for line in lines:
        w, s = line.get("workload", "?"), line.get("system", "?")
        runs[(w, s)].append(line)
        if w not in workloads:
            workloads.append(w)
        if s not in systems_seen:
            systems_seen.append(s)
    systems = [s for s in SYSTEMS if s in systems_seen] + [
        s for s in systems_seen if s not in SYSTEMS
    ]
    peers = [s for s in systems if s != "gloomd"]
    has_gloomd = "gloomd" in systems
    header = ["workload", "metric", *systems]
    if has_gloomd:
        header += [f"gloomd/{p}" for p in peers]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes: list[str] = []
    for w in workloads:
        metrics = metrics_for(w)
        chosen: dict[str, Line] = {}
        for s in systems:
            if (w, s) in runs:
                chosen[s] = _median(runs[(w, s)], metrics[0][0])
                problem = _problem(chosen[s])
                if problem:
                    notes.append(f"- {w} / {s}: {problem}")
        for i, (key, label, _higher) in enumerate(metrics):
            if not any(chosen.get(s, {}).get(key) is not None for s in systems):
                continue
            row = [w if i == 0 else "", label]
            for s in systems:
                line = chosen.get(s)
                cell = "n/a" if line is None or "skipped" in line else _fmt(line.get(key))
                if line is not None and _problem(line) and "skipped" not in line:
                    cell += " !"
                row.append(cell)
            if has_gloomd:
                g = chosen.get("gloomd", {}).get(key)
                for p in peers:
                    v = chosen.get(p, {}).get(key)
                    row.append(f"{g / v:.2f}×" if g is not None and v else "–")
            out.append("| " + " | ".join(row) + " |")
    machine = next((line["machine"] for line in lines if "machine" in line), None)
    tail = []
    if machine:
        tail.append(f"Machine: {machine}.")
    if notes:
        tail.append("Flagged runs (!): their figures are not comparable:\n" + "\n".join(notes))
    return "\n".join(out) + ("\n\n" + "\n\n".join(tail) if tail else "") + "\n"


def summary(line: Line) -> str:
    """One short line for a run, for progress output."""
    problem = _problem(line)
    head = f"{line.get('workload')} / {line.get('system')}"
    if problem and ("skipped" in line or "error" in line):
        return f"{head}: {problem}"
    figures = [f"{label.split(' ↑')[0].split(' ↓')[0]} {_fmt(line.get(key))}"
               for key, label, _ in metrics_for(str(line.get("workload")))[:3]]  # fmt: skip
    return f"{head}: " + ", ".join(figures) + (f"  [{problem}]" if problem else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    ap.add_argument("files", nargs="+", help="JSON-lines files written by the load generator")
    ap.add_argument("--last", action="store_true", help="summarise the last line only")
    args = ap.parse_args(argv)
    lines = load(args.files)
    if args.last:
        print(summary(lines[-1]) if lines else "no runs")
        return 0
    sys.stdout.write(render(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
