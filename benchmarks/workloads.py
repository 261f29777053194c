"""The named workloads, in a full and a quick size.

Full sizes follow issue #7: throughput (20,000 jobs of 100 B, 4 slaves,
window 1,000), latency (window 1), fan-out (64 and 1,024 slaves), deep queue
(jobs queued with no slave, then drained, at 1k/10k/100k/1M), large bodies
(64 KiB), many masters (100), and the cluster (gloomd on Redis, issue 16).
Every workload has a hard deadline: a run that passes it stops by itself and
reports what it saw (``deadline_hit``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

__all__ = ["FULL", "QUICK", "Workload", "get", "names"]


@dataclass(frozen=True)
class Workload:
    name: str
    jobs: int  # in all, split evenly between the masters
    body: int = 100  # bytes per job body
    slaves: int = 4
    masters: int = 1
    window: int = 1000  # jobs in flight per master
    deep: bool = False  # queue every job first, connect the slaves after
    deadline: float = 120.0  # seconds for the whole run

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _deep(depth: int, label: str, deadline: float) -> Workload:
    return Workload(f"deep-{label}", depth, window=depth, deep=True, deadline=deadline)


FULL: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("throughput", 20_000),
        Workload("latency", 2_000, window=1, deadline=60),
        Workload("fanout-64", 20_000, slaves=64),
        Workload("fanout-1024", 20_000, slaves=1024),
        Workload("large-64k", 5_000, body=64 * 1024, window=100),
        Workload("many-masters", 20_000, masters=100, window=10),
        # gloomd alone against gloomd on Redis with 1 and 2 daemons (issue 16):
        # 8 slaves and 2 masters, spread over the daemons by the generator.
        Workload("cluster", 10_000, slaves=8, masters=2, window=500),
        _deep(1_000, "1k", 60),
        _deep(10_000, "10k", 60),
        _deep(100_000, "100k", 120),
        _deep(1_000_000, "1m", 300),
    ]
}

QUICK: dict[str, Workload] = {
    w.name: w
    for w in [
        replace(FULL["throughput"], jobs=5_000, deadline=60),
        replace(FULL["latency"], jobs=500, deadline=30),
        replace(FULL["fanout-64"], jobs=5_000, deadline=60),
        replace(FULL["fanout-1024"], jobs=5_000, deadline=60),
        replace(FULL["large-64k"], jobs=1_000, deadline=60),
        replace(FULL["many-masters"], jobs=5_000, deadline=60),
        replace(FULL["cluster"], jobs=2_000, deadline=60),
        FULL["deep-1k"],
        FULL["deep-10k"],
        replace(FULL["deep-100k"], deadline=90),
    ]
}


def names(quick: bool = False) -> list[str]:
    return list((QUICK if quick else FULL).keys())


def get(name: str, quick: bool = False) -> Workload:
    table = QUICK if quick else FULL
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(table)}") from None
