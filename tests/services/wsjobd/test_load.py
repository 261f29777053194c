"""System load: the pure threshold checks, and the sampler against the real machine.

Nothing is mocked: the sampler reads this machine's psutil counters, and the
assertions only use facts that hold on any machine (memory is positive and at
most the total, idle time is 0-100 %).
"""

from __future__ import annotations

import time

import psutil
import pytest
import trio
import trio.testing

from gloomd.wsjobd.load import (
    DEFAULT_CPU_LOW_THRESHOLD,
    DEFAULT_MAX_CLIENT_NUMBER,
    DEFAULT_MEM_LOW_THRESHOLD,
    CpuReading,
    LoadSampler,
    SystemLoad,
    SystemOverloadError,
    Thresholds,
    check_load,
    cpu_idle_percent,
)

pytestmark = pytest.mark.timeout(30)

MiB = 1024**2
TOTAL_MEMORY = psutil.virtual_memory().total


# ------------------------------------------------------------------ check_load, pure


def test_defaults_are_pykits() -> None:
    assert DEFAULT_MEM_LOW_THRESHOLD == 500 * MiB == 524288000
    assert DEFAULT_CPU_LOW_THRESHOLD == 3
    assert DEFAULT_MAX_CLIENT_NUMBER == 1000
    assert Thresholds() == Thresholds(524288000, 3, 1000)


def test_equal_to_every_limit_passes() -> None:
    check_load(SystemLoad(500 * MiB, 3.0, 1000), Thresholds())


@pytest.mark.parametrize(
    ("load", "thresholds", "message"),
    [
        (
            SystemLoad(500 * MiB - 1, 50.0, 1),
            Thresholds(),
            "mem_available: 524287999 is less than: 524288000",
        ),
        (SystemLoad(10**12, 2.99, 1), Thresholds(), "cpu_idle_percent: 2 is less than: 3"),
        (SystemLoad(10**12, 50.0, 1001), Thresholds(), "client_number: 1001 is greater than: 1000"),
        # pykit's %d truncated floats in the message, but compared them exactly.
        (
            SystemLoad(100, 50.0, 1),
            Thresholds(mem_low_threshold=100.5),
            "mem_available: 100 is less than: 100",
        ),
        (
            SystemLoad(10**12, 99.9, 1),
            Thresholds(cpu_low_threshold=100.1),
            "cpu_idle_percent: 99 is less than: 100",
        ),
        (
            SystemLoad(10**12, 50.0, 2),
            Thresholds(max_client_number=1.5),
            "client_number: 2 is greater than: 1",
        ),
        # Several limits broken: memory is reported first, then CPU.
        (SystemLoad(0, 0.0, 5000), Thresholds(), "mem_available: 0 is less than: 524288000"),
        (SystemLoad(10**12, 0.0, 5000), Thresholds(), "cpu_idle_percent: 0 is less than: 3"),
    ],
)
def test_overload_messages(load: SystemLoad, thresholds: Thresholds, message: str) -> None:
    with pytest.raises(SystemOverloadError) as caught:
        check_load(load, thresholds)
    assert caught.value.args == (message,)


def test_zero_thresholds_always_pass_and_client_limit_is_inclusive() -> None:
    check_load(SystemLoad(0, 0.0, 1), Thresholds(0, 0, 1))


def test_system_load_dict_uses_pykits_keys() -> None:
    assert SystemLoad(1, 2.5, 3).as_dict() == {
        "mem_available": 1,
        "cpu_idle_percent": 2.5,
        "client_number": 3,
    }


# ------------------------------------------------------------------ cpu_idle_percent, pure


def test_idle_percent_divides_by_elapsed_cpu_time_not_by_one_second() -> None:
    # 20 ms on 2 CPUs, half idle: psutil's max(1, delta) would say 2 %.
    before = CpuReading(idle=100.0, total=200.0)
    after = CpuReading(idle=100.02, total=200.04)
    assert cpu_idle_percent(before, after) == 50.0


def test_idle_percent_bounds() -> None:
    before = CpuReading(idle=10.0, total=20.0)
    assert cpu_idle_percent(before, CpuReading(idle=11.0, total=21.0)) == 100.0
    assert cpu_idle_percent(before, CpuReading(idle=10.0, total=21.0)) == 0.0
    # Counters that went backwards (seen on some kernels) are clamped, not negative.
    assert cpu_idle_percent(before, CpuReading(idle=9.0, total=21.0)) == 0.0


def test_no_elapsed_cpu_time_means_no_answer() -> None:
    reading = CpuReading(idle=10.0, total=20.0)
    assert cpu_idle_percent(reading, reading) is None


# ------------------------------------------------------------------ the sampler, real psutil


def _plausible(sample: tuple[int, float]) -> None:
    mem, idle = sample
    assert isinstance(mem, int) and 0 < mem <= TOTAL_MEMORY
    assert isinstance(idle, float) and 0.0 <= idle <= 100.0


async def test_sample_is_plausible(nursery: trio.Nursery) -> None:
    sampler = LoadSampler(nursery)
    _plausible(await sampler.sample(0.02))
    # Zero windows compare with the previous reading (or boot, the first time).
    _plausible(await sampler.sample(0))
    _plausible(await sampler.sample(0))


async def test_the_window_is_a_trio_sleep_not_a_blocked_thread(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Under the autojump clock a trio.sleep(10) passes at once; a thread sleeping
    # for the window (as psutil.cpu_times_percent does) would take 10 real seconds.
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        sampler = LoadSampler(nursery)
        _plausible(await sampler.sample(10))
    assert time.monotonic() - started < 5
    assert trio.current_time() >= 10


async def test_concurrent_askers_share_one_sampling(nursery: trio.Nursery) -> None:
    sampler = LoadSampler(nursery)
    results: list[tuple[int, float]] = []

    async def ask() -> None:
        results.append(await sampler.sample(0.05))

    async with trio.open_nursery() as askers:
        for _ in range(20):
            askers.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        assert list(sampler._pending) == [0.05]
    assert len(results) == 20 and len(set(results)) == 1
    _plausible(results[0])
    assert not sampler._pending


async def test_a_cancelled_asker_does_not_strand_the_others(nursery: trio.Nursery) -> None:
    sampler = LoadSampler(nursery)
    got: list[tuple[int, float]] = []

    async def ask() -> None:
        got.append(await sampler.sample(0.05))

    async with trio.open_nursery() as askers:
        with trio.CancelScope() as leaving:
            askers.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            # The asker that triggered the sampling goes away...
            leaving.cancel()
        # ...which does not touch the sampling task, run by the sampler's nursery.
        askers.start_soon(ask)
    assert len(got) == 2


async def test_cancelling_the_sampler_fails_waiting_askers_cleanly() -> None:
    from gloomd.wsjobd.load import LoadSamplingError

    outcome: list[BaseException] = []
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as sampler_nursery:
            sampler = LoadSampler(sampler_nursery)

            async def ask() -> None:
                try:
                    await sampler.sample(5)
                except LoadSamplingError as exc:
                    outcome.append(exc)

            outer.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            sampler_nursery.cancel_scope.cancel()
    assert len(outcome) == 1 and "cancelled" in str(outcome[0])


@pytest.mark.parametrize("window", [-0.1, float("inf"), float("nan")])
async def test_bad_windows_are_refused(nursery: trio.Nursery, window: float) -> None:
    with pytest.raises(ValueError):
        await LoadSampler(nursery).sample(window)
