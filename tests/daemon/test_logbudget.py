"""A peer's frames cannot flood the log: a budget per connection (issue 18); no sockets."""

from __future__ import annotations

import logging

import pytest

from gloomd.logs import LogBudget
from tests.support.brokerkit import Kit
from tests.support.logs import log_text, message


def test_a_peer_cannot_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gloomd")
    k = Kit(log_burst=5, log_rate=1.0)
    s = k.broker.connect_slave("noisy")
    other = k.broker.connect_slave("quiet")
    for _ in range(50):
        k.send(s, {"action": "join", "type": "t"})
    k.send(other, {"action": "join", "type": "t"})  # its own budget

    def joins(name: str) -> int:
        return sum(f"event=join slave={name} " in message(r) for r in caplog.records)

    assert joins("noisy") == 5 and joins("quiet") == 1
    k.clock.now += 2.0  # two lines' worth refilled
    k.send(s, {"action": "join", "type": "t"})
    assert "event=log_suppressed peer=noisy lines=45" in log_text(caplog)
    assert joins("noisy") == 6
    for _ in range(3):
        k.send(s, {"action": "join", "type": "t"})
    k.broker.disconnect(s)  # what was held back since is reported at the end
    assert "event=log_suppressed peer=noisy lines=2" in log_text(caplog)


def test_budget_refills_at_its_rate() -> None:
    budget = LogBudget()
    assert [budget.allow(0.0, 2.0, 3, "p") for _ in range(4)] == [True, True, True, False]
    assert budget.suppressed == 1
    assert budget.allow(0.5, 2.0, 3, "p") and not budget.allow(0.5, 2.0, 3, "p")
    assert budget.allow(100.0, 2.0, 3, "p")  # refills to the burst, not beyond
    assert [budget.allow(100.0, 2.0, 3, "p") for _ in range(3)] == [True, True, False]
