"""A few minutes of mixed traffic, then a screenshot of the status page for the README.

    python benchmarks/status_page_demo.py                       # 90 s, docs/status-page.png
    python benchmarks/status_page_demo.py --seconds 20 --out /tmp/page.png

Starts the daemon with its HTTP port (``benchmarks/http_scrape.py serve``),
opens the page in Debian's headless Chromium (selenium, as the tests do),
then runs several job types at different rates through the Gloom ports:
slaves that take a little time per job, some jobs that fail, a type with no
slave (its queue grows), and bursts so the chart has a shape.  Every loop is
bounded by `--seconds`; the script stops by itself.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio

import gloom
from benchmarks.http_scrape import start_with_http

ROOT = Path(__file__).resolve().parent.parent

#: (type, slaves, seconds per job, share of jobs that fail, jobs per second offered)
TYPES: list[tuple[Any, int, float, float, float]] = [
    ("resize", 3, 0.02, 0.0, 90.0),
    ("email", 1, 0.05, 0.05, 15.0),
    ("thumbnail", 2, 0.01, 0.0, 120.0),
    ("report", 0, 0.0, 0.0, 0.5),  # nobody serves it: its queue grows
    ({"pipeline": "etl", "stage": 2}, 1, 0.2, 0.1, 4.0),  # a type need not be a string
]


async def slave(
    host: str, port: int, job_type: Any, cost: float, fail: float, until: float
) -> None:
    async with gloom.open_slave(host, port, reconnect=False) as s:
        await s.join(job_type)
        with trio.move_on_at(until):
            while True:
                job = await s.next_job()
                await trio.sleep(cost * random.uniform(0.5, 1.5))
                if random.random() < fail:
                    await job.fail("ERROR", "demo failure")
                else:
                    await job.respond({"ok": True})


async def feed(master: gloom.AsyncMaster, job_type: Any, rate: float, until: float) -> None:
    started = trio.current_time()
    interval = max(0.1, 1.0 / rate)
    with trio.move_on_at(until):
        while True:
            # Half as much again for 10 s in every 40, so the chart has a shape.
            factor = 1.5 if (trio.current_time() - started) % 40 > 30 else 1.0
            batch = max(1, round(rate * interval * factor))
            await master.submit_many([{"type": job_type, "body": None}] * batch)
            await trio.sleep(interval)


async def traffic(host: str, master_port: int, slave_port: int, seconds: float, shot: Any) -> None:
    """Run the traffic; take the screenshot while it still flows, then stop."""
    until = trio.current_time() + seconds + 5
    async with gloom.open_master(host, master_port) as master, trio.open_nursery() as nursery:
        for job_type, slaves, cost, fail, rate in TYPES:
            for _ in range(slaves):
                nursery.start_soon(slave, host, slave_port, job_type, cost, fail, until)
            nursery.start_soon(feed, master, job_type, rate, until)
        await trio.sleep(seconds)
        await trio.to_thread.run_sync(shot)
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "status-page.png")
    args = ap.parse_args(argv)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="page-demo-") as tmp:
        server, http_port = start_with_http(tmp)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in (
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--window-size=1200,1000", f"--user-data-dir={tmp}/profile",
        ):  # fmt: skip
            options.add_argument(flag)
        driver = webdriver.Chrome(
            options=options, service=Service(executable_path="/usr/bin/chromedriver")
        )
        try:
            # The page opens first so that its chart covers the whole run.
            driver.get(f"http://127.0.0.1:{http_port}/")
            host, master_port = server.master
            args.out.parent.mkdir(parents=True, exist_ok=True)
            trio.run(
                traffic, host, master_port, server.slave[1], args.seconds,
                lambda: driver.save_screenshot(str(args.out)),
            )  # fmt: skip
        finally:
            driver.quit()
            server.stop()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
