"""Durable jobs: gloomd --journal (each --sync), beanstalkd -b, gearmand -q libsqlite3.

    python -m benchmarks.durable          # 10,000 jobs of 100 B, window 1,000, 3 rounds
    python -m benchmarks.durable --jobs 2000 --rounds 1 --systems gloomd-full,beanstalkd-f0
    python -m benchmarks.durable --replay 100000,1000000   # start time on N queued jobs

The workload is issue 13's: the echo workload with jobs that outlive their
client (gloomd `"detach": true`, beanstalkd `put`, gearmand SUBMIT_JOB_BG),
one client keeping a window of submits in flight, four workers taking and
finishing them.  Per run: jobs/s (first submit to last job finished), the
ack's latency p50/p99 (submit sent to ack read: what a durable ack costs),
the server's CPU per job (/proc) and the bytes it wrote to storage per job
(/proc/PID/io write_bytes: journal, binlog or database, WAL included).  The
systems take turns round by round, so load from elsewhere hits them alike;
the table shows medians, and the ratios the issue's targets name.

`--replay N` fills a journal with N queued jobs (gloomd's own broker and
store, in process), starts gloomd on it and reports the restore line's
seconds and the time to the ready line, and the file's size.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.procstat import cpu_seconds
from benchmarks.servers import Server, ServerError, installed, start_server

#: name -> (system, extra flags); {dir} is a fresh directory per run.
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "gloomd": ("gloomd", ["--no-http"]),
    "gloomd-full": ("gloomd", ["--no-http", "--journal", "{dir}/j.db", "--sync", "full"]),
    "gloomd-normal": ("gloomd", ["--no-http", "--journal", "{dir}/j.db", "--sync", "normal"]),
    "gloomd-off": ("gloomd", ["--no-http", "--journal", "{dir}/j.db", "--sync", "off"]),
    "beanstalkd": ("beanstalkd", []),
    "beanstalkd-f50": ("beanstalkd", ["-b", "{dir}"]),
    "beanstalkd-f0": ("beanstalkd", ["-b", "{dir}", "-f", "0"]),
    "gearmand-sqlite": ("gearmand", ["-q", "libsqlite3", "--libsqlite3-db", "{dir}/g.db"]),
}
WORKERS = 4
_PACK = struct.Struct(">I").pack
_GEAR = struct.Struct(">4sII")


# ---------------------------------------------------------------- clients


class Client:
    """Submits with a window; `acks` parses what came back and returns how many acks."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.buf = bytearray()

    def greet(self) -> bytes:
        return b""

    def submit(self, n: int) -> bytes:
        raise NotImplementedError

    def acks(self, data: bytes) -> int:
        raise NotImplementedError


class GloomClient(Client):
    def submit(self, n: int) -> bytes:
        payload = b'{"action":"submit","id":%d,"type":"echo","body":"%s","detach":true}' % (
            n,
            self.body,
        )
        return _PACK(len(payload)) + payload

    def acks(self, data: bytes) -> int:
        buf = self.buf
        buf += data
        count = pos = 0
        while len(buf) - pos >= 4:
            size = int.from_bytes(buf[pos : pos + 4], "big")
            if len(buf) - pos - 4 < size:
                break
            payload = bytes(buf[pos + 4 : pos + 4 + size])
            pos += 4 + size
            if payload.startswith(b'{"ok":true'):
                count += 1
            elif b'"error"' in payload:
                raise RuntimeError(payload.decode())
            # else: a detached job's result, sent to its master while connected
        del buf[:pos]
        return count


class BeanstalkClient(Client):
    def greet(self) -> bytes:
        return b"use echo\r\n"

    def submit(self, n: int) -> bytes:
        return b"put 0 0 60 %d\r\n%s\r\n" % (len(self.body), self.body)

    def acks(self, data: bytes) -> int:
        buf = self.buf
        buf += data
        lines = buf.split(b"\r\n")
        self.buf = bytearray(lines.pop())
        count = 0
        for line in lines:
            if line.startswith(b"INSERTED"):
                count += 1
            elif not line.startswith(b"USING"):
                raise RuntimeError(line.decode())
        return count


class GearmanClient(Client):
    def submit(self, n: int) -> bytes:
        data = b"echo\0%d\0%s" % (n, self.body)
        return _GEAR.pack(b"\0REQ", 18, len(data)) + data  # SUBMIT_JOB_BG

    def acks(self, data: bytes) -> int:
        buf = self.buf
        buf += data
        count = pos = 0
        while len(buf) - pos >= 12:
            _, kind, size = _GEAR.unpack_from(buf, pos)
            if len(buf) - pos - 12 < size:
                break
            pos += 12 + size
            if kind == 8:  # JOB_CREATED
                count += 1
            else:
                raise RuntimeError(f"gearmand answered packet type {kind}")
        del buf[:pos]
        return count


CLIENTS = {"gloomd": GloomClient, "beanstalkd": BeanstalkClient, "gearmand": GearmanClient}


# ---------------------------------------------------------------- workers


