"""Jobs whose data JSON cannot hold as it is: the service must still send JSON only."""

import math


def values(job):
    """Non-finite floats, lone surrogates, a huge integer, odd keys, a cycle, deep nesting."""
    cycle = {"name": "cycle"}
    cycle["self"] = cycle
    deep = []
    inner = deep
    for _ in range(1200):  # deeper than Python's json encoder can recurse
        inner.append([])
        inner = inner[0]
    job.data["result"] = {
        "inf": math.inf,
        "ninf": -math.inf,
        "nan": math.nan,
        "lone": "a\ud800b",
        "pair": "\ud83d\ude00",
        "big": 10**5000,
        "keys": {1: "one", None: "none", (1, 2): "tuple"},
        "set": {1},
        "cycle": cycle,
        "deep": deep,
        "fine": [1, 2.5, "ü"],
    }


def infinite_progress(job):
    """Only a non-finite number: the fast path's one failure mode."""
    job.data["progress"] = float("inf")
    job.data["result"] = "done"
