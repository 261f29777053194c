"""wsjobd under many listeners: are 1,000 clients' progress reports on time?

    python benchmarks/wsjobd_load.py                          # 1,000 clients, 1 s interval, 10 s
    python benchmarks/wsjobd_load.py --clients 200 --interval 0.5 --duration 5
    python benchmarks/wsjobd_load.py --job async --report-system-load

Starts a real ``gloomd --ws-port 0 --jobs-dir <tmp>`` process whose jobs
directory holds one job, ``bench.tick``, that bumps a counter in ``job.data``
every ``--tick`` seconds until told to stop (in a worker thread by default, or as an
``async def`` with ``--job async``).  This process then opens N websocket
clients on 127.0.0.1, each starting its own job with its own ident, and
records when every report arrives.

Lateness: a client's n-th report is due at ``origin + n * interval``.  The
origin is estimated as the earliest ``arrival_n - n * interval`` over the
client's reports in the window, so lateness is never negative and a schedule
that drifts shows up as growing lateness.  Only reports that arrive after every
client has had its first report count (the connection storm is not the steady
state we measure); a report due an interval or more before the window closes
and not arrived counts as missing.

Alongside, a Gloom master and slave in this process run sequential round trips
(submit, slave answers at once, result back), first before any websocket
client connects and then during the measured window, to show whether the
websocket load disturbs the daemon's master/slave traffic.

With ``--server wsjobd`` the service runs alone in its own process (no Gloom
ports, so no round-trip probe).

Prints one JSON line.  Bounded: connection setup is capped by --deadline, the
measured window by --duration; the daemon is stopped with SIGTERM at the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

HOST = "127.0.0.1"
READY = re.compile(rb"master=[^ ]+:(\d+) slave=[^ ]+:(\d+) ws=[^ ]+:(\d+)")

JOB_MODULE = '''\
"""The benchmark's job: a counter bumped every `tick` seconds until the stop file appears."""
import os
import time

import trio


def tick(job):
    stop, period = job.data["stop_file"], job.data["tick"]
    job.data["n"] = 0
    while not os.path.exists(stop):
        job.data["n"] += 1
        time.sleep(period)


async def tick_async(job):
    stop, period = job.data["stop_file"], job.data["tick"]
    job.data["n"] = 0
    while not os.path.exists(stop):
        job.data["n"] += 1
        await trio.sleep(period)
