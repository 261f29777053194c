"""Functions a schedule file can name as `func = "tests.schedjobs.tasks:NAME"`.

They record their calls in `CALLS`, which each test clears first; the tests
run one at a time, so a module-level list is enough.
"""

from __future__ import annotations

from typing import Any

CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []


def record(*args: Any, **kwargs: Any) -> str:
    """Runs in a worker thread: a plain function."""
    CALLS.append(("record", args, kwargs))
    return "recorded"


async def record_async(*args: Any, **kwargs: Any) -> None:
    """Awaited in the scheduler's own trio run: an `async def` function."""
    CALLS.append(("record_async", args, kwargs))


def explode(message: str = "boom") -> None:
    CALLS.append(("explode", (message,), {}))
    raise ValueError(message)


class Namespace:
    @staticmethod
    def nested(*args: Any) -> None:
        CALLS.append(("nested", args, {}))


NOT_CALLABLE = 42


async def explode_async(message: str = "boom") -> None:
    CALLS.append(("explode_async", (message,), {}))
    raise ValueError(message)
