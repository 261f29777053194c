"""`gloom submit`'s lifecycle flags: --delay, --retries, --backoff, --unique.

Kept apart from `master` so that the submit command takes them with two
lines: `add_lifecycle_flags(parser)` and `**lifecycle_spec(args)` in each job
spec.  Each flag goes on the wire only when given; argparse refuses what is
not a number of the right kind (exit 2), and gloomd checks the ranges
(`invalid_type` / the key: exit 1).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from .common import positive_number

__all__ = ["add_lifecycle_flags", "lifecycle_spec"]


def _non_negative_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more: {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def add_lifecycle_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("lifecycle")
    group.add_argument(
        "--delay", type=_non_negative_number, default=None, metavar="S",
        help="queue the job S seconds from now",
    )  # fmt: skip
    group.add_argument(
        "--retries", type=_non_negative_int, default=None, metavar="N",
        help="run it again up to N times after an ERROR or TIMEOUT failure",
    )  # fmt: skip
    group.add_argument(
        "--backoff", type=positive_number, default=None, metavar="S",
        help="wait S seconds before the first retry, doubling each time (default 1)",
    )  # fmt: skip
    group.add_argument(
        "--unique", action="store_true",
        help="if a job with this --id and type is live, follow it instead of failing",
    )  # fmt: skip


def lifecycle_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The job spec keys the flags ask for (none when none was given)."""
    spec: dict[str, Any] = {}
    for key in ("delay", "retries", "backoff"):
        value = getattr(args, key, None)
        if value is not None:
            spec[key] = value
    if getattr(args, "unique", False):
        spec["unique"] = True
    return spec