def _worker_loop(system: str, addr: tuple[str, int], done: Any, stop: Any) -> None:
    """WORKERS connections in one process, each taking a job and finishing it."""
    from benchmarks.gearman_wire import GearmanWorker
    from benchmarks.gloom_wire import GloomWorker

    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(WORKERS):
        sock = socket.create_connection(addr)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if system == "gloomd":
            worker: Any = GloomWorker()
            sock.sendall(worker.greet())
        elif system == "gearmand":
            worker = GearmanWorker()
            sock.sendall(worker.greet())
        else:
            worker = bytearray()
            sock.sendall(b"watch echo\r\nignore default\r\nreserve\r\n")
        sel.register(sock, selectors.EVENT_READ, worker)
        socks.append(sock)
    count = 0
    while not stop.is_set():
        for key, _ in sel.select(0.05):
            sock = key.fileobj  # type: ignore[assignment]
            data = sock.recv(1 << 20)
            if not data:
                return
            worker = key.data
            if isinstance(worker, bytearray):  # beanstalkd: reserve, delete, reserve
                worker += data
                reply = bytearray()
                while True:
                    eol = worker.find(b"\r\n")
                    if eol < 0:
                        break
                    line = bytes(worker[:eol])
                    if line.startswith(b"RESERVED "):
                        size = int(line.rsplit(b" ", 1)[1])
                        if len(worker) < eol + 2 + size + 2:
                            break
                        del worker[: eol + 2 + size + 2]
                        reply += b"delete %s\r\nreserve\r\n" % line.split(b" ")[1]
                        count += 1
                    else:
                        del worker[: eol + 2]
                if reply:
                    sock.sendall(reply)
            else:
                before = worker.jobs
                reply = worker.feed(data)
                count += worker.jobs - before
                if reply:
                    sock.sendall(reply)
        with done.get_lock():
            done.value = count


# ---------------------------------------------------------------- one run


def write_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def run(name: str, jobs: int, window: int, body_size: int, deadline: float) -> dict[str, Any]:
    system, flags = CONFIGS[name]
    if installed(system) is None:
        return {"config": name, "skipped": f"{system} is not installed"}
    tmp = tempfile.mkdtemp(prefix=f"durable-{name}-", dir=os.environ.get("DURABLE_DIR"))
    server: Server = start_server(system, [f.replace("{dir}", tmp) for f in flags])
    try:
        return _drive(name, server, jobs, window, body_size, deadline)
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", tmp], check=False)


