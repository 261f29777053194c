"""The process's limit on open descriptors: raised at start, readable by any service.

Every connection costs a descriptor, and the soft limit that shells hand out
(often 1,024) is far below what `--max-connections` allows: 1,010 idle
websocket connections once took them all and the Gloom ports stopped
accepting (issue 18).  So the daemon raises its soft limit to the hard limit
at start (`raise_soft_limit`), and services that must budget descriptors
(the websocket service keeps room for the Gloom ports) read the result from
`descriptor_limit()`.
"""

from __future__ import annotations

import resource

__all__ = ["descriptor_limit", "raise_soft_limit"]

#: Where Linux caps any process's descriptors (RLIMIT_NOFILE cannot exceed it).
_NR_OPEN = "/proc/sys/fs/nr_open"


def descriptor_limit() -> int:
    """Descriptors this process may have open: the soft RLIMIT_NOFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _finite(soft)


def raise_soft_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit.

    An unlimited hard limit is taken as the kernel's `nr_open`.  If the
    kernel refuses, the limit stays as it was (and is returned).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _finite(hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return descriptor_limit()
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass
    return descriptor_limit()


def _finite(limit: int) -> int:
    if limit != resource.RLIM_INFINITY:
        return limit
    try:
        with open(_NR_OPEN, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20
