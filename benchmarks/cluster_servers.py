"""Several gloomd daemons on one Redis, started and stopped as one system.

The cluster workload of peers.sh (issue 16) compares the embedded daemon
with `gloomd-cluster1` (one daemon on a Redis) and `gloomd-cluster2` (two
daemons on one Redis, the load generator's masters and slaves spread over
both).  The group is a `servers.Server` whose extra fields list every
daemon's ports and every process' pid, so the generator can spread its
connections and read each process' CPU from /proc; Redis' own figures
(function calls, commands run inside them, reads = round trips) come from
INFO before and after the run.
"""

from __future__ import annotations

import contextlib
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .cluster_redis import REDIS_SERVER, RedisServer
from .servers import Server, ServerError, start_reporting

__all__ = ["CLUSTER_SYSTEMS", "ClusterGroup", "daemons_of", "redis_counters", "start_cluster"]

#: The cluster systems, by the number of daemons on the one Redis.
CLUSTER_SYSTEMS = {"gloomd-cluster1": 1, "gloomd-cluster2": 2}

Address = tuple[str, int]


@dataclass
class ClusterGroup(Server):
    """Redis and the daemons on it; `master`/`slave`/`pid` are daemon 1's."""

    masters: list[Address] = field(default_factory=list)
    slaves: list[Address] = field(default_factory=list)
    #: Every process of the system, by name ("redis", "gloomd1", ...).
    pids: dict[str, int] = field(default_factory=dict)
    daemons: list[Server] = field(default_factory=list)
    redis: RedisServer | None = None
    _dir: tempfile.TemporaryDirectory[str] | None = None

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        self.daemons = []
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def daemons_of(system: str) -> int | None:
    """How many daemons `system` runs on one Redis; None for other systems."""
    return CLUSTER_SYSTEMS.get(system)


def start_cluster(system: str, extra: list[str] | None = None) -> ClusterGroup:
    """A fresh Redis (in memory, no persistence: as the embedded daemon keeps
    its jobs) and `daemons_of(system)` gloomd daemons sharing it."""
    count = CLUSTER_SYSTEMS[system]
    if not Path(REDIS_SERVER).exists():
        raise ServerError("redis-server is not installed (bash .ci/install-redis)")
    tmp = tempfile.TemporaryDirectory(prefix=f"bench-{system}-")
    redis = RedisServer(Path(tmp.name) / "redis")
    try:
        redis.start()
    except RuntimeError as exc:
        tmp.cleanup()
        raise ServerError(str(exc)) from exc
    group = ClusterGroup(
        system, None, 0, ("", 0), ("", 0), redis=redis, _dir=tmp, pids={"redis": redis.pid}
    )
    try:
        for n in range(1, count + 1):
            cmd = [sys.executable, "-m", "gloomd", "--master-port", "0", "--slave-port", "0"]
            cmd += ["--http-port", "0", "--max-per-host", "1000000"]
            cmd += ["--cluster", redis.url, "--cluster-name", "bench", *(extra or [])]
            daemon = start_reporting(f"{system}-{n}", cmd)
            group.daemons.append(daemon)
            group.masters.append(daemon.master)
            group.slaves.append(daemon.slave)
            group.pids[f"gloomd{n}"] = daemon.pid
            group.command += [*cmd, ";"] if n < count else cmd
    except BaseException:
        group.stop()
        raise
    first = group.daemons[0]
    group.pid, group.master, group.slave = first.pid, first.master, first.slave
    return group


def redis_counters(redis: RedisServer) -> dict[str, int]:
    """Redis' running totals: function calls, commands (those the functions
    run included) and reads from clients (each a round trip, or part of a
    pipeline that arrived in pieces)."""
    counts = {"fcalls": 0, "commands": 0, "reads": 0}
    with contextlib.suppress(Exception):
        for line in redis.cli("INFO", "commandstats").splitlines():
            match = re.match(r"cmdstat_([a-z|_]+):calls=(\d+)", line)
            if match:
                calls = int(match.group(2))
                counts["commands"] += calls
                if match.group(1) == "fcall":
                    counts["fcalls"] += calls
        found = re.search(r"total_reads_processed:(\d+)", redis.cli("INFO", "stats"))
        if found:
            counts["reads"] = int(found.group(1))
    return counts