def _drive(
    name: str, server: Server, jobs: int, window: int, body_size: int, deadline: float
) -> dict[str, Any]:
    system = server.system
    client = CLIENTS[system](b"x" * body_size)
    done = mp.Value("q", 0)
    stop = mp.Event()
    workers = mp.Process(target=_worker_loop, args=(system, server.slave, done, stop), daemon=True)
    workers.start()
    sock = socket.create_connection(server.master)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if client.greet():
        sock.sendall(client.greet())
    sock.setblocking(False)
    cpu0, io0 = cpu_seconds(server.pid), write_bytes(server.pid)
    sent_at: deque[float] = deque()
    latencies: list[float] = []
    sent = 0
    start = time.perf_counter()
    until = start + deadline
    out = bytearray()
    while len(latencies) < jobs and time.perf_counter() < until:
        while sent < jobs and sent - len(latencies) < window:
            out += client.submit(sent)
            sent_at.append(time.perf_counter())
            sent += 1
        if out:
            try:
                n = sock.send(out)
                del out[:n]
            except BlockingIOError:
                pass
        readable = selectors.select.select([sock], [sock] if out else [], [], 0.5)[0]
        if readable:
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError(f"{name} closed the connection")
            now = time.perf_counter()
            for _ in range(client.acks(data)):
                latencies.append(now - sent_at.popleft())
    acked_at = time.perf_counter()
    while done.value < jobs and time.perf_counter() < until:
        time.sleep(0.005)  # the workers' count, polled: a benchmark, not a test
    end = time.perf_counter()
    cpu = cpu_seconds(server.pid) - cpu0
    written = write_bytes(server.pid) - io0
    commits = _commits(server) if system == "gloomd" else None
    stop.set()
    workers.join(5)
    if workers.is_alive():
        workers.kill()
    sock.close()
    latencies.sort()
    finished = int(done.value)
    return {
        "config": name,
        "jobs": jobs,
        "acked": len(latencies),
        "finished": finished,
        "jobs_per_s": round(finished / (end - start)),
        "acks_per_s": round(len(latencies) / (acked_at - start)),
        "ack_p50_ms": round(latencies[len(latencies) // 2] * 1000, 3) if latencies else None,
        "ack_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3) if latencies else None,
        "cpu_us_per_job": round(cpu / max(finished, 1) * 1e6, 1),
        "written_bytes_per_job": round(written / max(finished, 1)),
        "deadline_hit": finished < jobs,
        "commits": commits,
    }


def _commits(server: Server) -> int | None:
    """gloomd's journal commits so far (its stats), None without a journal."""
    with socket.create_connection(server.master) as sock:
        payload = b'{"action":"stats"}'
        sock.sendall(_PACK(len(payload)) + payload)
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                return None
            buf += chunk
    journal = json.loads(buf[4 : 4 + int.from_bytes(buf[:4], "big")])["stats"]["journal"]
    return None if journal is None else int(journal["commits"])


# ---------------------------------------------------------------- replay


def replay(count: int) -> dict[str, Any]:
    """Fill a journal with `count` queued jobs (gloomd's broker and store), time a start on it."""
    from gloomd.broker import Broker
    from gloomd.durable import Durable
    from gloomd.journal import BatchBuilder, JournalStore
    from gloomd.messages import Submit

    tmp = tempfile.mkdtemp(prefix="durable-replay-", dir=os.environ.get("DURABLE_DIR"))
    path = os.path.join(tmp, "j.db")
    store = JournalStore.open(path, "off")
    broker = Broker()
    durable = Durable(None)
    broker.journal = durable
    master = broker.connect_master("filler")
    body = "x" * 100
    for first in range(0, count, 10_000):
        for n in range(first, min(count, first + 10_000)):
            broker.submit(master, Submit(n, "echo", "echo", n % 3, body, detach=True))
        builder = BatchBuilder()
        durable.collect(broker.jobs, broker.stores, broker.types, builder, time.time(), 0.0)
        store.commit(builder.take())
        master.outbox.clear()
    store.close()
    size = os.path.getsize(path)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gloomd", "--master-port", "0", "--slave-port", "0", "--no-http",
         "--journal", path, "--max-queued", str(count + 1)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    ready = time.perf_counter() - started
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    restore = re.search(rb"event=restore queued=(\d+).*seconds=([\d.]+)", err)
    subprocess.run(["rm", "-rf", tmp], check=False)
    return {
        "replay_jobs": count,
        "ready_line": line.decode().strip()[:40],
        "restored": int(restore.group(1)) if restore else None,
        "restore_s": float(restore.group(2)) if restore else None,
        "start_to_ready_s": round(ready, 2),
        "file_mb": round(size / 1e6, 1),
    }


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--window", type=int, default=1_000)
    ap.add_argument("--body", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--deadline", type=float, default=120.0, help="seconds per run at most")
    ap.add_argument("--systems", default=",".join(CONFIGS), help="configs, comma-separated")
    ap.add_argument("--replay", default="", help="journal sizes to time a start on, e.g. 100000")
    ap.add_argument("--out", help="also append every JSON line to this file")
    args = ap.parse_args(argv)
    lines: list[dict[str, Any]] = []

    def emit(line: dict[str, Any]) -> None:
        text = json.dumps(line)
        print(text, flush=True)
        lines.append(line)
        if args.out:
            with open(args.out, "a") as f:
                f.write(text + "\n")

    names = [n for n in args.systems.split(",") if n]
    for n in args.replay.split(","):
        if n:
            emit(replay(int(n)))
    for _ in range(args.rounds if names else 0):
        for name in names:
            try:
                emit(run(name, args.jobs, args.window, args.body, args.deadline))
            except (ServerError, RuntimeError, OSError) as exc:
                emit({"config": name, "error": str(exc)})
    _table(lines)
    return 0


def _table(lines: list[dict[str, Any]]) -> None:
    runs: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        if "jobs_per_s" in line:
            runs.setdefault(line["config"], []).append(line)
    if not runs:
        return
    keys = ("jobs_per_s", "ack_p50_ms", "ack_p99_ms", "cpu_us_per_job", "written_bytes_per_job")
    med = {
        name: {key: statistics.median(r[key] for r in rows) for key in keys}
        for name, rows in runs.items()
    }
    rounds = max(map(len, runs.values()))
    print(
        f"\n{'config':<16} {'jobs/s':>8} {'ack p50 ms':>11} {'ack p99 ms':>11} "
        f"{'CPU us/job':>11} {'bytes/job':>10}  (medians of {rounds})"
    )
    for name, m in med.items():
        print(
            f"{name:<16} {m['jobs_per_s']:>8.0f} {m['ack_p50_ms']:>11.2f} "
            f"{m['ack_p99_ms']:>11.2f} {m['cpu_us_per_job']:>11.1f} "
            f"{m['written_bytes_per_job']:>10.0f}"
        )
    for ours, theirs in (
        ("gloomd-full", "beanstalkd-f0"),
        ("gloomd-full", "gearmand-sqlite"),
        ("gloomd-normal", "beanstalkd-f50"),
        ("gloomd-full", "gloomd"),
        ("gloomd-normal", "gloomd"),
        ("gloomd-off", "gloomd"),
    ):
        if ours in med and theirs in med:
            ratio = med[ours]["jobs_per_s"] / max(med[theirs]["jobs_per_s"], 1)
            print(f"{ours} / {theirs}: {ratio:.2f}x jobs/s")


if __name__ == "__main__":
    raise SystemExit(main())