'''


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def start_daemon(
    jobs_dir: str, server: str, clients: int
) -> tuple[subprocess.Popen[bytes], int, int, int]:
    """Start the server process; master and slave ports are 0 for a bare wsjobd.

    Every client runs its own job, so the caps on jobs and connections are
    raised to the client count: this measures report timeliness, not the caps.
    """
    if server == "gloomd":
        command = [
            sys.executable,
            "-m",
            "gloomd",
            "--master-port",
            "0",
            "--slave-port",
            "0",
            "--http-port",
            "0",
            "--ws-port",
            "0",
            "--jobs-dir",
            jobs_dir,
            "--log-level",
            "warning",
            "--ws-max-jobs",
            str(max(clients, 1)),
            "--ws-max-connections",
            str(clients + 16),
        ]
    else:
        command = [sys.executable, os.path.abspath(__file__), "--serve-wsjobd", jobs_dir]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = READY.search(line) if server == "gloomd" else re.search(rb"ws=[^ ]+:(\d+)", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"{server} did not start: {line!r}")
    if server == "gloomd":
        master, slave, ws = (int(g) for g in match.groups())
        return proc, master, slave, ws
    return proc, 0, 0, int(match.group(1))


def serve_wsjobd(jobs_dir: str) -> None:
    """The service alone, as the daemon would run it (``--server wsjobd``)."""
    from gloomd.wsjobd import WsLimits, serve

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                limits = WsLimits(max_connections=100_000, max_jobs=100_000)
                port = await nursery.start(
                    functools.partial(serve, limits=limits), HOST, 0, jobs_dir
                )
                print(f"wsjobd ready ws={HOST}:{port}", flush=True)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()

    profile = os.environ.get("WSJOBD_BENCH_PROFILE")
    if profile:
        import cProfile

        # CPU time, not wall time: on a shared machine wall time mostly
        # measures the other processes.
        profiler = cProfile.Profile(time.process_time)
        profiler.runcall(trio.run, run)
        profiler.dump_stats(profile)
    else:
        trio.run(run)


class Client:
    """One websocket listener: its first-report time and every arrival."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.error: str | None = None


async def run_client(
    index: int,
    ws_port: int,
    description: dict[str, Any],
    client: Client,
    handshakes: trio.CapacityLimiter,
    first_report: trio.MemorySendChannel[int],
) -> None:
    async with handshakes:
        stream = await trio.open_tcp_stream(HOST, ws_port)
    try:
        async with trio.open_nursery() as nursery:
            ws: WebSocketConnection = await wrap_client_stream(nursery, stream, HOST, "/")
            await ws.send_message(json.dumps({**description, "ident": f"bench-{index}"}))
            try:
                while True:
                    message = await ws.get_message()
                    client.arrivals.append(trio.current_time())
                    if len(client.arrivals) == 1:
                        if '"err"' in str(message):
                            client.error = str(message)
                        await first_report.send(index)
            except ConnectionClosed as exc:
                client.error = client.error or f"closed early: {exc.reason}"
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


async def gloom_round_trips(
    master_port: int, slave_port: int, until: float, out: list[float]
) -> None:
    """Sequential submit -> slave answers -> result, until trio time `until`."""
    from gloom import open_master, open_slave

    async with (
        open_slave(HOST, slave_port, reconnect=False) as slave,
        open_master(HOST, master_port) as master,
    ):
        await slave.join("wsjobd-bench-probe")

        async def answer() -> None:
            while True:
                job = await slave.next_job()
                await job.respond(job.body)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer)
            while trio.current_time() < until:
                began = trio.current_time()
                job = await master.submit("wsjobd-bench-probe", "ping")
                await job.wait(timeout=10)
                out.append(trio.current_time() - began)
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wsjobd-bench-") as tmp:
        jobs_dir = Path(tmp) / "jobs"
        jobs_dir.mkdir()
        (jobs_dir / "bench.py").write_text(JOB_MODULE)
        stop_file = str(Path(tmp) / "stop")
        proc, master_port, slave_port, ws_port = start_daemon(
            str(jobs_dir), args.server, args.clients
        )
        daemon = psutil.Process(proc.pid)
        try:
            return await measure(args, master_port, slave_port, ws_port, stop_file, daemon)
        finally:
            Path(stop_file).touch()  # let every job thread return
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def measure(
    args: argparse.Namespace,
    master_port: int,
    slave_port: int,
    ws_port: int,
    stop_file: str,
    daemon: psutil.Process,
) -> dict[str, Any]:
    interval = args.interval
    description = {
        "func": "bench.tick_async" if args.job == "async" else "bench.tick",
        "progress": {"interval": interval},
        "report_system_load": args.report_system_load,
        "stop_file": stop_file,
        "tick": args.tick,
    }
    baseline_rtt: list[float] = []
    loaded_rtt: list[float] = []
    probe = args.probe > 0 and master_port != 0
    if probe:
        await gloom_round_trips(
            master_port, slave_port, trio.current_time() + args.probe, baseline_rtt
        )

    clients = [Client() for _ in range(args.clients)]
    send_first, receive_first = trio.open_memory_channel[int](args.clients)
    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        handshakes = trio.CapacityLimiter(64)
        connect_began = trio.current_time()
        for index, client in enumerate(clients):
            nursery.start_soon(
                run_client, index, ws_port, description, client, handshakes, send_first
            )
        with trio.fail_after(args.deadline):
            for _ in range(args.clients):
                await receive_first.receive()
        window_start = trio.current_time()
        connect_seconds = window_start - connect_began
        cpu_before = daemon.cpu_times()
        own_before = psutil.Process().cpu_times()
        window_end = window_start + args.duration
        if probe:
            await gloom_round_trips(master_port, slave_port, window_end, loaded_rtt)
        await trio.sleep_until(window_end)
        cpu_after = daemon.cpu_times()
        own_after = psutil.Process().cpu_times()
        rss = daemon.memory_info().rss
        threads = daemon.num_threads()
        nursery.cancel_scope.cancel()

    errors = [c.error for c in clients if c.error]
    lateness: list[float] = []
    received = missing = 0
    for client in clients:
        # The n-th report (n = 0 for the first) is due at origin + n * interval.
        arrivals = list(enumerate(client.arrivals))
        in_window = [(n, t) for n, t in arrivals if window_start <= t <= window_end]
        if not in_window:
            continue
        origin = min(t - n * interval for n, t in in_window)
        lateness += [t - n * interval - origin for n, t in in_window]
        received += len(in_window)
        # Every report due at least one interval before the window closed must
        # have arrived by then.
        due_by_end = math.floor((window_end - interval - origin) / interval) + 1
        missing += max(0, due_by_end - len(client.arrivals))
    cpu_used = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    own_used = (own_after.user + own_after.system) - (own_before.user + own_before.system)
    result.update(
        clients=args.clients,
        report_interval=interval,
        server=args.server,
        job=args.job,
        report_system_load=args.report_system_load,
        window_seconds=args.duration,
        connect_seconds=round(connect_seconds, 3),
        reports=received,
        missing_reports=missing,
        client_errors=len(errors),
        lateness_p50_ms=ms(percentile(lateness, 0.50)),
        lateness_p99_ms=ms(percentile(lateness, 0.99)),
        lateness_max_ms=ms(max(lateness, default=None)),
        max_lateness_ratio=round(max(lateness) / interval, 4) if lateness else None,
        within_10_percent=sum(1 for x in lateness if x <= 0.1 * interval) / max(1, len(lateness)),
        daemon_cpu_percent=round(100 * cpu_used / args.duration, 1),
        daemon_rss_mib=round(rss / 2**20, 1),
        clients_process_cpu_percent=round(100 * own_used / args.duration, 1),
        # Other processes on the machine disturb every figure above: say how busy it was.
        loadavg_1m=round(os.getloadavg()[0], 2),
        cpus=os.cpu_count(),
        daemon_threads=threads,
        gloom_rtt_baseline_p50_ms=ms(percentile(baseline_rtt, 0.50)),
        gloom_rtt_baseline_p99_ms=ms(percentile(baseline_rtt, 0.99)),
        gloom_rtt_under_load_p50_ms=ms(percentile(loaded_rtt, 0.50)),
        gloom_rtt_under_load_p99_ms=ms(percentile(loaded_rtt, 0.99)),
        gloom_round_trips_under_load=len(loaded_rtt),
    )
    if errors:
        result["first_client_error"] = errors[0]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=1.0, help="progress.interval, seconds")
    ap.add_argument("--duration", type=float, default=10.0, help="measured window, seconds")
    ap.add_argument(
        "--job",
        choices=("thread", "async"),
        default="thread",
        help="plain function in a worker thread (pykit's way) or async def",
    )
    ap.add_argument(
        "--tick", type=float, default=1.0, help="how often each job updates its data, seconds"
    )
    ap.add_argument("--report-system-load", action="store_true")
    ap.add_argument(
        "--probe", type=float, default=3.0, help="baseline Gloom round trips, seconds (0: no probe)"
    )
    ap.add_argument("--deadline", type=float, default=120.0, help="limit for connecting everyone")
    ap.add_argument(
        "--server",
        choices=("gloomd", "wsjobd"),
        default="gloomd",
        help="the whole daemon (default), or the websocket service alone (no Gloom probe)",
    )
    ap.add_argument("--serve-wsjobd", metavar="JOBS_DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_wsjobd:
        serve_wsjobd(args.serve_wsjobd)
        return 0
    started = time.monotonic()
    result = trio.run(bench, args)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result), flush=True)
    return 0 if result["client_errors"] == 0 and result["missing_reports"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
