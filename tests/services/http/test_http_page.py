"""The status page in a real browser: Debian's headless Chromium, driven by selenium.

A real gloomd (GloomServer plus HttpService in this trio run) holds jobs of
two types; the page must show their counts, follow them as jobs finish, fit
a phone-sized window, and with a token ask for it once and work after.  The
browser runs in worker threads (selenium blocks) while trio serves.

The browser comes from apt (.ci/install-browser, run by .ci/run): a browser
build downloaded by a Python package cannot run on these machines.  Without
it the tests skip, except under CI, where a missing browser is a failure.

Dead letters are kicked and deleted by clicking the page's own buttons.
Screenshots are kept in the test's tmp dir (pytest --basetemp=DIR to keep
them); the README's picture, docs/status-page.png, comes from a longer run
with more traffic: benchmarks/status_page_demo.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from gloomd.server import GloomServer
from tests.support.httpkit import start_http
from tests.support.wire import Peer, join

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 20.0  # seconds the DOM may take to show a state (the page polls every second)

_browser_missing = not (CHROMIUM.exists() and CHROMEDRIVER.exists())
if _browser_missing and os.environ.get("CI"):
    pytest.fail("Chromium is missing under CI: .ci/install-browser should have installed it")
pytestmark = pytest.mark.skipif(_browser_missing, reason="no Chromium: run .ci/install-browser")

if not _browser_missing:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait


FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,1000",
)


class Browser:
    """One headless Chromium with a fresh profile; every call blocks (run it in a thread)."""

    def __init__(self, workdir: Path) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={workdir / 'profile'}")
        # Both paths given: selenium has nothing to look up or download.
        service = Service(
            executable_path=str(CHROMEDRIVER), log_output=str(workdir / "chromedriver.log")
        )
        self.driver = webdriver.Chrome(options=options, service=service)
        self.workdir = workdir

    def cell(self, job_type: str, column: str) -> str:
        selector = f'tr[data-type="{job_type}"] td[data-col="{column}"]'
        return str(self.driver.find_element(By.CSS_SELECTOR, selector).text)

    def wait_for(self, what: str, check: Callable[[], bool]) -> None:
        """Until `check()` holds; elements not there yet count as not holding."""

        def holds(_: Any) -> bool:
            try:
                return check()
            except Exception:
                return False

        WebDriverWait(self.driver, WAIT, poll_frequency=0.1).until(holds, message=what)

    def wait_cells(self, expected: dict[tuple[str, str], str]) -> None:
        for (job_type, column), value in expected.items():
            self.wait_for(
                f"{job_type}.{column} == {value!r}",
                lambda t=job_type, c=column, v=value: self.cell(t, c) == v,
            )

    def text(self, element_id: str) -> str:
        return str(self.driver.find_element(By.ID, element_id).text)

    def visible(self, element_id: str) -> bool:
        return bool(self.driver.find_element(By.ID, element_id).is_displayed())

    def screenshot(self, name: str) -> Path:
        path = self.workdir / name
        assert self.driver.save_screenshot(str(path))
        return path

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    started = await trio.to_thread.run_sync(Browser, tmp_path)
    try:
        yield started
    finally:
        await trio.to_thread.run_sync(started.quit)


async def submit(master: Peer, jobs: list[tuple[int, str]]) -> None:
    for job_id, job_type in jobs:
        reply = await master.request(
            {"action": "submit", "id": job_id, "type": job_type, "body": job_id}
        )
        assert reply == {"ok": True, "id": job_id}


async def respond(slave: Peer) -> None:
    """Answer the held job (a next job, if any, is left for the caller to read)."""
    await slave.send({"action": "respond", "body": "done"})
    assert await slave.recv() == {"ok": True}


async def test_page_shows_live_counts(
    gloomd_server: GloomServer, nursery: trio.Nursery, browser: Browser
) -> None:
    http = await start_http(nursery, gloomd_server)
    master = await Peer.connect(gloomd_server.master_port)
    await submit(master, [(1, "resize"), (2, "resize"), (3, "resize"), (4, "email"), (5, "email")])
    mailer = await join(gloomd_server.slave_port, "email")
    assert (await mailer.recv())["id"] == 4
    url = f"http://127.0.0.1:{http.port}/"

    def first_look() -> None:
        browser.driver.get(url)
        browser.wait_cells(
            {
                ("resize", "queued"): "3",
                ("resize", "running"): "0",
                ("resize", "slaves"): "0 / 0",
                ("email", "queued"): "1",
                ("email", "running"): "1",
                ("email", "slaves"): "0 / 1",
            }
        )
        browser.wait_for("summary", lambda: browser.text("sum-queued") == "4")
        assert browser.text("total-submitted") == "5"
        assert browser.text("conn-masters") == "1"  # the test's master, not the page's
        assert browser.text("version").startswith("v")
        assert browser.text("journal") == "off"
        # No job failed: no dead letters, and the page says so.
        browser.wait_for("dead note", lambda: browser.text("dead-note") == "No dead letters.")
        # The lifecycle's figures: nothing delayed or dead, nothing paused.
        assert browser.cell("resize", "delayed") == "0"
        assert browser.cell("resize", "dead") == "0"
        assert browser.cell("resize", "paused") == "no"

    await trio.to_thread.run_sync(first_look)

    # The email slave finishes job 4 and is handed job 5; a resize slave joins.
    await respond(mailer)
    assert (await mailer.recv())["id"] == 5
    resizer = await join(gloomd_server.slave_port, "resize")
    assert (await resizer.recv())["id"] == 1

    def after_progress() -> None:
        browser.wait_cells(
            {
                ("email", "queued"): "0",
                ("email", "running"): "1",
                ("resize", "queued"): "2",
                ("resize", "running"): "1",
                ("resize", "slaves"): "0 / 1",
            }
        )
        browser.wait_for("completed total", lambda: "completed 1" in browser.text("totals"))

    await trio.to_thread.run_sync(after_progress)

    # Everything finishes: the email row empties to an idle slave.
    await respond(mailer)
    for expected in (2, 3):
        await respond(resizer)
        assert (await resizer.recv())["id"] == expected
    await respond(resizer)

    def drained() -> None:
        browser.wait_cells(
            {
                ("email", "queued"): "0",
                ("email", "running"): "0",
                ("email", "slaves"): "1 / 0",
                ("resize", "queued"): "0",
                ("resize", "slaves"): "1 / 0",
            }
        )
        browser.wait_for("completed total", lambda: "completed 5" in browser.text("totals"))
        # The chart has drawn the throughput from successive polls.
        browser.wait_for(
            "chart",
            lambda: (
                len(
                    browser.driver.find_element(By.CSS_SELECTOR, "#chart polyline.rate")
                    .get_attribute("points")
                    .split()
                )
                >= 2
            ),
        )
        browser.screenshot("status-page.png")

    await trio.to_thread.run_sync(drained)


async def test_page_fits_a_phone(
    gloomd_server: GloomServer, nursery: trio.Nursery, browser: Browser
) -> None:
    http = await start_http(nursery, gloomd_server)
    master = await Peer.connect(gloomd_server.master_port)
    await submit(master, [(i, f"a-rather-long-job-type-name-{i % 4}") for i in range(12)])

    def look() -> None:
        browser.driver.set_window_size(390, 844)
        browser.driver.get(f"http://127.0.0.1:{http.port}/")
        browser.wait_cells({("a-rather-long-job-type-name-0", "queued"): "3"})
        # The page itself never scrolls sideways; wide tables scroll in their box.
        width = browser.driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert width[0] <= width[1], width
        browser.screenshot("status-page-phone.png")

    await trio.to_thread.run_sync(look)


async def test_page_asks_for_the_token_once(
    gloomd_server: GloomServer, nursery: trio.Nursery, browser: Browser
) -> None:
    http = await start_http(nursery, gloomd_server, token="letmein")
    master = await Peer.connect(gloomd_server.master_port)
    await submit(master, [(1, "secret-work"), (2, "secret-work")])
    url = f"http://127.0.0.1:{http.port}/"

    def log_in() -> None:
        driver = browser.driver
        driver.get(url)
        browser.wait_for("token form", lambda: browser.visible("auth"))
        assert not browser.visible("main")
        assert not browser.visible("auth-error")
        token = driver.find_element(By.ID, "token")
        token.send_keys("wrong")
        driver.find_element(By.CSS_SELECTOR, "#auth-form button").click()
        browser.wait_for("refusal", lambda: browser.visible("auth-error"))
        assert not browser.visible("main")
        driver.find_element(By.ID, "token").send_keys("letmein")
        driver.find_element(By.CSS_SELECTOR, "#auth-form button").click()
        browser.wait_cells({("secret-work", "queued"): "2"})
        assert not browser.visible("auth")
        assert driver.execute_script("return sessionStorage.getItem('gloomd.token')") == "letmein"
        # A reload in the same tab does not ask again.
        driver.refresh()
        browser.wait_cells({("secret-work", "queued"): "2"})
        assert not browser.visible("auth")
        browser.screenshot("status-page-token.png")

    await trio.to_thread.run_sync(log_in)


async def test_dead_letters_are_kicked_and_deleted_from_the_page(
    gloomd_server: GloomServer, nursery: trio.Nursery, browser: Browser
) -> None:
    """Two detached jobs fail and become dead letters; the page lists them, its
    kick button puts one back in the queue and its delete button removes the
    other, as the daemon's own state confirms."""
    http = await start_http(nursery, gloomd_server)
    master = await Peer.connect(gloomd_server.master_port)
    worker = await join(gloomd_server.slave_port, "report")
    for job_id in ("kick-me", "delete-me"):
        reply = await master.request(
            {"action": "submit", "id": job_id, "type": "report", "body": None, "detach": True}
        )
        assert reply == {"ok": True, "id": job_id}
        assert (await worker.recv())["id"] == job_id
        await worker.send({"action": "fail", "error": "ERROR", "reason": "broken"})
        assert await worker.recv() == {"ok": True}
        assert (await master.recv())["error"] == "job_error"
    await worker.aclose()  # nobody takes the kicked job: it stays queued
    url = f"http://127.0.0.1:{http.port}/"

    def dead_ids() -> list[str]:
        rows = browser.driver.find_elements(By.CSS_SELECTOR, "#dead tbody tr")
        return [str(row.get_attribute("data-id")) for row in rows]

    def click(job_id: str, button: str) -> None:
        selector = f'#dead tr[data-id="{job_id}"] button.{button}'
        browser.driver.find_element(By.CSS_SELECTOR, selector).click()

    def kick_and_delete() -> None:
        browser.driver.get(url)
        browser.wait_for("two dead letters", lambda: dead_ids() == ["kick-me", "delete-me"])
        browser.wait_cells({("report", "dead"): "2", ("report", "queued"): "0"})
        browser.screenshot("dead-letters.png")
        click("kick-me", "kick")
        browser.wait_for("kicked", lambda: dead_ids() == ["delete-me"])
        browser.wait_cells({("report", "dead"): "1", ("report", "queued"): "1"})
        click("delete-me", "delete")
        browser.wait_for("deleted", lambda: dead_ids() == [])
        browser.wait_for("note", lambda: browser.text("dead-note") == "No dead letters.")
        browser.wait_cells({("report", "dead"): "0", ("report", "queued"): "1"})

    await trio.to_thread.run_sync(kick_and_delete)
    page = await master.request({"action": "jobs", "type": "report"})
    assert [(row["id"], row["state"], row["attempt"]) for row in page["jobs"]] == [
        ("kick-me", "queued", 1)
    ]
    assert await master.request({"action": "result", "id": "delete-me"}) == {
        "error": "unknown_id",
        "reason": "delete-me",
    }
