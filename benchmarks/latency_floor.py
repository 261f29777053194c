"""The latency floor of a Python job server on this machine (issue #7).

gloomd's latency target is set against beanstalkd, a single-threaded C server.
To tell which part of the gap is gloomd's own work and which part is Python and
trio, this module holds a *forwarder*. It speaks just enough of the Gloom
protocol for the benchmark generator:

* join;
* submit: the job to an idle slave, then the ack;
* respond: the result to its master, then the ok.

It has no validation, priorities, limits or failure handling, so it is a
yardstick, not a server anyone should run. The forwarder answers exactly the
frames gloomd answers, in the same order, with one `send` per frame (gloomd
coalesces more, so the forwarder is not favoured there).

    python -m benchmarks.latency_floor serve [--trio] [--master-port M] [--slave-port S]
    python -m benchmarks.latency_floor compare [--rounds 5] [--jobs 4000]

`serve --trio` waits for its epoll set through `trio.lowlevel.wait_readable`,
as gloomd's reactor does. Without it, the loop blocks in `epoll` itself.
`compare` runs the latency workload (window 1) round after round against each
of these:

* the forwarder on a bare epoll loop;
* the forwarder waiting through trio;
* gloomd;
* beanstalkd, if it is installed.

Each round runs them one after another, so a noisy spell of the machine hits
them all alike. It prints each one's median p50 and server CPU per job, and
the ratio of its p50 to beanstalkd's.
"""

from __future__ import annotations

import argparse
import collections
import json
import select
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from .gloom_wire import frame, split_frames
from .servers import installed, start_reporting

__all__ = ["Forwarder", "compare", "forwarder_latency", "main"]

ROOT = Path(__file__).resolve().parent.parent
_OK = frame(b'{"ok":true}')


def _frame(obj: Any) -> bytes:
    return frame(orjson.dumps(obj))


class Forwarder:
    """The least a server can do per frame: one recv, orjson, one send per frame."""

    def __init__(self, master_port: int, slave_port: int) -> None:
        self.epoll = select.epoll()
        self.listeners: dict[int, tuple[socket.socket, str]] = {}
        for port, role in ((master_port, "master"), (slave_port, "slave")):
            sock = socket.create_server(("127.0.0.1", port))
            sock.setblocking(False)
            self.listeners[sock.fileno()] = (sock, role)
            self.epoll.register(sock.fileno(), select.EPOLLIN)
        self.conns: dict[int, tuple[socket.socket, str, bytearray]] = {}
        self.idle: collections.deque[socket.socket] = collections.deque()
        self.queue: collections.deque[tuple[Any, Any]] = collections.deque()
        self.owner: dict[Any, socket.socket] = {}  # job id -> its master
        self.holding: dict[int, Any] = {}  # slave fd -> job id
        self._buffer = bytearray(256 * 1024)
        self._view = memoryview(self._buffer)

    def ports(self) -> tuple[int, int]:
        by_role = {role: sock.getsockname()[1] for sock, role in self.listeners.values()}
        return by_role["master"], by_role["slave"]

    def step(self, timeout: float) -> None:
        for fd, _ in self.epoll.poll(timeout):
            if fd in self.listeners:
                listener, role = self.listeners[fd]
                sock, _ = listener.accept()
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.conns[sock.fileno()] = (sock, role, bytearray())
                self.epoll.register(sock.fileno(), select.EPOLLIN)
            elif fd in self.conns:
                self._readable(fd)

    def _readable(self, fd: int) -> None:
        sock, role, pending = self.conns[fd]
        try:
            size = sock.recv_into(self._buffer)
        except OSError:  # reset by a generator that is done
            size = 0
        if not size:
            self.epoll.unregister(fd)
            del self.conns[fd]
            if sock in self.idle:
                self.idle.remove(sock)
            sock.close()
            return
        pending += self._view[:size]
        for payload in split_frames(pending):
            msg = orjson.loads(payload)
            if role == "master":
                self._submit(sock, msg)
            elif msg["action"] == "join":
                sock.send(_OK)
                self.idle.append(sock)
            else:
                self._respond(sock, fd, msg)

    def _submit(self, master: socket.socket, msg: dict[str, Any]) -> None:
        job_id = msg["id"]
        self.owner[job_id] = master
        if self.idle:
            slave = self.idle.popleft()
            self.holding[slave.fileno()] = job_id
            slave.send(
                _frame({"action": "job", "id": job_id, "type": msg["type"], "body": msg["body"]})
            )
        else:
            self.queue.append((job_id, msg))
        master.send(_frame({"ok": True, "id": job_id}))

    def _respond(self, slave: socket.socket, fd: int, msg: dict[str, Any]) -> None:
        job_id = self.holding.pop(fd)
        self.owner.pop(job_id).send(_frame({"id": job_id, "body": msg["body"]}))
        if self.queue:
            next_id, job = self.queue.popleft()
            self.holding[fd] = next_id
            slave.send(
                _OK
                + _frame({"action": "job", "id": next_id, "type": job["type"], "body": job["body"]})
            )
        else:
            slave.send(_OK)
            self.idle.append(slave)


