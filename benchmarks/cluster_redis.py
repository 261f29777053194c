"""A real redis-server on 127.0.0.1, a free port and a directory of its own,
for the cluster tests and benchmarks: stopped (or killed) by its user.

Ready is read from the server's own log line, not waited for by sleeping.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
READY = b"Ready to accept connections"
#: Seconds a server may take to start (it reads its AOF first after a restart).
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; `start` again after `stop` or `kill` to
    restart it on the same port and directory (its AOF, if on, survives)."""

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = False,
        password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """`tls`: (certificate, key, CA) files: the server then speaks TLS
        only, on `port`."""
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.password = password
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = "" if self.password is None else f":{self.password}@"
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[2]}"

    @property
    def pid(self) -> int:
        """The running server's pid (for /proc figures)."""
        if self.process is None:
            raise RuntimeError("redis-server is not running")
        return self.process.pid

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--logfile",
            "",
            "--loglevel",
            "notice",
        ]
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.tls is not None:
            cert, key, ca = self.tls
            args[args.index("--port") + 1] = "0"
            args += ["--tls-port", str(self.port), "--tls-cert-file", str(cert)]
            args += ["--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)]
            args += ["--tls-auth-clients", "no"]
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        seen = []
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if READY in line:
                self.process = process
                return
        process.kill()
        process.wait()
        raise RuntimeError(b"redis-server did not start:\n" + b"".join(seen[-20:]))

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process.stdout.close()  # type: ignore[union-attr]
            self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only what the AOF holds survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process.stdout.close()  # type: ignore[union-attr]
            self.process = None

    def cli(self, *args: str) -> str:
        options = ["-p", str(self.port)]
        if self.password is not None:
            options += ["--no-auth-warning", "-a", self.password]
        if self.tls is not None:
            options += ["--tls", "--cacert", str(self.tls[2])]
        done = subprocess.run(
            ["redis-cli", *options, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout
