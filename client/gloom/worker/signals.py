"""SIGTERM and SIGINT: the first stops taking jobs and drains, the second halts."""

from __future__ import annotations

import logging
import signal

import trio

from gloomwire.logformat import event

from .state import RunState

__all__ = ["stop_on_signals"]

log = logging.getLogger("gloom.worker")


async def stop_on_signals(run: RunState) -> None:
    """Until cancelled: a first signal gives running jobs `grace` seconds, a
    second one kills them at once (reported HALTED)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        count = 0
        async for signum in signals:
            count += 1
            event(log, "signal", signal=signal.Signals(signum).name, count=count)
            run.stop(force=count > 1)
