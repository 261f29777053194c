"""Tests of the daemon's core: broker, ingest, in-process masters, server, cli.

Transition, for this branch only: the client tests still sit in tests/ and
import `.daemon` and `.wire`, which now name test folders; what they take
from them is re-exported here and in tests/wire from `tests.support`.  Drop
both re-exports once they import `tests.support` (their move to
tests/client/ and tests/worker/).
"""

from tests.support.daemon import Daemon, spawn_gloomd

__all__ = ["Daemon", "spawn_gloomd"]
