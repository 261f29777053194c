"""The job lifecycle's flags: `--max-dead`, and `--metrics-max-types` reaching the broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gloomd.broker import BrokerLimits
from gloomd.cli import build_parser, config_from_args


def test_max_dead_and_the_counters_cap_reach_the_broker() -> None:
    args = build_parser().parse_args(["--max-dead", "7", "--metrics-max-types", "3"])
    limits = config_from_args(args).limits
    assert (limits.max_dead, limits.metrics_max_types) == (7, 3)
    defaults = config_from_args(build_parser().parse_args([])).limits
    assert defaults.max_dead == BrokerLimits().max_dead == 100_000
    assert build_parser().parse_args(["--max-dead", "0"]).max_dead == 0  # keep none


def test_a_negative_max_dead_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gloomd", "--max-dead", "-1"], capture_output=True, timeout=30
    )
    assert proc.returncode == 2 and b"--max-dead must not be negative" in proc.stderr


def test_max_dead_is_documented_with_the_limits() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "`--max-dead`" in readme.split("### Limits against broken")[1]
