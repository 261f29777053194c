"""`gloom schedule list`: each job's last and next fire time and its last message.

Reads the schedule TOML file and its status file and prints a table; it never
imports the jobs' code and never talks to a running daemon, so it works on a
host where the daemon is down (which is when one most wants to look).  Times
are shown in each job's own zone, since "03:30 Europe/Berlin" is what the
configuration says.

The `gloom` command does not import gloomd (a client-only install has none):
gloomd contributes the `schedule` subcommand through the entry point group
`gloom.commands` (pyproject.toml: `schedule = "gloomd.scheduler.listing:COMMANDS"`),
which `gloom` loads when it is there.  That is why this module, the only one
of gloomd that does, imports `gloom.cli`: it plugs into it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gloom.cli import Command

from .config import build_job, default_state_path, load_schedule_file
from .firetime import JobConfigError, first_fire_ts, is_fire_ts
from .state import StateFile

__all__ = ["COMMANDS", "main", "rows"]


def _fmt(ts: float, tz: _dt.tzinfo) -> str:
    return _dt.datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def _ts(info: Any) -> float | None:
    # Out of range (a damaged or hand-edited status file): not printable, so unknown.
    if isinstance(info, dict) and is_fire_ts(info.get("ts")):
        return float(info["ts"])
    return None


def rows(
    schedule: pathlib.Path, state_path: pathlib.Path | None = None, *, now: float | None = None
) -> list[dict[str, str]]:
    """One dict per job (name, schedule, target, last, next, running, message).

    A job the scheduler has not evaluated yet (no status, or a status made for
    a different every/at/timezone) shows the fire time it would get if the
    scheduler started now, marked "(if started now)".
    """
    now = time.time() if now is None else now
    jobs = load_schedule_file(schedule)
    status = StateFile(state_path or default_state_path(schedule)).reload() or {}
    out = []
    for name, conf in jobs.items():
        spec = build_job(name, conf, resolve_func=False)
        tz = spec.timing.tz
        st = status.get(name)
        st = st if isinstance(st, dict) else {}
        last = _ts(st.get("fire_time"))
        nxt = _ts(st.get("next_fire_time")) if st.get("schedule") == spec.schedule_key else None
        active = st.get("active_threads")
        out.append(
            {
                "name": name,
                "schedule": spec.schedule_key,
                "target": spec.target,
                "last": _fmt(last, tz) if last is not None else "never",
                "next": _fmt(nxt, tz)
                if nxt is not None
                else f"{_fmt(first_fire_ts(spec.timing, now), tz)} (if started now)",
                "running": str(len(active)) if isinstance(active, dict) else "0",
                "message": str(st.get("message", "")),
            }
        )
    return out


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gloom schedule list",
        description="Show each scheduled job's last and next fire time and its last message.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--schedule", required=True, type=pathlib.Path, help="the schedule TOML file"
    )
    parser.add_argument(
        "--schedule-state",
        type=pathlib.Path,
        default=None,
        help="the status file (default: FILE.state.json next to FILE.toml)",
    )
    args = parser.parse_args(list(argv))
    try:
        table_rows = rows(args.schedule, args.schedule_state)
    except OSError as exc:
        print(f"gloom schedule list: {exc}", file=sys.stderr)
        return 2
    except JobConfigError as exc:
        print(f"gloom schedule list: {args.schedule}: {exc}", file=sys.stderr)
        return 2
    table = Table(title=str(args.schedule))
    for column, no_wrap in (
        ("job", True), ("schedule", False), ("does", False), ("last fire", True),
        ("next fire", True), ("running", True), ("message", False),
    ):  # fmt: skip
        table.add_column(column, overflow="fold", no_wrap=no_wrap)
    for row in table_rows:
        # Text, not markup: "[local]" or a message in brackets must print as is.
        table.add_row(
            *(
                Text(row[key])
                for key in ("name", "schedule", "target", "last", "next", "running", "message")
            )
        )

    # Piped into a file or grep, 80 columns would fold every date in two.
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0


# ------------------------------------------------------------------ the gloom subcommand


def _configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="schedule_command", metavar="COMMAND", required=True)
    listing = sub.add_parser(
        "list",
        help="each job's last and next fire time and its last message",
        description=(
            "Show each scheduled job's last and next fire time (in its own zone)"
            " and its last message."
        ),
        allow_abbrev=False,
    )
    listing.add_argument("--schedule", required=True, help="the schedule TOML file")
    listing.add_argument(
        "--schedule-state",
        default=None,
        help="status file (default: FILE.state.json next to FILE.toml)",
    )
    listing.set_defaults(run=_run_list, _parser=listing)


def _run_list(args: argparse.Namespace) -> int:
    """`gloom schedule list`; it needs no daemon, so it ignores the connection options."""
    argv = ["--schedule", args.schedule]
    if args.schedule_state:
        argv += ["--schedule-state", args.schedule_state]
    return main(argv)


#: What the entry point `gloom.commands` / `schedule` hands to `gloom`.
COMMANDS = [
    Command("schedule", "inspect the scheduler's jobs (gloomd --schedule)", _configure, _run_list)
]
