"""Tests of the wire package, gloomwire: framing, the codec and its policy.

Transition, for this branch only: see tests/daemon/__init__.py.
"""

from tests.support.wire import frame, raw_frame

__all__ = ["frame", "raw_frame"]
