"""The pool-size rule, as a pure function (the runner only feeds it numbers).

Grow toward the backlog at once (myjobs' rule: as many processes as there are
queued jobs, up to max, in one step), because a queued job is a job waiting.
Shrink slowly: at most one process per tick, only one that has been idle for
`idle_grace` seconds (hysteresis, so a bursty queue does not make the pool
flap), and only while nothing is queued.  A busy process is never a
candidate: only idle slots are passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ScalePlan", "plan"]


@dataclass(frozen=True)
class ScalePlan:
    grow: int = 0
    shrink: int | None = None  # the slot to retire


def plan(
    *,
    size: int,
    queued: int,
    idle: Sequence[tuple[int, float]],
    now: float,
    minimum: int,
    maximum: int,
    idle_grace: float,
) -> ScalePlan:
    """What to do this tick.  `idle` is (slot id, idle since) for idle slots."""
    if size < minimum:
        return ScalePlan(grow=minimum - size)
    if queued > 0:
        return ScalePlan(grow=max(0, min(queued, maximum - size)))
    if size > minimum:
        ready = [(since, slot) for slot, since in idle if now - since >= idle_grace]
        if ready:
            return ScalePlan(shrink=min(ready)[1])  # the one idle longest
    return ScalePlan()
