"""Issue 18's targets, asserted: every attack of `benchmarks.attacks` in its quick form.

Each test starts its own gloomd, runs one attack with the well-behaved probe
timing round trips beside it (see the benchmark's docstring), and asserts the
targets: the daemon stays up, no round trip takes 250 ms or more, the daemon's
RSS stays under 2x what its caps allow (`rss_bound`), and the attack's own
checks hold.  The quick sizes are a few seconds each; the full sizes are the
benchmark's (``python -m benchmarks.attacks``).

Two more tests keep the harness honest: it must report a daemon that dies
and a daemon that stalls, or the green rows would mean nothing.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from benchmarks.attack_limits import KiB, MiB
from benchmarks.attacks import ATTACKS, Attack, Caps, Ctx, Result, rss_bound, run_attack

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_meets_the_targets(name: str) -> None:
    result = run_attack(ATTACKS[name], quick=True)
    if _only_slow(result):
        # A round trip is wall-clock time, and on a shared 2-core machine
        # another process' burst can stretch one run past 250 ms (seen at
        # load average ~4).  A daemon that really stalls under the attack
        # stalls in the second run too; every other target is judged once.
        first = result.failures()
        result = run_attack(ATTACKS[name], quick=True)
        assert result.passed, f"{name} (run twice; first: {first}): " + "; ".join(result.failures())
    assert result.passed, f"{name}: " + "; ".join(result.failures())


def _only_slow(result: Result) -> bool:
    """The round-trip target is the only one missed, with no failed round trip."""
    return (
        result.up
        and not result.rt_ok
        and not result.rt_errors
        and result.rt_worst_ms is not None
        and len(result.failures()) == 1
    )


def _custom(name: str, body: Callable[[Ctx], None], expects: tuple[str, ...] = ()) -> Attack:
    return Attack(name, "self-test", body, {}, {}, {}, {}, "peak", False, False, None, expects)


def test_harness_reports_a_daemon_that_dies() -> None:
    def kill(ctx: Ctx) -> None:
        ctx.begin()
        os.kill(ctx.daemon.pid, signal.SIGKILL)
        ctx.daemon.proc.wait(5)

    result = run_attack(_custom("kill", kill), quick=True)
    assert not result.up and result.exit_status == -signal.SIGKILL
    assert not result.passed and result.error == ""


def test_harness_measures_a_stalled_daemon() -> None:
    """SIGSTOP for 0.4 s: the probe's round trip in flight must show the stall."""

    def stall(ctx: Ctx) -> None:
        ctx.begin()
        os.kill(ctx.daemon.pid, signal.SIGSTOP)
        try:
            time.sleep(0.4)  # the stall being measured, not a wait for state
        finally:
            os.kill(ctx.daemon.pid, signal.SIGCONT)

    result = run_attack(_custom("stall", stall), quick=True)
    assert result.up
    assert result.rt_worst_ms is not None and result.rt_worst_ms >= 250, result.rt_worst_ms
    assert not result.rt_ok and not result.passed


def test_a_check_the_daemon_cut_short_fails() -> None:
    """The daemon dropping the attacker is noted, but the check it prevented is not a pass."""

    def cut(ctx: Ctx) -> None:
        ctx.begin()
        raise ConnectionResetError("reset by peer")

    result = run_attack(_custom("cut", cut, expects=("the check",)), quick=True)
    assert result.up and result.error == ""
    assert [(c.name, c.ok) for c in result.checks] == [("the check", False)]
    assert any("ConnectionResetError" in note for note in result.notes)
    assert not result.passed


def test_rss_bound_formula() -> None:
    caps = Caps(max_frame=1 * MiB, max_outbuf=4 * MiB, max_result_bytes=32 * MiB, ws_max_jobs=64)
    # README's formula: 2 x (2F + 256 KiB + 2O) + F + 64 B x V + O + 2 x 256 KiB.
    per_conn = 2 * MiB + 256 * KiB + 8 * MiB
    once = 1 * MiB + 64 * 262_144 + 4 * MiB
    assert rss_bound(caps, 30 * MiB, conns=2) == 30 * MiB + 2 * per_conn + once + 2 * 256 * KiB
    once = 1 * MiB + 64 * 262_144 + 4 * MiB
    assert rss_bound(caps, 0, conns=0, stores=("results",)) == once + 32 * MiB
    # Running websocket jobs count up to the job cap only.
    assert rss_bound(caps, 0, conns=0, ws_jobs=600) == once + 64 * caps.ws_max_message
