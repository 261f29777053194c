"""The job lifecycle's costs on a real gloomd (issue 14), one fresh daemon per part.

* delayed: N jobs (1,000,000) submitted with a `delay` that ends at one moment:
  the daemon's memory per delayed job, and the time from that moment until
  every one of them is queued (stats says `delayed` 0).
* page: `jobs` at N queued (the delayed jobs once ready): the round trip of a
  first page, of pages followed by cursor, and of a filter that matches
  nothing (bounded work: no sort, no scan of the million).
* retries: R jobs (100,000) that fail once (`fail` ERROR) and succeed on their
  retry (`retries` 1, `backoff` 0.001), against the same R jobs without
  retries: the cost of one retry per job.
* kick: K dead letters (100,000) kicked by type while another connection's
  ping round trips are timed: the kick's time and the longest stall it causes.

In every part a probe connection times ping round trips (another connection's
traffic): p50, p99 and max while the part runs.  Every loop is bounded in count
and in time (`--budget` seconds per wait).  Prints one line per figure, then
one JSON object with all of them.

    python -m benchmarks.lifecycle            # full sizes (about 2 minutes)
    python -m benchmarks.lifecycle --quick    # small sizes, a smoke test
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from benchmarks.procstat import memory_kb
from benchmarks.servers import Server, start_server

_HEAD = struct.Struct(">I")


def frame(obj: Any) -> bytes:
    data = orjson.dumps(obj)
    return _HEAD.pack(len(data)) + data


class Wire:
    """One blocking connection: frames out in batches, frames in one at a time."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.sock = socket.create_connection(addr, timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def send(self, objs: Iterable[Any]) -> None:
        self.sock.sendall(b"".join(frame(o) for o in objs))

    def recv(self) -> Any:
        while True:
            if len(self.buf) >= 4:
                (size,) = _HEAD.unpack_from(self.buf)
                if len(self.buf) >= 4 + size:
                    data = bytes(self.buf[4 : 4 + size])
                    del self.buf[: 4 + size]
                    return orjson.loads(data)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("gloomd closed the connection")
            self.buf += chunk

    def request(self, obj: Any) -> Any:
        self.send([obj])
        return self.recv()

    def close(self) -> None:
        self.sock.close()


class Reader(threading.Thread):
    """Reads `count` frames from a connection (acks, results), each through `check`."""

    def __init__(self, wire: Wire, count: int, check: Callable[[Any], None]) -> None:
        super().__init__(daemon=True)
        self.wire, self.count, self.check = wire, count, check
        self.read = 0
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while self.read < self.count:
                self.check(self.wire.recv())
                self.read += 1
        except BaseException as exc:  # reported by wait()
            self.error = exc
        finally:
            self.done.set()

    def wait(self, budget: float) -> None:
        if not self.done.wait(budget):
            raise TimeoutError(f"{self.read} of {self.count} frames in {budget} s")
        if self.error is not None:
            raise self.error


