"""A server's own CPU time and memory, read from /proc (Linux only).

The servers share 2 cores with the generator, so jobs/s alone also measures
how much CPU the generator left them; CPU seconds per job is the server's own
cost and the fairer comparison.  /proc/<pid>/stat sums every thread, which
matters for gearmand (4 I/O threads by default).
"""

from __future__ import annotations

import os

__all__ = ["cpu_seconds", "cpu_times", "memory_kb"]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by process ``pid`` (all threads).

    The split matters: a server whose time is mostly system time is paying for
    syscalls and copies, one whose time is user time for its own code.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may contain spaces and parentheses: split after
    # its closing parenthesis.  utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by process ``pid`` (all threads)."""
    user, system = cpu_times(pid)
    return user + system


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak resident size so far) in KiB."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith((b"VmRSS:", b"VmHWM:")):
                key, value = line.split(b":", 1)
                found[key.decode()] = int(value.split()[0])
    return found
