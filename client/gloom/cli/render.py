"""What the `gloom` command draws: progress bars and the stats table (rich).

Progress values are arbitrary JSON, so the bar reads the common shapes and
shows anything else as text:

* a number is a percentage (0 to 100);
* ``{"done": n, "total": m}`` (also ``completed`` or ``current`` for done);
* ``{"percent": p}``.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from gloomwire import codec

__all__ = ["count_bar", "job_bar", "progress_fraction", "stats_table", "to_json", "type_text"]

_DONE_KEYS = ("done", "completed", "current")


def to_json(value: Any) -> str:
    """Compact JSON text, exact for big integers."""
    return codec.dumps(value).decode("utf-8")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def progress_fraction(value: Any) -> tuple[float, float] | None:
    """(completed, total) for a progress value, or None if it has no known shape."""
    number = _number(value)
    if number is not None:
        return (min(max(number, 0.0), 100.0), 100.0)
    if isinstance(value, dict):
        total = _number(value.get("total"))
        if total is not None and total > 0:
            for key in _DONE_KEYS:
                done = _number(value.get(key))
                if done is not None:
                    return (min(max(done, 0.0), total), total)
        percent = _number(value.get("percent"))
        if percent is not None:
            return (min(max(percent, 0.0), 100.0), 100.0)
    return None


def stderr_console() -> Console:
    return Console(stderr=True)


def job_bar(console: Console) -> Progress:
    """One job's bar, fed by its progress frames."""
    return _bar(console, TaskProgressColumn())


def count_bar(console: Console) -> Progress:
    """A bar over many jobs' completions."""
    return _bar(console, MofNCompleteColumn())


def _bar(console: Console, amount: ProgressColumn) -> Progress:
    """Description, bar, `amount` (a percentage or done/total), note, time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        amount,
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def type_text(job_type: Any) -> str:
    """A job type as a label: a string as it is, anything else as JSON."""
    return job_type if isinstance(job_type, str) else to_json(job_type)


def stats_table(stats: dict[str, Any]) -> Group:
    """The daemon's stats: a table of types, then a line of totals."""
    table = Table(title="gloomd", title_justify="left")
    table.add_column("type")
    for column in ("queued", "running", "slaves", "idle"):
        table.add_column(column, justify="right")
    types = sorted(stats.get("types", []), key=lambda row: type_text(row.get("type")))
    for row in types:
        table.add_row(
            type_text(row.get("type")),
            *(str(row.get(column, 0)) for column in ("queued", "running", "slaves", "idle")),
        )
    totals = stats.get("totals", {})
    connections = stats.get("connections", {})
    parts = [f"{name} {value}" for name, value in totals.items()]
    if "waiting" in stats:
        parts.append(f"waiting {stats['waiting']}")
    parts.append(f"masters {connections.get('masters', 0)}")
    parts.append(f"slaves {connections.get('slaves', 0)}")
    if "uptime_s" in stats:
        parts.append(f"uptime {stats['uptime_s']:.0f} s")
    servers = stats.get("servers")
    if isinstance(servers, dict):  # summed over --servers
        parts.append(f"servers {servers.get('up')}/{servers.get('total')} up")
    return Group(table, Text(" · ".join(parts)))