def serve(master_port: int, slave_port: int, use_trio: bool) -> None:
    forwarder = Forwarder(master_port, slave_port)
    mport, sport = forwarder.ports()
    # The line gloomd prints, so the generator's tooling can attach the same way.
    print(f"gloomd ready master=127.0.0.1:{mport} slave=127.0.0.1:{sport}", flush=True)
    if not use_trio:
        while True:
            forwarder.step(-1)
    import trio

    async def loop() -> None:
        while True:
            await trio.lowlevel.wait_readable(forwarder.epoll)
            forwarder.step(0)

    trio.run(loop)


def _latency_run(args: list[str], jobs: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--workload",
        "latency",
        "--jobs",
        str(jobs),
        *args,
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=300, check=False)
    lines = done.stdout.decode().strip().splitlines()
    if not lines:
        raise RuntimeError(f"loadgen printed nothing: {done.stderr.decode()[-2000:]}")
    line: dict[str, Any] = json.loads(lines[-1])
    if line.get("lost") or line.get("completed") != jobs:
        raise RuntimeError(f"unclean run: {line}")
    return line


def forwarder_latency(use_trio: bool, jobs: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.latency_floor",
        "serve",
        *(["--trio"] if use_trio else []),
    ]
    with start_reporting("floor", cmd, cwd=ROOT) as server:
        (host, mport), (_, sport) = server.master, server.slave
        connect = [
            "--system",
            "gloomd",
            "--connect",
            f"{host}:{mport}:{sport}",
            "--server-pid",
            str(server.pid),
        ]
        return _latency_run(connect, jobs)


def compare(rounds: int, jobs: int) -> list[dict[str, Any]]:
    """Median p50 and server CPU per job of each contender over `rounds` rounds."""
    contenders = ["floor-epoll", "floor-trio", "gloomd"] + (
        ["beanstalkd"] if installed("beanstalkd") else []
    )
    seen: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name in contenders:
            if name.startswith("floor-"):
                line = forwarder_latency(name == "floor-trio", jobs)
            else:
                line = _latency_run(["--system", name], jobs)
            seen[name].append(line)
    summary = [
        {
            "contender": name,
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "server_cpu_us_per_job": statistics.median(r["server_cpu_us_per_job"] for r in runs),
            "p50_each": [r["p50_ms"] for r in runs],
        }
        for name, runs in seen.items()
    ]
    base = next((s["p50_ms"] for s in summary if s["contender"] == "beanstalkd"), None)
    for s in summary:
        s["vs_beanstalkd"] = round(s["p50_ms"] / base, 2) if base else None
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.latency_floor", description=__doc__.split("\n\n")[0]
    )
    sub = ap.add_subparsers(dest="command", required=True)
    sv = sub.add_parser("serve", help="run the forwarder")
    sv.add_argument(
        "--trio", action="store_true", help="wait through trio, as gloomd's reactor does"
    )
    sv.add_argument("--master-port", type=int, default=0)
    sv.add_argument("--slave-port", type=int, default=0)
    cp = sub.add_parser(
        "compare", help="latency of the forwarders, gloomd and beanstalkd, round after round"
    )
    cp.add_argument("--rounds", type=int, default=5)
    cp.add_argument("--jobs", type=int, default=4000)
    args = ap.parse_args(argv)
    if args.command == "serve":
        try:
            serve(args.master_port, args.slave_port, args.trio)
        except KeyboardInterrupt:
            pass
        return
    print(
        "| contender | p50 ms (median) | server CPU µs/job | p50 / beanstalkd | p50 of each round |"
    )
    print("|---|---|---|---|---|")
    for s in compare(args.rounds, args.jobs):
        ratio = f"{s['vs_beanstalkd']:.2f}×" if s["vs_beanstalkd"] else "n/a"
        each = ", ".join(f"{p:.3f}" for p in s["p50_each"])
        print(
            f"| {s['contender']} | {s['p50_ms']:.3f} | {s['server_cpu_us_per_job']:.1f}"
            f" | {ratio} | {each} |"
        )


if __name__ == "__main__":
    main()
