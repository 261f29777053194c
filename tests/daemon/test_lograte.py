"""RateLimitedLog: a burst per event per window, then a count of what was held back."""

from __future__ import annotations

import logging

import pytest

from gloomd.logs import RateLimitedLog
from tests.support.logs import log_text, message

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_silence_then_the_count(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.lograte")
    clock = Clock()
    events = RateLimitedLog(logger, burst=3, window=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.lograte"):
        for i in range(50):
            events.log(logging.INFO, "refused", remote=f"peer{i}")
        events.log(logging.INFO, "other", x=1)  # another event has its own budget
        assert [message(r) for r in caplog.records] == [
            "event=refused remote=peer0",
            "event=refused remote=peer1",
            "event=refused remote=peer2",
            "event=other x=1",
        ]
        caplog.clear()
        clock.now += 9.9
        events.log(logging.INFO, "refused", remote="late")
        assert caplog.records == []  # still the same window
        clock.now += 0.1
        events.log(logging.INFO, "refused", remote="next")
        assert [message(r) for r in caplog.records] == ["event=refused remote=next suppressed=48"]


def test_disabled_levels_are_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.lograte.levels")
    events = RateLimitedLog(logger, burst=1, window=10.0, clock=Clock())
    with caplog.at_level(logging.INFO, logger="test.lograte.levels"):
        for _ in range(5):
            events.log(logging.DEBUG, "chatty")
        events.log(logging.WARNING, "chatty")
    assert [message(r) for r in caplog.records] == ["event=chatty"]


def test_tracebacks_go_through(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.lograte.exc")
    events = RateLimitedLog(logger, burst=1, window=10.0, clock=Clock())
    with caplog.at_level(logging.INFO, logger="test.lograte.exc"):
        try:
            raise ValueError("boom")
        except ValueError as exc:
            events.log(logging.ERROR, "failed", id=7, exc_info=exc)
            events.log(logging.ERROR, "failed", id=8, exc_info=exc)
    assert len(caplog.records) == 1
    assert caplog.records[0].exc_info is not None and "boom" in log_text(caplog)
