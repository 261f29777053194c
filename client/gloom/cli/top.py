"""`gloom top`: a live terminal view of per-type depths and rates.

It asks the daemon for `stats` over the master port every `--interval`
seconds and redraws one table in place (rich's Live, on the alternate screen
like top(1)), until `q` is pressed, SIGINT (Ctrl-C) or SIGTERM arrives, or
stdin closes.  Rates are computed here from successive answers, on the
daemon's own clock (`uptime_s`): (counter now - counter before) / (uptime
now - uptime before).  Per-type rates need per-type counters in the stats
rows ("completed", "failed"); a daemon without them shows "–" there, and the
daemon-wide rates from its totals are shown below the table either way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Any

import trio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .common import EXIT_OK, Command, master_session, positive_number
from .render import type_text

__all__ = ["COMMANDS", "TopView"]

#: Per-type columns: (heading, key in a stats row).  Keys a daemon does not
#: report (delayed, dead, paused before the job lifecycle) show "–".
DEPTHS = (
    ("queued", "queued"),
    ("delayed", "delayed"),
    ("waiting", "waiting"),
    ("running", "running"),
    ("dead", "dead"),
)
QUIT_KEYS = frozenset(b"qQ")


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interval",
        type=positive_number,
        default=1.0,
        help="seconds between refreshes (default 1)",
    )


def _shown(value: Any) -> str:
    return "–" if value is None else str(value)


def _rate(now: Any, before: Any, seconds: float) -> str:
    if not isinstance(now, (int, float)) or not isinstance(before, (int, float)) or seconds <= 0:
        return "–"
    value = (now - before) / seconds
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} m"
    if minutes:
        return f"{minutes} m {s % 60:02d} s"
    return f"{s} s"


class TopView:
    """The last two `stats` answers and the table drawn from them (no I/O)."""

    def __init__(self) -> None:
        self.current: dict[str, Any] | None = None
        self.previous: dict[str, Any] | None = None

    def update(self, stats: dict[str, Any]) -> None:
        self.previous, self.current = self.current, stats

    def _seconds(self) -> float:
        if self.current is None or self.previous is None:
            return 0.0
        return float(self.current.get("uptime_s", 0)) - float(self.previous.get("uptime_s", 0))

    def rows(self) -> list[list[str]]:
        """One row of cells per type, the busiest first."""
        assert self.current is not None
        seconds = self._seconds()
        before = {type_text(row.get("type")): row for row in (self.previous or {}).get("types", [])}
        types = sorted(
            self.current.get("types", []),
            key=lambda row: (
                -(row.get("queued", 0) + row.get("running", 0)),
                type_text(row.get("type")),
            ),
        )
        rows = []
        for row in types:
            label = type_text(row.get("type"))
            old = before.get(label, {})
            idle = row.get("idle", 0)
            paused = row.get("paused")
            rows.append(
                [
                    label,
                    *(_shown(row.get(key)) for _, key in DEPTHS),
                    f"{idle}/{row.get('slaves', 0) - idle}",
                    "–" if paused is None else ("yes" if paused else "no"),
                    _rate(row.get("completed"), old.get("completed"), seconds),
                    _rate(row.get("failed"), old.get("failed"), seconds),
                ]
            )
        return rows

    def render(self) -> Group:
        table = Table(title=self._title(), title_justify="left", expand=False)
        table.add_column("type", overflow="ellipsis", max_width=40)
        for heading, _ in DEPTHS:
            table.add_column(heading, justify="right")
        for heading in ("idle/busy", "paused", "done/s", "failed/s"):
            table.add_column(heading, justify="right")
        if self.current is not None:
            for cells in self.rows():
                table.add_row(*cells)
        return Group(table, Text(self._footer()))

    def _title(self) -> str:
        if self.current is None:
            return "gloomd"
        connections = self.current.get("connections", {})
        return (
            f"gloomd · up {_duration(float(self.current.get('uptime_s', 0)))} · "
            f"masters {connections.get('masters', 0)} · slaves {connections.get('slaves', 0)}"
        )

    def _footer(self) -> str:
        if self.current is None:
            return "q to quit"
        totals = self.current.get("totals", {})
        old = (self.previous or {}).get("totals", {})
        seconds = self._seconds()
        parts = [
            f"{name} {_rate(totals.get(name), old.get(name), seconds)}/s"
            for name in ("submitted", "completed", "failed")
        ]
        parts.append(f"waiting {self.current.get('waiting', 0)}")
        return " · ".join(parts) + "   (q to quit)"


@contextlib.contextmanager
def _keys(fd: int) -> Iterator[bool]:
    """Single keypresses from a terminal (cbreak mode, restored on exit).

    Yields whether keys can be read at all: not when stdin is no terminal.
    """
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _wait_for_quit_key(fd: int) -> None:
    """Return when q is pressed or stdin ends."""
    while True:
        await trio.lowlevel.wait_readable(fd)
        data = os.read(fd, 64)  # readable: this does not block
        if not data or QUIT_KEYS.intersection(data):
            return


async def _top(args: argparse.Namespace) -> int:
    async with master_session(args) as master:
        view = TopView()
        view.update(await master.stats())
        console = Console()
        fd = sys.stdin.fileno()
        with (
            trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
            _keys(fd) as interactive,
            Live(view.render(), console=console, screen=True, auto_refresh=False) as live,
        ):
            async with trio.open_nursery() as nursery:

                async def leave_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                async def leave_on_key() -> None:
                    await _wait_for_quit_key(fd)
                    nursery.cancel_scope.cancel()

                async def refresh() -> None:
                    while True:
                        await trio.sleep(args.interval)
                        view.update(await master.stats())
                        live.update(view.render(), refresh=True)

                nursery.start_soon(leave_on_signal)
                if interactive:
                    nursery.start_soon(leave_on_key)
                nursery.start_soon(refresh)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    return trio.run(_top, args)


COMMANDS = [
    Command(
        "top",
        "live view of per-type depths and rates (q or Ctrl-C to leave)",
        _configure,
        _run,
        servers=True,
    ),
]
