"""Start and stop each system on 127.0.0.1 for one run.

Every run gets a fresh server, so its peak RSS and CPU belong to that run
alone.  gloomd chooses its own ports (``--master-port 0 --slave-port 0``) and
says so on stdout; gearmand and beanstalkd cannot bind port 0 *and* report it,
so they get a port that was free a moment ago, and a start that fails on it is
retried on another.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

__all__ = ["Server", "ServerError", "installed", "start_reporting", "start_server"]

READY_TIMEOUT = 20.0


class ServerError(RuntimeError):
    """The server could not be started (not installed, crashed, never listened)."""


@dataclass
class Server:
    system: str
    proc: subprocess.Popen[bytes] | None  # None: attached to a server we did not start
    pid: int
    master: tuple[str, int]
    slave: tuple[str, int]
    command: list[str] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def installed(system: str) -> str | None:
    """Path of the system's binary, or None (gloomd is this repository: always there)."""
    if system == "gloomd":
        return sys.executable
    return shutil.which(system) or next(
        (p for p in (f"/usr/sbin/{system}", f"/usr/bin/{system}") if os.path.exists(p)), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(proc: subprocess.Popen[bytes], port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            # Polling is the only readiness signal these daemons give.
            time.sleep(0.02)
    raise ServerError(f"not listening on port {port} after {READY_TIMEOUT} s")


def _start_gloomd(extra: list[str]) -> Server:
    # The HTTP port on a free port too: runs may overlap another daemon's 9997.
    cmd = [sys.executable, "-m", "gloomd", "--master-port", "0", "--slave-port", "0"]
    cmd += ["--http-port", "0"]
    # Every generator connection comes from 127.0.0.1, so gloomd's per-address
    # cap (1,000 by default, a guard against one noisy host) would refuse the
    # 1,024-slave fan-out.  The peers have no such cap.
    cmd += ["--max-per-host", "1000000", *extra]
    return start_reporting("gloomd", cmd)


def start_reporting(
    system: str, cmd: list[str], cwd: str | os.PathLike[str] | None = None
) -> Server:
    """Start `cmd`, a server that prints gloomd's ready line with the ports it
    bound (gloomd itself, or `benchmarks.latency_floor serve`)."""
    tmp = tempfile.TemporaryDirectory(prefix=f"bench-{system}-")
    log = open(os.path.join(tmp.name, "stderr.log"), "wb")
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
    )
    log.close()
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + READY_TIMEOUT
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            break
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        line += chunk
    sel.close()
    words = dict(w.split("=", 1) for w in line.decode(errors="replace").split() if "=" in w)
    if not line.startswith(b"gloomd ready") or "master" not in words or "slave" not in words:
        proc.kill()
        proc.wait()
        with open(os.path.join(tmp.name, "stderr.log"), "rb") as f:
            err = f.read()[-2000:].decode(errors="replace")
        tmp.cleanup()
        raise ServerError(f"{system} did not report ready (stdout {line!r}); stderr:\n{err}")

    def addr(text: str) -> tuple[str, int]:
        host, port = text.rsplit(":", 1)
        return host, int(port)

    return Server(system, proc, proc.pid, addr(words["master"]), addr(words["slave"]), cmd, tmp)


def _start_peer(system: str, binary: str, extra: list[str]) -> Server:
    last: Exception | None = None
    for _ in range(3):
        port = _free_port()
        tmp = tempfile.TemporaryDirectory(prefix=f"bench-{system}-")
        if system == "gearmand":
            cmd = [
                binary, "--listen", "127.0.0.1", "--port", str(port),
                "--log-file", "none", "--pid-file", os.path.join(tmp.name, "gearmand.pid"),
                "--config-file", os.path.join(tmp.name, "none.conf"),
                # The default backlog of 32 makes a burst of 1,024 worker
                # connects wait for SYN retransmits; setup is not what we measure.
                "--backlog", "2048",
                *extra,
            ]  # fmt: skip
            open(os.path.join(tmp.name, "none.conf"), "w").close()
        elif system == "beanstalkd":
            # -z: the default job size cap (65,535 B) is below the 64 KiB workload.
            cmd = [binary, "-l", "127.0.0.1", "-p", str(port), "-z", str(1 << 24), *extra]
        else:
            raise ServerError(f"unknown system {system!r}")
        log_path = os.path.join(tmp.name, "stderr.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            _wait_listening(proc, port, time.monotonic() + READY_TIMEOUT)
        except ServerError as exc:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            with open(log_path, "rb") as f:
                err = f.read()[-1000:].decode(errors="replace")
            last = ServerError(f"{system}: {exc}\n{err}")
            tmp.cleanup()
            continue
        addr = ("127.0.0.1", port)
        return Server(system, proc, proc.pid, addr, addr, cmd, tmp)
    assert last is not None
    raise last


def start_server(system: str, extra: list[str] | None = None) -> Server:
    """Start ``system`` on 127.0.0.1 and return once it accepts connections."""
    binary = installed(system)
    if binary is None:
        raise ServerError(f"{system} is not installed")
    if system == "gloomd":
        return _start_gloomd(list(extra or []))
    return _start_peer(system, binary, list(extra or []))