class Probe(threading.Thread):
    """Another connection's ping round trips, timed, until stopped (bounded by `budget`)."""

    def __init__(self, addr: tuple[str, int], budget: float) -> None:
        super().__init__(daemon=True)
        self.wire = Wire(addr)
        self.budget = budget
        self.trips: list[tuple[float, float]] = []  # (start, seconds)
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.budget
        while not self.stop.is_set() and time.monotonic() < deadline:
            start = time.perf_counter()
            assert self.wire.request({"action": "ping"}) == {"ok": True}
            self.trips.append((start, time.perf_counter() - start))
        self.wire.close()

    def figures(self, since: float, until: float) -> dict[str, float]:
        window = sorted(s for t, s in self.trips if since <= t <= until)
        if not window:
            return {"probe_trips": 0}
        return {
            "probe_trips": len(window),
            "probe_p50_ms": round(window[len(window) // 2] * 1e3, 3),
            "probe_p99_ms": round(window[min(len(window) - 1, int(len(window) * 0.99))] * 1e3, 3),
            "probe_max_ms": round(window[-1] * 1e3, 3),
        }

    def end(self) -> None:
        self.stop.set()
        self.join(10)


def submit_all(wire: Wire, frames: Iterable[Any], count: int, budget: float) -> None:
    """Send `count` submits in batches while a reader checks every ack."""

    def ack(f: Any) -> None:
        assert f.get("ok") is True, f

    reader = Reader(wire, count, ack)
    reader.start()
    batch: list[Any] = []
    for obj in frames:
        batch.append(obj)
        if len(batch) == 5000:
            wire.send(batch)
            batch = []
    wire.send(batch)
    reader.wait(budget)


def stats_row(wire: Wire, job_type: str) -> dict[str, Any]:
    rows = wire.request({"action": "stats", "type": job_type})["stats"]["types"]
    return rows[0] if rows else {}


def until(condition: Callable[[], bool], budget: float) -> float:
    """Poll `condition` (each poll a round trip); the monotonic time it held."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
    raise TimeoutError(f"not within {budget} s")


def rss_kib(server: Server) -> int:
    return memory_kb(server.pid)["VmRSS"]


# ---------------------------------------------------------------- parts


def delayed_then_page(n: int, budget: float, out: dict[str, Any]) -> None:
    with start_server("gloomd", ["--no-http", "--max-queued", str(2 * n)]) as server:
        master, admin = Wire(server.master), Wire(server.master)
        rss0 = rss_kib(server)
        margin = max(3.0, n / 50_000)  # submits must all be in before the moment
        fire_at = time.time() + margin
        started = time.perf_counter()
        late = 0

        def submits() -> Iterable[Any]:
            nonlocal late
            for i in range(n):
                delay = round(fire_at - time.time(), 4)
                late += delay <= 0
                yield {"action": "submit", "id": i, "type": "later", "body": None,
                       "delay": max(delay, 0)}  # fmt: skip

        submit_all(master, submits(), n, budget)
        submitted_s = time.perf_counter() - started
        rss1 = rss_kib(server)
        assert stats_row(admin, "later")["delayed"] == n - late
        probe = Probe(server.master, budget)
        probe.start()
        time.sleep(max(0.0, fire_at - time.time()))  # the moment being measured
        moment = time.monotonic()
        probe_from = time.perf_counter()
        ready = until(lambda: stats_row(admin, "later").get("delayed") == 0, budget)
        probe_to = time.perf_counter()
        probe.end()
        row = stats_row(admin, "later")
        assert row["queued"] == n, row
        out["delayed"] = {
            "jobs": n,
            "submitted_s": round(submitted_s, 2),
            "late_submits": late,
            "rss_mib_before": round(rss0 / 1024, 1),
            "rss_mib_delayed": round(rss1 / 1024, 1),
            "bytes_per_delayed_job": round((rss1 - rss0) * 1024 / n),
            "all_ready_s": round(ready - moment, 3),
            "ready_us_per_job": round((ready - moment) / n * 1e6, 3),
            "rss_mib_ready": round(rss_kib(server) / 1024, 1),
            **probe.figures(probe_from, probe_to),
        }

        # `jobs` at n queued.
        def timed(request: dict[str, Any]) -> tuple[float, Any]:
            start = time.perf_counter()
            page = admin.request(request)
            return (time.perf_counter() - start) * 1e3, page

        first_ms, page = timed({"action": "jobs", "type": "later", "limit": 1000})
        # (Ready in the order their delays ended: each submit's own delay, so not id order.)
        assert len(page["jobs"]) == 1000 and {r["state"] for r in page["jobs"]} == {"queued"}
        follow = []
        request = {"action": "jobs", "type": "later", "limit": 1000, "cursor": page["next"]}
        for _ in range(min(20, n // 1000 - 1)):
            ms, page = timed(request)
            assert len(page["jobs"]) <= 1000 and page["next"] is not None
            follow.append(ms)
            request["cursor"] = page["next"]
        empty_ms, page = timed({"action": "jobs", "state": "dead", "limit": 1000})
        assert page == {"ok": True, "jobs": [], "next": None}
        running_ms, page = timed({"action": "jobs", "state": "running", "limit": 1000})
        follow.sort()
        out["page"] = {
            "queued": n,
            "first_page_ms": round(first_ms, 2),
            "followed_page_ms_median": round(follow[len(follow) // 2], 2),
            "followed_page_ms_max": round(follow[-1], 2),
            "no_match_dead_ms": round(empty_ms, 2),
            "no_match_running_ms": round(running_ms, 2),
        }
        master.close()
        admin.close()


class Slaves(threading.Thread):
    """`count` slave connections in one selectors loop: each fails a job's first
    delivery when `fail_first`, else (and on a redelivery) answers it."""

    def __init__(self, addr: tuple[str, int], job_type: str, count: int, fail_first: bool) -> None:
        super().__init__(daemon=True)
        self.wires = [Wire(addr) for _ in range(count)]
        for wire in self.wires:
            assert wire.request({"action": "join", "type": job_type}) == {"ok": True}
            wire.sock.setblocking(False)
        self.fail_first = fail_first
        self.stop = threading.Event()
        self.failed = self.answered = 0

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        for each in self.wires:
            sel.register(each.sock, selectors.EVENT_READ, each)
        while not self.stop.is_set():
            for key, _ in sel.select(0.1):
                wire: Wire = key.data
                try:
                    chunk = wire.sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                wire.buf += chunk
                out = []
                while len(wire.buf) >= 4:
                    (size,) = _HEAD.unpack_from(wire.buf)
                    if len(wire.buf) < 4 + size:
                        break
                    msg = orjson.loads(bytes(wire.buf[4 : 4 + size]))
                    del wire.buf[: 4 + size]
                    if msg.get("action") != "job":
                        continue  # the ok of a respond or fail
                    if self.fail_first and "attempt" not in msg:
                        self.failed += 1
                        out.append({"action": "fail", "error": "ERROR", "reason": "once"})
                    else:
                        self.answered += 1
                        out.append({"action": "respond", "body": msg["body"]})
                if out:
                    wire.sock.setblocking(True)
                    wire.send(out)
                    wire.sock.setblocking(False)

    def end(self) -> None:
        self.stop.set()
        self.join(10)
        for wire in self.wires:
            wire.close()


def run_jobs(n: int, budget: float, retries: bool) -> dict[str, Any]:
    with start_server("gloomd", ["--no-http"]) as server:
        slaves = Slaves(server.slave, "work", 32, fail_first=retries)
        slaves.start()
        master = Wire(server.master)
        probe = Probe(server.master, budget)
        probe.start()
        extra = {"retries": 1, "backoff": 0.001} if retries else {}
        results = 0

        def check(f: Any) -> None:
            nonlocal results
            if "body" in f:
                results += 1
            else:
                assert f.get("ok") is True, f

        reader = Reader(master, 2 * n, check)  # an ack and a result each
        reader.start()
        start = time.perf_counter()
        for base in range(0, n, 5000):
            master.send(
                {"action": "submit", "id": i, "type": "work", "body": i, **extra}
                for i in range(base, min(n, base + 5000))
            )
        reader.wait(budget)
        seconds = time.perf_counter() - start
        probe.end()
        slaves.end()
        totals = master.request({"action": "stats"})["stats"]["totals"]
        master.close()
        assert results == n and totals["completed"] == n, (results, totals)
        assert totals["retried"] == (n if retries else 0), totals
        return {
            "jobs": n,
            "seconds": round(seconds, 2),
            "jobs_per_s": round(n / seconds),
            "retried": totals["retried"],
            **probe.figures(start, start + seconds),
        }


def retries_part(n: int, budget: float, out: dict[str, Any]) -> None:
    plain = run_jobs(n, budget, retries=False)
    retried = run_jobs(n, budget, retries=True)
    out["retries"] = {
        "plain": plain,
        "retried_once": retried,
        "extra_us_per_retry": round((retried["seconds"] - plain["seconds"]) / n * 1e6, 1),
    }


def kick_part(n: int, budget: float, out: dict[str, Any]) -> None:
    with start_server("gloomd", ["--no-http", "--max-dead", str(n)]) as server:
        feeder, admin = Wire(server.master), Wire(server.master)
        gate = {"action": "submit", "id": "gate", "type": "gate", "body": None, "detach": True}
        assert feeder.request(gate) == {"ok": True, "id": "gate"}
        job = {"action": "submit", "type": "bulk", "body": None, "detach": True}
        submit_all(feeder, ({**job, "id": i, "after": ["gate"]} for i in range(n)), n, budget)
        # The gate's cancel fails its n dependents: detached, they become dead letters.
        assert admin.request({"action": "cancel", "id": "gate"}) == {"ok": True, "id": "gate"}
        until(lambda: stats_row(admin, "bulk").get("dead") == n, budget)
        probe = Probe(server.master, budget)
        probe.start()
        time.sleep(0.2)  # a baseline of round trips before the kick (not a wait for state)
        start = time.perf_counter()
        assert admin.request({"action": "kick", "type": "bulk"}) == {"ok": True, "kicked": n}
        seconds = time.perf_counter() - start
        time.sleep(0.2)
        probe.end()
        row = stats_row(admin, "bulk")
        assert (row["queued"], row["dead"]) == (n, 0), row
        out["kick"] = {
            "dead": n,
            "kick_s": round(seconds, 3),
            "kick_us_per_job": round(seconds / n * 1e6, 2),
            "before": probe.figures(start - 0.2, start),
            "during": probe.figures(start, start + seconds),
        }
        feeder.close()
        admin.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    p.add_argument("--budget", type=float, default=300.0, help="seconds any one wait may take")
    args = p.parse_args(argv)
    delayed_n, retry_n, kick_n = (20_000, 5_000, 5_000) if args.quick else (
        1_000_000, 100_000, 100_000
    )  # fmt: skip
    out: dict[str, Any] = {}
    delayed_then_page(delayed_n, args.budget, out)
    retries_part(retry_n, args.budget, out)
    kick_part(kick_n, args.budget, out)
    for part, figures in out.items():
        print(f"{part}: {json.dumps(figures)}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
