"""Soak: a million jobs through one gloomd with slave churn; RSS must stay flat.

    python -m benchmarks.soak                      # 1,000,000 jobs (minutes)
    python -m benchmarks.soak --jobs 50000         # the short form

One trio process drives a fresh `gloomd`: a master keeps `--window` jobs in
flight (so the daemon's steady state is a bounded queue, and any growth in
RSS is a leak rather than a backlog), and `--slaves` slave connections answer
them.  Every `--churn-every` results, the next slave in turn is dropped with
a TCP reset, half the time while holding a job it never answers, and a new
connection takes its seat: the daemon must requeue that job and free the
slave's state.  A sampler prints the daemon's RSS once a second.

At the end every job id must have exactly one answer (a result carrying its
own body, or a `job_failed` should a job ever be lost four times): the
ledger reports lost and duplicated answers, and the exit status is 1 if
either is non-zero or the run exceeds `--max-seconds`.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

import orjson
import trio

from .gloom_wire import frame, split_frames
from .procstat import cpu_seconds, memory_kb
from .servers import Server, start_server

__all__ = ["main"]

_dumps = orjson.dumps
_loads = orjson.loads


@dataclass
class Run:
    jobs: int
    answers: bytearray  # answers per job id (saturating at 255)
    acked: int = 0
    results: int = 0
    failures: int = 0
    kills: int = 0
    killed_holding: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)
    window_open: trio.Event = field(default_factory=trio.Event)


def _abort(stream: trio.SocketStream) -> None:
    """Reset the connection (what a killed process's kernel does)."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def master(server: Server, run: Run, window: int, batch: int) -> None:
    stream = await trio.open_tcp_stream(*server.master)
    sent = 0
    buf = bytearray()

    async def reader() -> None:
        nonlocal buf
        while run.results + run.failures < run.jobs:
            data = await stream.receive_some(1 << 18)
            if not data:
                raise RuntimeError("gloomd closed the master connection")
            buf += data
            for payload in split_frames(buf):
                msg = _loads(payload)
                if "body" in msg:
                    job_id = msg["id"]
                    if msg["body"] != job_id:
                        raise RuntimeError(f"wrong body for job {job_id}: {msg['body']!r}")
                    run.results += 1
                elif msg.get("ok"):
                    run.acked += 1
                    continue
                elif msg.get("error") == "job_failed":
                    job_id = msg["id"]
                    run.failures += 1
                else:
                    raise RuntimeError(f"unexpected frame {msg!r}")
                if run.answers[job_id] < 255:
                    run.answers[job_id] += 1
            if sent - (run.results + run.failures) <= window - batch:
                run.window_open.set()
        run.done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        while sent < run.jobs:
            while sent - (run.results + run.failures) > window - batch:
                run.window_open = trio.Event()
                await run.window_open.wait()
            upto = min(sent + batch, run.jobs)
            await stream.send_all(
                b"".join(
                    frame(
                        _dumps(
                            {"action": "submit", "id": i, "type": "soak", "priority": 0, "body": i}
                        )
                    )
                    for i in range(sent, upto)
                )
            )
            sent = upto
        await run.done.wait()
        nursery.cancel_scope.cancel()
    await stream.aclose()


class Seat:
    """One slave position; its connection is replaced when churned."""

    def __init__(self) -> None:
        self.kill = False


async def slave_seat(server: Server, run: Run, seat: Seat, rng: random.Random) -> None:
    """Answer jobs; when churned, drop the connection at the next job frame,
    unanswered half the time (the daemon must requeue it), else right after
    answering it (the answer may or may not beat the reset: either is legal)."""
    join = frame(b'{"action":"join","type":"soak"}')
    while not run.done.is_set():
        stream = await trio.open_tcp_stream(*server.slave)
        await stream.send_all(join)
        buf = bytearray()
        try:
            while True:
                data = await stream.receive_some(1 << 16)
                if not data:
                    return
                buf += data
                out = []
                dropped = False
                for payload in split_frames(buf):
                    if not payload.startswith(b'{"action":"job"'):
                        continue
                    answer = frame(b'{"action":"respond","body":%d}' % _loads(payload)["id"])
                    if seat.kill:
                        seat.kill = False
                        run.kills += 1
                        if rng.random() < 0.5:
                            run.killed_holding += 1
                        else:
                            await stream.send_all(b"".join(out) + answer)
                        _abort(stream)
                        dropped = True
                        break
                    out.append(answer)
                if dropped:
                    break
                if out:
                    await stream.send_all(b"".join(out))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if run.done.is_set():
                return
            raise


async def churn(run: Run, seats: list[Seat], every: int) -> None:
    turn = 0
    next_at = every
    while not run.done.is_set():
        await trio.sleep(0.01)
        if run.results >= next_at:
            seats[turn % len(seats)].kill = True
            turn += 1
            next_at += every


async def sample_rss(server: Server, run: Run, started: float) -> None:
    while not run.done.is_set():
        rss = memory_kb(server.pid)["VmRSS"]
        elapsed = time.monotonic() - started
        run.rss.append((elapsed, rss))
        print(
            f"t={elapsed:7.1f}s rss_kb={rss:8d} answered={run.results + run.failures:9d}"
            f" kills={run.kills}",
            flush=True,
        )
        with trio.move_on_after(1.0):
            await run.done.wait()


async def soak(args: argparse.Namespace, server: Server) -> Run:
    run = Run(args.jobs, bytearray(args.jobs))
    rng = random.Random(args.seed)
    seats = [Seat() for _ in range(args.slaves)]
    started = time.monotonic()
    with trio.move_on_after(args.max_seconds) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_rss, server, run, started)
            for seat in seats:
                nursery.start_soon(slave_seat, server, run, seat, random.Random(rng.random()))
            nursery.start_soon(churn, run, seats, args.churn_every)
            await master(server, run, args.window, args.batch)
            nursery.cancel_scope.cancel()
    if scope.cancelled_caught:
        print(f"soak: stopped after --max-seconds {args.max_seconds}", file=sys.stderr)
    run.rss.append((time.monotonic() - started, memory_kb(server.pid)["VmRSS"]))
    return run


