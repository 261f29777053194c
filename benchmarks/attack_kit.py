"""Tools for the attack benchmark: a gloomd to attack, what /proc says about it, sockets.

Everything here is blocking and bounded by timeouts: an attack must never hang
the harness, whatever the daemon does (stall, die, stop reading), so every
socket carries a timeout and every wait a deadline.

* `start_daemon` runs ``python -m gloomd`` on 127.0.0.1 ports chosen by the
  kernel, reads its ready line, sends its log to a file (the log is measured,
  and a pipe nobody reads would stall the daemon), optionally under a lower
  descriptor limit.
* `Sampler` follows the daemon's resident memory, descriptors and threads from
  /proc while an attack runs; `daemon_sockets` lists its TCP sockets with their
  timers (keepalive) and peers.
* `FrameSocket` speaks gloomd's framing; `WsClient` is the least websocket
  client the attacks need (handshake, one masked text frame, read frames).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Daemon",
    "DaemonSocket",
    "FrameSocket",
    "Sampler",
    "WsClient",
    "count_fds",
    "daemon_sockets",
    "frame",
    "raw_frame",
    "readable",
    "reset_peak_rss",
    "start_daemon",
    "supported_flags",
]

HOST = "127.0.0.1"
READY_TIMEOUT = 20.0
_READY = re.compile(
    rb"gloomd ready master=[^ ]+:(?P<master>\d+) slave=[^ ]+:(?P<slave>\d+)"
    rb"(?: ws=[^ ]+:(?P<ws>\d+))?"
)
_HEADER = struct.Struct(">I")
_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- frames


def raw_frame(payload: bytes) -> bytes:
    """A length prefix, then `payload` exactly as given (it may be invalid JSON)."""
    return _HEADER.pack(len(payload)) + payload


def frame(obj: Any) -> bytes:
    """Encode with the standard library (exact big integers, escaped non-ASCII)."""
    return raw_frame(json.dumps(obj, separators=(",", ":")).encode())


class FrameSocket:
    """A blocking TCP connection that reads and writes whole frames, with timeouts."""

    def __init__(self, port: int, *, timeout: float = 5.0, token: str | None = None) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self._buf = bytearray()
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if token is not None:
                reply = self.request({"action": "auth", "token": token})
                if reply != {"ok": True}:
                    raise ConnectionError(f"auth refused: {reply!r}")
        except BaseException:
            self.sock.close()
            raise

    @classmethod
    def wrap(cls, sock: socket.socket) -> FrameSocket:
        """Frames over a socket connected elsewhere (no authentication)."""
        self = cls.__new__(cls)
        self.sock, self._buf = sock, bytearray()
        return self

    def send(self, obj: Any) -> None:
        self.sock.sendall(frame(obj))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_payload(self, timeout: float = 5.0) -> bytes | None:
        """The next frame's payload; None at EOF; TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self._buf) >= 4:
                (n,) = _HEADER.unpack_from(self._buf)
                if len(self._buf) >= 4 + n:
                    payload = bytes(self._buf[4 : 4 + n])
                    del self._buf[: 4 + n]
                    return payload
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame in time")
            self.sock.settimeout(min(left, 1.0))
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not chunk:
                return None
            self._buf += chunk

    def recv(self, timeout: float = 5.0) -> Any:
        payload = self.recv_payload(timeout)
        if payload is None:
            raise EOFError("connection closed")
        return json.loads(payload)

    def request(self, obj: Any, timeout: float = 5.0) -> Any:
        self.send(obj)
        return self.recv(timeout)

    def drain(self, frames: int, timeout: float) -> tuple[int, int, bool]:
        """Read up to `frames` frames within `timeout` s without decoding them.

        Returns (frames read, payload bytes read, EOF seen).
        """
        deadline = time.monotonic() + timeout
        count = size = 0
        while count < frames:
            left = deadline - time.monotonic()
            if left <= 0:
                return count, size, False
            try:
                payload = self.recv_payload(left)
            except TimeoutError:
                return count, size, False
            if payload is None:
                return count, size, True
            count += 1
            size += len(payload)
        return count, size, False

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0) instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])


