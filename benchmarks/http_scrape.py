"""What the HTTP port costs the Gloom ports: idle, and scraped once a second.

    python benchmarks/http_scrape.py                 # 3 rounds, 150,000 jobs each
    python benchmarks/http_scrape.py --rounds 1 --jobs 20000
    python benchmarks/http_scrape.py serve --port-file F   # the daemon it measures
    python benchmarks/http_scrape.py burst --port P --count 1000   # concurrent scrapes

Each round runs the throughput workload (benchmarks.loadgen: 4 slaves, one
master, window 1,000, 100 B bodies) three times on a fresh daemon each:

* ``plain``: gloomd without the HTTP port (``python -m gloomd --no-http``);
* ``idle``: the same daemon with the HTTP port open and nobody using it;
* ``scraped``: the HTTP port scraped on /metrics once a second (by a
  process of its own on one keep-alive connection, as Prometheus does).

The order of the three rotates from round to round so that drift (thermal,
other load) does not always favour one.  It prints one JSON line per run
and a summary: the median jobs/s of each, the cost of an idle port
(1 - idle/plain) and of scraping (1 - scraped/idle), and, since 2 % is
within the run-to-run noise of jobs/s, the direct figure too: the server CPU
one scrape costs, measured by scraping an idle daemon `--scrapes` times,
which at 1 Hz is that many microseconds of each second; and the CPU an
idle daemon uses per second without and with the port (`--idle-seconds`).

`serve` runs the Gloom ports and the HTTP service in one trio run, as
`gloomd --http-port 0` does, and writes the HTTP port to a file.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson

from benchmarks import loadgen, workloads
from benchmarks.procstat import cpu_seconds
from benchmarks.servers import Server, start_reporting, start_server

HERE = os.path.abspath(__file__)


# ---------------------------------------------------------------- the daemon


def serve(argv: list[str]) -> int:
    """Run the Gloom ports plus the HTTP port; print gloomd's ready line."""
    import trio

    from gloomd.cli import GC_INTERVAL, _collect_garbage, _tune_gc
    from gloomd.config import Config
    from gloomd.http import HttpService, HttpSettings
    from gloomd.server import GloomServer

    ap = argparse.ArgumentParser(prog="http_scrape.py serve")
    ap.add_argument("--port-file", help="write the HTTP port here once listening")
    ap.add_argument("--token", default=None)
    args = ap.parse_args(argv)

    async def main() -> None:
        # The generator's connections all come from 127.0.0.1 (see servers.py).
        config = Config(master_port=0, slave_port=0, max_per_host=1_000_000, token=args.token)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                server: GloomServer = await nursery.start(GloomServer(config).run)
                service = HttpService(server, HttpSettings.from_config(config, port=0))
                await nursery.start(service.run)
                port = service.port
                nursery.start_soon(_collect_garbage, GC_INTERVAL)
                if args.port_file:
                    with open(args.port_file + ".tmp", "w") as f:
                        f.write(str(port))
                    os.replace(args.port_file + ".tmp", args.port_file)
                print(
                    f"gloomd ready master=127.0.0.1:{server.master_port} "
                    f"slave=127.0.0.1:{server.slave_port} http=127.0.0.1:{port}",
                    flush=True,
                )
                async for _ in signals:
                    break
                await server.shutdown()
                nursery.cancel_scope.cancel()

    _tune_gc()  # as gloomd's main does, so that only the HTTP port differs
    trio.run(main)
    return 0


