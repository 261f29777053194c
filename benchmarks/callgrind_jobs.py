"""Instructions per job on gloomd's whole server path: the repeatable figure of issue 20.

jobs/s and CPU per job move by 10-15% between runs on a shared 2-core VM;
an instruction count does not.  This drives a real `GloomServer` (its
`Reactor._poll`, `on_data`, the ingest, the broker, the flush and
`PlainConnection.write`) over socketpairs, synchronously and without a
clock, with the leanest possible clients in the same process: `--masters`
masters (1) each keeping `--window` jobs in flight and `--slaves` slaves
echoing every job
with a pre-built `respond` frame.  Every receive and send is the same from
one run to the next, so the instruction count is too.

    python -m benchmarks.callgrind_jobs --jobs 2000            # runs, prints a summary line
    python -m benchmarks.callgrind_jobs measure                # under callgrind: instructions/job
    python -m benchmarks.callgrind_jobs measure --body 65536 --jobs 300
    python -m benchmarks.callgrind_jobs measure --slaves 1024 --window 1000   # fan-out
    python -m benchmarks.callgrind_jobs measure --masters 100 --window 10     # 100 masters
    python -m benchmarks.callgrind_jobs memory --jobs 100000   # bytes per queued job

`measure` runs the workload under `valgrind --tool=callgrind` twice, with
N and 2N jobs, and reports (I(2N) - I(N)) / N: start-up (the interpreter,
imports, the sockets, the joins) cancels out, what is left is the cost of
one job.  The server's work is called through `sorted` (which nothing on
its path calls), and callgrind counts only inside it
(`--toggle-collect=builtin_sorted`), so the clients' work is left out;
`--scope all` counts the whole process instead.  Only user-space
instructions count: the kernel's side of each recv and send does not.
`--keep DIR` keeps the callgrind file of the 2N run for `callgrind_annotate`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from typing import Any

_HEADER = struct.Struct(">I")
_ONE = (None,)


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


class _Client:
    """One client socket: frames out, frames in (no decoding but a prefix test)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.out = b""

    def send(self, data: bytes) -> None:
        """Queue `data` and send what the socket takes now (`pump` sends the rest)."""
        self.out += data
        self.pump()

    def pump(self) -> None:
        if self.out:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                sent = 0
            self.out = self.out[sent:]

    def frames(self) -> list[bytes]:
        chunks = []
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        if not chunks:
            return []
        data = self.buf + b"".join(chunks)
        out = []
        pos = 0
        end = len(data)
        while end - pos >= 4:
            (length,) = _HEADER.unpack_from(data, pos)
            if pos + 4 + length > end:
                break
            out.append(data[pos + 4 : pos + 4 + length])
            pos += 4 + length
        self.buf = data[pos:]
        return out