# --------------------------------------------------------------------------- the daemon


def readable(socks: Iterable[socket.socket], timeout: float) -> list[socket.socket]:
    """The sockets with something to read (or EOF) within `timeout`.

    `select.poll`, not `select.select`: attacks hold descriptors numbered past
    1,024, which select() cannot watch.
    """
    by_fd = {sock.fileno(): sock for sock in socks}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(timeout * 1000)]


@functools.cache
def supported_flags() -> frozenset[str]:
    """The flags this checkout's `gloomd --help` lists.

    Attacks name the caps they want (some only exist once issue 18 is fixed);
    only those the daemon knows are passed, so one harness measures before and
    after the fixes.
    """
    done = subprocess.run(
        [sys.executable, "-m", "gloomd", "--help"],
        capture_output=True,
        cwd=ROOT,
        timeout=30,
        check=True,
    )
    return frozenset(re.findall(r"--[a-z][a-z0-9-]*", done.stdout.decode()))


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    master_port: int
    slave_port: int
    ws_port: int | None
    log_path: str
    argv: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def cause(self) -> str:
        """The last exception line of the log: why it died, in a few words."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, self.log_size() - 65536))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        found = re.findall(
            r"^[\s|+]*([A-Za-z_.]*(?:Error|Exception|Group)\b[^\n]*)", tail, re.MULTILINE
        )
        return found[-1].strip()[:160] if found else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def start_daemon(flags: list[str], log_path: str, *, nofile: int | None = None) -> Daemon:
    """Run ``python -m gloomd`` on free loopback ports; return once it is ready.

    `nofile` sets both the soft and the hard RLIMIT_NOFILE of the daemon, so
    that raising the soft limit to the hard one cannot lift it.
    """
    argv = [sys.executable, "-m", "gloomd", "--master-port", "0", "--slave-port", "0"]
    argv += ["--http-port", "0", *flags]  # free ports only: runs may overlap

    def limit() -> None:  # runs in the child between fork and exec
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
            # The limit must hold from the daemon's first instruction (it may raise
            # its soft limit at start); the harness forks before its threads start.
            preexec_fn=limit,
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
        chunk = os.read(proc.stdout.fileno(), 4096) if ready else b""
        if not chunk:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
            with open(log_path, "rb") as f:
                err = f.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"gloomd did not report ready ({argv}):\n{err}")
        line += chunk
    match = _READY.search(line)
    assert match, line
    ws = match.group("ws")
    return Daemon(
        proc,
        int(match.group("master")),
        int(match.group("slave")),
        int(ws) if ws else None,
        log_path,
        argv,
    )


# --------------------------------------------------------------------------- /proc


def _status(pid: int) -> dict[str, int]:
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith((b"VmRSS:", b"VmHWM:", b"Threads:")):
                key, value = line.split(b":", 1)
                found[key.decode()] = int(value.split()[0])
    return found


def count_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's VmHWM of `pid` (clear_refs 5), so the next peak is the attack's."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Sampler(threading.Thread):
    """Samples the daemon's RSS every 20 ms, its descriptors every 100 ms.

    The peak RSS is the kernel's VmHWM (it catches spikes between samples);
    the last values seen are kept after the process is gone.
    """

    def __init__(self, pid: int, period: float = 0.02) -> None:
        super().__init__(daemon=True, name="sampler")
        self.pid = pid
        self.period = period
        self.rss_kb = 0
        self.hwm_kb = 0
        self.max_rss_kb = 0
        self.threads = 0
        self.max_threads = 0
        self.fds = count_fds(pid)
        self.max_fds = self.fds
        self._halt = threading.Event()
        self._lock = threading.RLock()  # restart_peaks samples under it

    def run(self) -> None:
        n = 0
        while not self._halt.is_set():
            if not self.sample(fds=n % 5 == 0):
                return
            n += 1
            self._halt.wait(self.period)

    def sample(self, fds: bool = True) -> bool:
        try:
            status = _status(self.pid)
        except OSError:
            return False
        if "VmRSS" not in status:  # a zombie: gone but not reaped
            return False
        with self._lock:
            self.rss_kb = status["VmRSS"]
            self.max_rss_kb = max(self.max_rss_kb, self.rss_kb)
            self.hwm_kb = max(status.get("VmHWM", 0), self.max_rss_kb)
            self.threads = status.get("Threads", 0)
            self.max_threads = max(self.max_threads, self.threads)
            if fds:
                count = count_fds(self.pid)
                if count >= 0:
                    self.fds = count
                    self.max_fds = max(self.max_fds, count)
        return True

    def restart_peaks(self) -> None:
        """From now on, peaks are measured afresh (the attack's, not its setup's)."""
        with self._lock:
            reset_peak_rss(self.pid)
            self.sample()
            self.max_rss_kb = self.hwm_kb = self.rss_kb
            self.max_threads = self.threads
            self.max_fds = self.fds

    def finish(self) -> None:
        self._halt.set()
        self.join(5)


@dataclass(frozen=True)
class DaemonSocket:
    local_port: int
    remote_port: int
    state: int  # 1 = ESTABLISHED (include/net/tcp_states.h)
    timer: int  # 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero window probe
    timer_s: float  # seconds until the timer fires


def daemon_sockets(pid: int) -> list[DaemonSocket]:
    """The daemon's own TCP sockets (by inode), read from /proc/net/tcp{,6}."""
    inodes: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return []
    found: list[DaemonSocket] = []
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[9] not in inodes:
                continue
            timer, when = cols[5].split(":")
            found.append(
                DaemonSocket(
                    local_port=int(cols[1].rsplit(":", 1)[1], 16),
                    remote_port=int(cols[2].rsplit(":", 1)[1], 16),
                    state=int(cols[3], 16),
                    timer=int(timer, 16),
                    timer_s=int(when, 16) / _TICKS,
                )
            )
    return found


