"""Plot how each system's cost grows with queue depth and slave count.

    .venv/bin/pip install matplotlib      # only for this script; not a gloomd dependency
    python -m benchmarks.plot benchmarks/results/latest-full.jsonl -o benchmarks/results/scaling.png

Left: submit and drain rates against queue depth (deep-1k … deep-1m); a flat
line is O(1) per job, a falling one means each job costs more in a deeper
queue.  Middle: server bytes per queued job beyond its body.  Right: jobs/s
and server CPU per job against slave count (throughput = 4 slaves, fan-out
64 and 1,024).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .compare import load
from .systems import SYSTEMS

DEPTHS = {"deep-1k": 1_000, "deep-10k": 10_000, "deep-100k": 100_000, "deep-1m": 1_000_000}
SLAVES = {"throughput": 4, "fanout-64": 64, "fanout-1024": 1024}
STYLE = {"gloomd": "tab:blue", "gearmand": "tab:orange", "beanstalkd": "tab:green"}


def _good(line: dict[str, Any]) -> bool:
    return not any(line.get(k) for k in ("error", "skipped", "lost", "duplicates", "bad_bodies"))


def _series(
    lines: list[dict[str, Any]], xs: dict[str, int], key: str, system: str
) -> tuple[list[int], list[float]]:
    """Median of ``key`` per x for ``system``, from clean runs only."""
    points: dict[int, list[float]] = {}
    for line in lines:
        x = xs.get(line.get("workload", ""))
        if x is None or line.get("system") != system or not _good(line) or line.get(key) is None:
            continue
        points.setdefault(x, []).append(float(line[key]))
    ordered = sorted(points)
    return ordered, [sorted(points[x])[(len(points[x]) - 1) // 2] for x in ordered]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__)
    ap.add_argument("files", nargs="+")
    ap.add_argument("-o", "--output", default="benchmarks/results/scaling.png")
    args = ap.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("the plot needs matplotlib: .venv/bin/pip install matplotlib", file=sys.stderr)
        return 2
    lines = load(args.files)
    systems = [s for s in SYSTEMS if any(line.get("system") == s for line in lines)]
    fig, (ax_rate, ax_mem, ax_fan) = plt.subplots(1, 3, figsize=(15, 4.5))
    for s in systems:
        color = STYLE.get(s)
        x, y = _series(lines, DEPTHS, "submit_per_s", s)
        ax_rate.plot(x, y, "o-", color=color, label=f"{s} submit")
        x, y = _series(lines, DEPTHS, "drain_per_s", s)
        ax_rate.plot(x, y, "s--", color=color, label=f"{s} drain")
        x, y = _series(lines, DEPTHS, "rss_beyond_body_b", s)
        ax_mem.plot(x, y, "o-", color=color, label=s)
        x, y = _series(lines, SLAVES, "jobs_per_s", s)
        ax_fan.plot(x, y, "o-", color=color, label=f"{s} jobs/s")
    ax_cpu = ax_fan.twinx()
    for s in systems:
        x, y = _series(lines, SLAVES, "server_cpu_us_per_job", s)
        ax_cpu.plot(x, y, "x:", color=STYLE.get(s), label=f"{s} CPU µs/job")
    ax_rate.set(xscale="log", yscale="log", xlabel="queued jobs", ylabel="jobs/s",
                title="Deep queue: submit and drain rate")  # fmt: skip
    ax_mem.set(xscale="log", xlabel="queued jobs", ylabel="bytes",
               title="Server memory per queued job (beyond body)")  # fmt: skip
    ax_fan.set(xscale="log", xlabel="slaves", ylabel="jobs/s", title="Fan-out: 20,000 jobs")
    ax_cpu.set_ylabel("server CPU µs/job (dotted)")
    for ax in (ax_rate, ax_mem):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_fan.grid(True, alpha=0.3)
    handles = ax_fan.get_legend_handles_labels()
    extra = ax_cpu.get_legend_handles_labels()
    ax_fan.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=7)
    fig.tight_layout()
    fig.savefig(args.output, dpi=80)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
