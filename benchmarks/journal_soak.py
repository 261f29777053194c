"""The kill -9 soak of the journal: tests/e2e/test_journal_crash.py, many more rounds.

    python -m benchmarks.journal_soak                 # 40 rounds per --sync mode, a fresh seed
    python -m benchmarks.journal_soak --rounds 10 --seed 7

Each round: a gloomd on one journal file, three masters submitting detached
jobs of mixed priorities, two slaves working and resetting, SIGKILL after a
random number of acks; then a last daemon is checked (every acked job held
once or answered, none invented, strict order, a drain gets each once).
The suite runs 4 rounds of it; this runs the same test with more, through
pytest, and prints its verdict.  Not a timed test: minutes.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--seed", default=None, help="default: a fresh one, printed")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else str(random.randrange(1 << 30))
    print(f"journal soak: {args.rounds} rounds per mode, seed {seed}", flush=True)
    env = {**os.environ, "GLOOMD_CRASH_ROUNDS": str(args.rounds), "GLOOMD_CRASH_SEED": seed}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-o", "timeout=0",
         "tests/e2e/test_journal_crash.py"],
        cwd=root, env=env, check=False,
    )  # fmt: skip
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