def body_json(size: int, kind: str) -> bytes:
    """A job body of about `size` bytes as JSON: a string (as the load generator
    sends) or, with `kind="object"`, a list of small objects (numbers, strings)."""
    if kind == "string":
        return b'"' + b"x" * max(size - 2, 0) + b'"'
    item = b'{"k":12345,"v":"abcdefgh","f":1.5}'
    count = max(size // (len(item) + 1), 1)
    return b"[" + b",".join([item] * count) + b"]"


def run(jobs: int, slaves: int, window: int, body: bytes, n_masters: int = 1) -> dict[str, Any]:
    """Drive `jobs` jobs through a real server; return what was counted."""
    import trio

    async def main() -> dict[str, Any]:
        from gloomd.broker import Broker
        from gloomd.config import Config
        from gloomd.reactor import Reactor
        from gloomd.server import GloomServer
        from gloomd.transport import PlainConnection

        cfg = Config()
        server = GloomServer(cfg)
        server.broker = Broker(cfg.limits, clock=lambda: 0.0, max_outbox=cfg.max_outbuf)
        reactor = Reactor(server, clock=lambda: 0.0)
        server._reactor = reactor

        def connect(role: str, name: str) -> _Client:
            here, there = socket.socketpair()
            for sock in (here, there):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            here.setblocking(False)
            there.setblocking(False)
            conn: PlainConnection[Any] = PlainConnection(
                here,
                server._seat(name, role),
                name,
                "127.0.0.1",
                role,
                cfg.max_outbuf,
                reactor.update,
                reactor.drop,
                cfg.output_high_water,
                cfg.write_timeout,
            )
            server._admit(conn)
            reactor.add(conn)
            return _Client(there)

        def serve(_: object = None) -> int:
            # The reactor's loop without trio's wait: busy rounds, then the
            # flush that ends the spell (see `Reactor.run`).
            while reactor._poll():
                pass
            server.flush()
            return 0

        def settle() -> None:
            # Through `sorted`, which nothing on the server's path calls: with
            # `--toggle-collect=builtin_sorted` callgrind counts the server alone.
            sorted(_ONE, key=serve)

        masters = [connect("master", f"m{i}") for i in range(n_masters)]
        workers = [connect("slave", f"s{i}") for i in range(slaves)]
        join = _frame(b'{"action":"join","type":"echo"}')
        for w in workers:
            w.send(join)
        settle()
        for w in workers:
            w.frames()
        respond = _frame(b'{"action":"respond","body":' + body + b"}")
        head = b'{"action":"submit","id":%d,"type":"echo","body":'
        tail = body + b"}"
        sent = done = acks = 0
        # Each master keeps `window` jobs in flight (ids are the daemon's, so
        # they are numbered across masters).
        in_flight = [0] * len(masters)
        gc.freeze()
        thresholds = gc.get_threshold()
        gc.set_threshold(thresholds[0], thresholds[1], 1_000_000)  # gloomd's policy (cli.py)
        while done < jobs:
            for k, master in enumerate(masters):
                batch = min(window - in_flight[k], jobs - sent)
                if batch > 0:
                    master.send(b"".join([_frame(head % (sent + i) + tail) for i in range(batch)]))
                    sent += batch
                    in_flight[k] += batch
                master.pump()
            settle()
            for w in workers:
                got = w.frames()
                if got:
                    w.send(respond * sum(1 for f in got if f.startswith(b'{"action":"job"')))
                w.pump()
            settle()
            for k, master in enumerate(masters):
                for frame in master.frames():
                    if frame.startswith(b'{"id"'):
                        done += 1
                        in_flight[k] -= 1
                    else:
                        acks += 1
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        for client in (*masters, *workers):
            client.sock.close()
        for conn in list(reactor._conns.values()):
            reactor.drop(conn)
        reactor._epoll.close()
        return {"jobs": jobs, "done": done, "acks": acks, "body_bytes": len(body)}

    return trio.run(main)


def queued_memory(jobs: int, body: bytes) -> dict[str, Any]:
    """Bytes the server holds per queued job: `jobs` submits, no slave.

    The same server as `run`, one master sending in batches of 1,000 and
    reading its acks: first `jobs` jobs with RSS read before and after (what
    the process grew by), then `jobs` more under tracemalloc (what Python
    allocated and kept: the job records, ids, bodies, the queue's and logs'
    entries).  The RSS figure moves with the allocator's arenas and lists'
    growth steps; tracemalloc's is exact and repeatable.
    """
    import tracemalloc

    import trio

    from benchmarks.procstat import memory_kb

    def rss_kib() -> int:
        return memory_kb(os.getpid())["VmRSS"]

    async def main() -> dict[str, Any]:
        from gloomd.broker import Broker
        from gloomd.config import Config
        from gloomd.reactor import Reactor
        from gloomd.server import GloomServer
        from gloomd.transport import PlainConnection

        cfg = Config()
        server = GloomServer(cfg)
        server.broker = Broker(cfg.limits, clock=lambda: 0.0, max_outbox=cfg.max_outbuf)
        reactor = Reactor(server, clock=lambda: 0.0)
        server._reactor = reactor
        here, there = socket.socketpair()
        for sock in (here, there):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            sock.setblocking(False)
        conn: PlainConnection[Any] = PlainConnection(
            here, server._seat("m", "master"), "m", "127.0.0.1", "master", cfg.max_outbuf,
            reactor.update, reactor.drop, cfg.output_high_water, cfg.write_timeout,
        )  # fmt: skip
        server._admit(conn)
        reactor.add(conn)
        master = _Client(there)
        head = b'{"action":"submit","id":%d,"type":"echo","body":'
        tail = body + b"}"

        answers = 0

        def submit(start: int, count: int) -> None:
            nonlocal answers
            for first in range(start, start + count, 1000):
                last = min(first + 1000, start + count)
                master.send(b"".join([_frame(head % i + tail) for i in range(first, last)]))
                while True:
                    master.pump()
                    while reactor._poll():
                        pass
                    server.flush()
                    answers += len(master.frames())
                    if not master.out:
                        break
                while reactor._poll():
                    pass
                server.flush()
                answers += len(master.frames())

        submit(0, 1000)  # warm: the type's queue, the first allocations
        gc.collect()
        rss_before = rss_kib()
        submit(1000, jobs)
        gc.collect()
        rss = (rss_kib() - rss_before) * 1024
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        submit(1000 + jobs, jobs)
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        master.sock.close()
        reactor.drop(conn)
        reactor._epoll.close()
        return {
            "jobs": jobs,
            "body_bytes": len(body),
            "traced_bytes_per_job": round(traced / jobs),
            "rss_bytes_per_job": round(rss / jobs),
            "answered": answers,
        }

    return trio.run(main)


def _instructions(args: argparse.Namespace, jobs: int, out: str) -> int:
    scope = ["--toggle-collect=builtin_sorted"] if args.scope == "server" else []
    cmd = [
        "valgrind",
        "--tool=callgrind",
        *scope,
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "benchmarks.callgrind_jobs",
        "--jobs",
        str(jobs),
        "--slaves",
        str(args.slaves),
        "--window",
        str(args.window),
        "--masters",
        str(args.masters),
        "--body",
        str(args.body),
        "--kind",
        args.kind,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    tmp = tempfile.mkdtemp(prefix="callgrind-jobs-")
    small = _instructions(args, args.jobs, os.path.join(tmp, "small.out"))
    large = _instructions(args, 2 * args.jobs, os.path.join(tmp, "large.out"))
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        shutil.copy(os.path.join(tmp, "large.out"), os.path.join(args.keep, "callgrind.out"))
    shutil.rmtree(tmp)
    return {
        "instructions_per_job": round((large - small) / args.jobs),
        "jobs": args.jobs,
        "slaves": args.slaves,
        "window": args.window,
        "masters": args.masters,
        "body": args.body,
        "kind": args.kind,
        "scope": args.scope,
        "instructions_n": small,
        "instructions_2n": large,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs="?", choices=("run", "measure", "memory"), default="run")
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--slaves", type=int, default=4)
    ap.add_argument("--window", type=int, default=100, help="jobs in flight per master")
    ap.add_argument("--masters", type=int, default=1)
    ap.add_argument("--body", type=int, default=100, help="body bytes, as JSON")
    ap.add_argument("--kind", choices=("string", "object"), default="string")
    ap.add_argument(
        "--scope",
        choices=("server", "all"),
        default="server",
        help="measure: the server's calls alone (default), or the whole process (clients too)",
    )
    ap.add_argument("--keep", help="measure: keep the 2N run's callgrind file in this folder")
    args = ap.parse_args(argv)
    if args.command == "measure":
        print(json.dumps(measure(args)))
        return 0
    if args.command == "memory":
        print(json.dumps(queued_memory(args.jobs, body_json(args.body, args.kind))))
        return 0
    result = run(args.jobs, args.slaves, args.window, body_json(args.body, args.kind), args.masters)
    print(json.dumps(result))
    return 0 if result["done"] == args.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
