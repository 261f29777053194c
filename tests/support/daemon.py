"""Start a real `gloomd` process for end-to-end tests, and stop it cleanly.

The daemon prints one `gloomd ready ...` line on stdout once it listens; we
block on that line (with a timeout) instead of polling or sleeping.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

READY = re.compile(
    rb"gloomd ready master=(?P<host>[^ ]+):(?P<master>\d+) slave=[^ ]+:(?P<slave>\d+)"
    rb"(?: ws=[^ ]+:(?P<ws>\d+))?(?: http=[^ ]+:(?P<http>\d+))?"
)


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    master_port: int
    slave_port: int
    ws_port: int | None
    ready_line: str
    http_port: int | None = None

    @property
    def master_addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.master_port)

    @property
    def slave_addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.slave_port)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the daemon and wait for it to exit; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def _read_ready(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise TimeoutError("gloomd did not report ready in time")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"gloomd exited early with status {proc.wait()}")
            buf += chunk
    return buf.split(b"\n", 1)[0]


@contextlib.contextmanager
def spawn_gloomd(
    *extra_args: str,
    timeout: float = 20.0,
    env: dict[str, str] | None = None,
    capture_logs: bool = False,
    preexec_fn: Callable[[], None] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Iterator[Daemon]:
    """Run `python -m gloomd` on free loopback ports for the duration of a block.

    The HTTP port is on a free port too (`--http-port 0`), so that tests may
    run beside a daemon that holds the default 9997; `--no-http` (or another
    `--http-port`) in `extra_args` wins, being later.

    With `capture_logs`, stderr is a pipe the test reads after `stop()`; keep
    such tests small, since a full pipe would stall the daemon.  With
    GLOOMD_TEST_QUIET_LOGS=1 in `env`, the daemon's log is discarded.
    `preexec_fn` runs in the child before gloomd (e.g. to lower a resource limit).
    `cwd`: the directory it runs in, whose `gloomd` package `-m` imports first
    (tests/test_compiled.py runs a compiled copy so).
    """
    args = [
        sys.executable, "-m", "gloomd", "--master-port", "0", "--slave-port", "0",
        "--http-port", "0", *extra_args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE
        if capture_logs
        else (subprocess.DEVNULL if (env or {}).get("GLOOMD_TEST_QUIET_LOGS") else None),
        env={**os.environ, **(env or {})},
        preexec_fn=preexec_fn,
        cwd=cwd,
    )
    try:
        line = _read_ready(proc, timeout)
        match = READY.search(line)
        assert match, line
        ws, http = match.group("ws"), match.group("http")
        daemon = Daemon(
            proc,
            int(match.group("master")),
            int(match.group("slave")),
            int(ws) if ws else None,
            line.decode(),
            int(http) if http else None,
        )
        yield daemon
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