def burst(argv: list[str]) -> int:
    """`COUNT` concurrent GET /metrics, each on its own connection; print a JSON line."""
    import trio

    ap = argparse.ArgumentParser(prog="http_scrape.py burst")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--deadline", type=float, default=60.0)
    args = ap.parse_args(argv)
    request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    times: list[float] = []
    statuses: dict[str, int] = {}

    async def one() -> None:
        started = time.perf_counter()
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", args.port)
            async with stream:
                await stream.send_all(request)
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
            status = data[9:12].decode("latin-1") or "none"
        except OSError as exc:
            status = type(exc).__name__
        times.append(time.perf_counter() - started)
        statuses[status] = statuses.get(status, 0) + 1

    async def main() -> None:
        with trio.fail_after(args.deadline):
            async with trio.open_nursery() as nursery:
                for _ in range(args.count):
                    nursery.start_soon(one)

    started = time.perf_counter()
    trio.run(main)
    elapsed = time.perf_counter() - started
    times.sort()
    line = {
        "scrapes": args.count,
        "statuses": statuses,
        "elapsed_s": round(elapsed, 3),
        "p50_ms": round(times[len(times) // 2] * 1e3, 1),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3, 1),
    }
    print(orjson.dumps(line).decode(), flush=True)
    return 0


def start_with_http(tmp: str) -> tuple[Server, int]:
    port_file = os.path.join(tmp, f"http-port-{time.monotonic_ns()}")
    server = start_reporting(
        "gloomd+http", [sys.executable, HERE, "serve", "--port-file", port_file]
    )
    with open(port_file) as f:
        return server, int(f.read())


# ---------------------------------------------------------------- the scraper


def scrape_loop(argv: list[str]) -> int:
    """GET /metrics every `--interval` seconds on one keep-alive connection
    until SIGTERM; then print a JSON line: scrapes, errors, slowest.

    A process of its own, not a thread of the generator: loadgen forks its
    workers, and a fork taken while a thread holds a lock can hang the child.
    """
    ap = argparse.ArgumentParser(prog="http_scrape.py scrape")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    times: list[float] = []
    errors = 0
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
    next_at = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            response.read()
            errors += response.status != 200
        except OSError:
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
        times.append(time.monotonic() - started)
        next_at += args.interval
        stop.wait(max(0.0, next_at - time.monotonic()))
    conn.close()
    line = {"scrapes": len(times), "scrape_errors": errors}
    if times:
        line["scrape_max_ms"] = round(max(times) * 1e3, 2)
    print(orjson.dumps(line).decode(), flush=True)
    return 0


def scrape_cost(scrapes: int, tmp: str, types: int = 10) -> dict[str, Any]:
    """Server CPU per scrape of an idle daemon holding jobs of `types` types."""
    server, port = start_with_http(tmp)
    master = socket.create_connection(server.master)
    try:
        for i in range(types):
            payload = orjson.dumps({"action": "submit", "id": i, "type": f"type-{i}", "body": i})
            master.sendall(struct.pack(">I", len(payload)) + payload)
        acks = b""
        while acks.count(b'"ok"') < types:
            acks += master.recv(65536)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        sizes = []
        for _ in range(20):  # warm up (imports, first render)
            conn.request("GET", "/metrics")
            sizes.append(len(conn.getresponse().read()))
        cpu0 = cpu_seconds(server.pid)
        t0 = time.perf_counter()
        for _ in range(scrapes):
            conn.request("GET", "/metrics")
            conn.getresponse().read()
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(server.pid) - cpu0
        conn.close()
    finally:
        master.close()
        server.stop()
    return {
        "scrape_types": types,
        "scrapes": scrapes,
        "server_cpu_us_per_scrape": round(cpu / scrapes * 1e6, 1),
        "round_trip_ms": round(elapsed / scrapes * 1e3, 3),
        "body_bytes": sizes[-1],
        # At one scrape a second, the share of one core the scrapes take.
        "cost_at_1hz_percent": round(cpu / scrapes * 100, 3),
    }


def idle_cpu(tmp: str, seconds: float) -> dict[str, Any]:
    """Server CPU per second of a daemon nobody talks to, without and with the HTTP port."""
    found: dict[str, Any] = {}
    for kind in ("plain", "idle"):
        if kind == "plain":
            server = start_server("gloomd", ["--no-http"])
        else:
            server = start_with_http(tmp)[0]
        try:
            time.sleep(1.0)  # past start-up
            cpu0 = cpu_seconds(server.pid)
            time.sleep(seconds)  # what is measured: the daemon doing nothing
            found[f"{kind}_idle_cpu_ms_per_s"] = round(
                (cpu_seconds(server.pid) - cpu0) / seconds * 1e3, 2
            )
        finally:
            server.stop()
    return found


# ---------------------------------------------------------------- the runs


def one_run(kind: str, work: workloads.Workload, tmp: str) -> dict[str, Any]:
    scraper: subprocess.Popen[bytes] | None = None
    if kind == "plain":
        server = start_server("gloomd", ["--no-http"])
    else:
        server, port = start_with_http(tmp)
        if kind == "scraped":
            scraper = subprocess.Popen(
                [sys.executable, HERE, "scrape", "--port", str(port)], stdout=subprocess.PIPE
            )
    try:
        line = loadgen.run("gloomd", work, server=server)
    finally:
        if scraper is not None:
            scraper.send_signal(signal.SIGTERM)
            out, _ = scraper.communicate(timeout=30)
        server.stop()
    line["variant"] = kind
    if scraper is not None:
        line.update(orjson.loads(out))
    return line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    if argv[:1] == ["burst"]:
        return burst(argv[1:])
    if argv[:1] == ["scrape"]:
        return scrape_loop(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=150_000)
    ap.add_argument("--scrapes", type=int, default=2000, help="for the CPU-per-scrape figure")
    ap.add_argument("--idle-seconds", type=float, default=10.0, help="for the idle CPU figure")
    ap.add_argument("--out", help="also append the JSON lines to this file")
    args = ap.parse_args(argv)
    work = replace(workloads.get("throughput"), jobs=args.jobs, deadline=300.0, name="throughput")
    kinds = ["plain", "idle", "scraped"]
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="http-scrape-") as tmp:
        for index in range(args.rounds):
            order = kinds[index % 3 :] + kinds[: index % 3]
            for kind in order:
                line = one_run(kind, work, tmp)
                line["round"] = index + 1
                emit(line, args.out)
                if "error" in line or line.get("lost"):
                    print(f"run failed: {line.get('error') or line.get('lost')}", file=sys.stderr)
                    return 1
                results[kind].append(line)
        cost = scrape_cost(args.scrapes, tmp)
        cost.update(idle_cpu(tmp, args.idle_seconds))

    def median(kind: str, key: str) -> float:
        return float(statistics.median(line[key] for line in results[kind]))

    summary: dict[str, Any] = {"summary": "http_scrape", "rounds": args.rounds, "jobs": args.jobs}
    for kind in kinds:
        summary[f"{kind}_jobs_per_s"] = median(kind, "jobs_per_s")
        summary[f"{kind}_cpu_us_per_job"] = median(kind, "server_cpu_us_per_job")
    summary["idle_port_cost_percent"] = round(
        (1 - summary["idle_jobs_per_s"] / summary["plain_jobs_per_s"]) * 100, 2
    )
    summary["scrape_cost_percent"] = round(
        (1 - summary["scraped_jobs_per_s"] / summary["idle_jobs_per_s"]) * 100, 2
    )
    summary["jobs_per_s_spread_percent"] = round(
        max(
            (max(v) - min(v)) / statistics.median(v) * 100
            for v in ([line["jobs_per_s"] for line in results[k]] for k in kinds)
        ),
        1,
    )
    summary.update(cost)
    emit(summary, args.out)
    return 0


def emit(line: dict[str, Any], out: str | None) -> None:
    text = orjson.dumps(line).decode()
    print(text, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