def summarize(run: Run, seconds: float, cpu: float) -> int:
    counts = run.answers
    lost = counts.count(0)
    doubled = run.jobs - lost - counts.count(1)
    series = [kb for _, kb in run.rss]
    half = series[len(series) // 2 :] or series
    print(
        f"jobs={run.jobs} seconds={seconds:.1f} jobs_per_s={run.jobs / seconds:.0f}"
        f" daemon_cpu_s={cpu:.1f}"
    )
    print(f"kills={run.kills} (holding a job: {run.killed_holding}) failed_jobs={run.failures}")
    print(
        f"rss_kb first={series[0]} min={min(series)} max={max(series)} last={series[-1]} "
        f"second_half_growth_kb={half[-1] - half[0]}"
    )
    print(f"lost={lost} duplicated={doubled}")
    return 0 if lost == 0 and doubled == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--slaves", type=int, default=8)
    parser.add_argument("--window", type=int, default=4_000, help="jobs in flight (default 4000)")
    parser.add_argument("--batch", type=int, default=500, help="submits per write (default 500)")
    parser.add_argument(
        "--churn-every", type=int, default=2_000, help="results between slave drops"
    )
    parser.add_argument("--max-seconds", type=float, default=1_800.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    server = start_server("gloomd")
    try:
        print(
            f"soak: gloomd pid={server.pid} jobs={args.jobs} slaves={args.slaves}"
            f" window={args.window}",
            flush=True,
        )
        started = time.monotonic()
        cpu0 = cpu_seconds(server.pid)
        run = trio.run(soak, args, server)
        seconds = time.monotonic() - started
        cpu = cpu_seconds(server.pid) - cpu0
    finally:
        server.stop()
    status = summarize(run, seconds, cpu)
    if run.results + run.failures < run.jobs:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