# --------------------------------------------------------------------------- websocket


@dataclass
class WsClient:
    """A websocket client over one blocking socket: enough to attack wsjobd."""

    sock: socket.socket
    _buf: bytearray = field(default_factory=bytearray)

    @classmethod
    def connect(cls, port: int, path: str = "/", timeout: float = 5.0) -> WsClient:
        client = cls(socket.create_connection((HOST, port), timeout=timeout))
        try:
            client.sock.sendall(client.upgrade_request(path))
            client.read_upgrade(timeout)
        except BaseException:
            client.close()
            raise
        return client

    @staticmethod
    def upgrade_request(path: str = "/") -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    def read_upgrade(self, timeout: float = 5.0) -> None:
        """Read the HTTP response; raise ConnectionError unless it is 101."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no upgrade response")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self._buf += chunk
        head, _, rest = bytes(self._buf).partition(b"\r\n\r\n")
        self._buf = bytearray(rest)
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))

    def send_text(self, payload: bytes, opcode: int = 1) -> None:
        """One masked frame (clients must mask) holding `payload` as given."""
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        key = int.from_bytes(mask * (n // 4 + 1), "little")
        body = (int.from_bytes(payload, "little") ^ key).to_bytes(n + 4, "little")[:n] if n else b""
        self.sock.sendall(head + mask + body)

    def recv_frame(self, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next frame, None at EOF; TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no websocket frame in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not chunk:
                return None
            self._buf += chunk

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        opcode, n, pos = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            (n,) = struct.unpack_from("!H", buf, 2)
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,) = struct.unpack_from("!Q", buf, 2)
            pos = 10
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos : pos + n])
        del buf[: pos + n]
        return opcode, payload

    def messages(self, timeout: float) -> Iterator[tuple[int, bytes]]:
        """Frames until EOF or a close frame (included), within `timeout` s in all."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.recv_frame(max(deadline - time.monotonic(), 0.001))
            if got is None:
                return
            yield got
            if got[0] == 8:
                return

    def close(self) -> None:
        self.sock.close()
