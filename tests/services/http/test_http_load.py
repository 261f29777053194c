"""1,000 concurrent /metrics scrapes while jobs flow through the Gloom ports.

Three processes, so that each figure is the daemon's and not a client's:
the daemon (benchmarks/http_scrape.py serve: the Gloom ports and the HTTP
port in one trio run, as gloomd will run them), this test driving jobs
through 4 slaves and one master (window 200), and the scrapers
(http_scrape.py burst: 1,000 connections at once, each GET /metrics).  The
jobs must all come back and keep coming back during the burst; every scrape
must be a 200.  The p99 round trips of jobs (before and during the burst)
and of the scrapes are printed (pytest -s) and recorded as test properties.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Iterator

import pytest
import trio

from benchmarks import http_scrape
from benchmarks.http_scrape import start_with_http
from benchmarks.servers import Server
from tests.support.wire import Peer, join

JOBS = 30_000
WINDOW = 200
SLAVES = 4
SCRAPES = 1_000
BURST_AFTER = 2_000  # jobs answered before the burst starts


@pytest.fixture
def daemon() -> Iterator[tuple[Server, int]]:
    with tempfile.TemporaryDirectory(prefix="http-load-") as tmp:
        server, port = start_with_http(tmp)
        try:
            yield server, port
        finally:
            server.stop()


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.mark.timeout(180)
async def test_1000_concurrent_scrapes_while_jobs_flow(
    daemon: tuple[Server, int], wire_peers: None, record_property: Callable[[str, object], None]
) -> None:
    server, http_port = daemon
    sent: dict[int, float] = {}
    latencies: list[tuple[float, float]] = []  # (answered at, round trip)
    burst_go = trio.Event()
    burst: dict[str, float] = {}
    report: dict[str, object] = {}

    async def slave() -> None:
        peer = await join(server.slave[1], "load")
        while True:
            job = await peer.recv()
            await peer.send({"action": "respond", "body": job["id"]})
            assert await peer.recv() == {"ok": True}

    async def master() -> None:
        peer = await Peer.connect(server.master[1])
        window = trio.Semaphore(WINDOW)

        async def submit_all() -> None:
            for job_id in range(JOBS):
                await window.acquire()
                sent[job_id] = trio.current_time()
                await peer.send({"action": "submit", "id": job_id, "type": "load", "body": None})

        async with trio.open_nursery() as inner:
            inner.start_soon(submit_all)
            answered = 0
            while answered < JOBS:
                frame = await peer.recv()
                if "body" in frame:
                    now = trio.current_time()
                    latencies.append((now, now - sent.pop(frame["id"])))
                    answered += 1
                    window.release()
                    if answered == BURST_AFTER:
                        burst_go.set()

    async def scrapers() -> None:
        await burst_go.wait()
        burst["start"] = trio.current_time()
        done = await trio.run_process(
            [
                sys.executable,
                http_scrape.HERE,
                "burst",
                "--port",
                str(http_port),
                "--count",
                str(SCRAPES),
            ],
            capture_stdout=True,
        )
        burst["end"] = trio.current_time()
        report.update(json.loads(done.stdout))

    with trio.fail_after(150):
        async with trio.open_nursery() as nursery:
            for _ in range(SLAVES):
                nursery.start_soon(slave)
            nursery.start_soon(scrapers)
            await master()
            with trio.fail_after(60):
                while "end" not in burst:  # the jobs ran out before the burst did
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    assert len(latencies) == JOBS
    assert report["statuses"] == {"200": SCRAPES}, report
    during = [rtt for at, rtt in latencies if burst["start"] <= at <= burst["end"]]
    before = [rtt for at, rtt in latencies if at < burst["start"]]
    # The Gloom ports kept answering while the 1,000 scrapes were served.
    assert during, "no job came back during the scrape burst"
    figures = {
        "burst_s": round(burst["end"] - burst["start"], 3),
        "jobs_during_burst": len(during),
        "job_p99_ms_before": round(p99(before) * 1e3, 1),
        "job_p99_ms_during": round(p99(during) * 1e3, 1),
        "scrape_p99_ms": report["p99_ms"],
    }
    for key, value in figures.items():
        record_property(key, value)
    print("\nhttp load:", figures)
