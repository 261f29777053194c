"""`gloom schedule list`: the scheduler's status, read from its files.

The listing itself lives with the scheduler (`gloomd.schedule_list`), which
owns the file formats; this module only plugs it into the `gloom` command.
It needs no daemon, so it ignores the connection options every subcommand has.
"""

from __future__ import annotations

import argparse

from .cli import Command


def _configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="schedule_command", metavar="COMMAND", required=True)
    listing = sub.add_parser(
        "list",
        help="each job's last and next fire time and its last message",
        description="Show each scheduled job's last and next fire time (in its own zone) and its last message.",
    )
    listing.add_argument("--schedule", required=True, help="the schedule TOML file")
    listing.add_argument("--schedule-state", default=None, help="status file (default: FILE.state.json next to FILE.toml)")
    listing.set_defaults(run=_run_list)


def _run_list(args: argparse.Namespace) -> int:
    from gloomd.scheduler import schedule_list_main

    argv = ["--schedule", args.schedule]
    if args.schedule_state:
        argv += ["--schedule-state", args.schedule_state]
    return schedule_list_main(argv)


COMMANDS = [Command("schedule", "inspect the scheduler's jobs (gloomd --schedule)", _configure, _run_list)]
