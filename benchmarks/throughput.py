"""gloomd throughput and latency, the benchmark of issue #2.

    python benchmarks/throughput.py                    # 20,000 jobs, 4 slaves, window 1,000
    python benchmarks/throughput.py --mode latency     # the same with window 1 (2,000 jobs)
    python benchmarks/throughput.py --slaves 64 --jobs 50000 --body 1024

Starts gloomd (``python -m gloomd --master-port 0 --slave-port 0``), N slave
connections echoing in one process, one master in another keeping a window of
jobs in flight, and prints one JSON line: jobs/s, p50/p99 latency, the
server's CPU per job and peak RSS, lost and duplicate counts.  It is a thin
front end to the shared generator (`benchmarks.loadgen`), which drives
gearmand and beanstalkd the same way (see benchmarks/peers.sh).
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    # Run as a script: make the repository root importable for `benchmarks.*`.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import loadgen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("throughput", "latency"), default="throughput")
    ap.add_argument("--slaves", type=int, default=4)
    ap.add_argument("--jobs", type=int, help="default 20,000 (throughput) or 2,000 (latency)")
    ap.add_argument("--window", type=int, help="jobs in flight (default 1,000; 1 in latency mode)")
    ap.add_argument("--body", type=int, default=100, help="body bytes (default 100)")
    ap.add_argument("--deadline", type=float, help="hard limit for the run, seconds")
    ap.add_argument("--out", help="also append the JSON line to this file")
    ap.add_argument("--server-arg", action="append", default=[], help="extra gloomd argument")
    args = ap.parse_args(argv)
    forwarded = ["--system", "gloomd", "--workload", args.mode, "--name", args.mode]
    forwarded += ["--slaves", str(args.slaves), "--body", str(args.body)]
    if args.jobs is not None:
        forwarded += ["--jobs", str(args.jobs)]
    if args.window is not None:
        forwarded += ["--window", str(args.window)]
    if args.deadline is not None:
        forwarded += ["--deadline", str(args.deadline)]
    if args.out:
        forwarded += ["--out", args.out]
    for extra in args.server_arg:
        forwarded.append(f"--server-arg={extra}")
    return loadgen.main(forwarded)


if __name__ == "__main__":
    sys.exit(main())
