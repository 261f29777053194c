"""Job handlers the worker tests run in pool processes.

Jobs that must be observed while running ("gated" ones) connect to a TCP gate
the test listens on (``body["gate"]`` is its port), announce themselves with
one JSON line (job id, attempt, pid, extra pids) and then wait: for the word
``go`` from the test, or forever.  So a test knows exactly when a job started
and which process runs it, without sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

NOT_CALLABLE = 42


def _announce(body: dict[str, Any], job: Any, **extra: Any) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", body["gate"]), timeout=30)
    sock.settimeout(None)
    info = {
        "id": job.id,
        "attempt": job.attempt,
        "pid": os.getpid(),
        "tag": body.get("tag"),
        **extra,
    }
    sock.sendall(json.dumps(info).encode() + b"\n")
    return sock


def _wait_go(sock: socket.socket) -> None:
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(64)
        if not chunk:
            raise RuntimeError("the gate closed before saying go")
        data += chunk
    sock.close()


def echo(body: Any) -> Any:
    return body


def echo_job(body: Any, job: Any) -> dict[str, Any]:
    return {
        "body": body,
        "id": job.id,
        "type": job.type,
        "attempt": job.attempt,
        "pid": job.pid,
        "timeout": job.timeout,
    }


def pid(body: Any) -> int:
    return os.getpid()


def boom(body: Any) -> None:
    raise ValueError(f"boom: {body}")


def looks_like_error(body: Any) -> str:
    return "ValueError: boom"


def unencodable(body: Any) -> Any:
    return {"fine": 1, "not json": {1, 2, 3}}


def crash_exit(body: Any) -> None:
    os._exit(int(body))


def crash_signal(body: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def gated(body: Any, job: Any) -> dict[str, Any]:
    """Announce, wait for go, then return (or raise, with ``body["fail"]``)."""
    sock = _announce(body, job)
    _wait_go(sock)
    if body.get("fail"):
        raise RuntimeError("failed after the gate, as asked")
    return {"id": job.id, "pid": os.getpid(), "tag": body.get("tag")}


def sleeper(body: Any, job: Any) -> None:
    """Announce, then sleep far past any test timeout (SIGTERM ends it)."""
    _announce(body, job)
    time.sleep(3600)


def stubborn(body: Any, job: Any) -> None:
    """Ignore SIGTERM, start a grandchild that ignores it too, announce both, sleep."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('up', flush=True); time.sleep(3600)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None
    child.stdout.readline()  # its SIGTERM handler is in place
    _announce(body, job, grandchild=child.pid)
    time.sleep(3600)


def reporter(body: Any, job: Any) -> str:
    for step in range(body["steps"]):
        job.progress({"step": step, "pid": job.pid})
    return "reported"


async def async_echo(body: Any, job: Any) -> dict[str, Any]:
    import trio

    await trio.sleep(0)
    return {"body": body, "async": True, "id": job.id}


class Counter:
    """A class handler: state must never carry from one job to the next."""

    created = 0  # per process: how many instances this process built

    def __init__(self, start: int = 0, step: int = 1) -> None:
        Counter.created += 1
        self.count = start
        self.step = step

    def bump(self, body: Any) -> dict[str, Any]:
        self.count += self.step
        return {"count": self.count, "instances": Counter.created, "pid": os.getpid()}


def retry_until(body: Any, job: Any) -> dict[str, Any]:
    """Ask for a retry until attempt `body["succeed_at"]`, then report the attempt."""
    from gloom.worker import Retry

    if job.attempt < body["succeed_at"]:
        raise Retry(f"attempt {job.attempt} is too early")
    return {"attempt": job.attempt, "id": job.id}


def retry_subclass(body: Any) -> None:
    """A user's own retry request: a subclass of Retry keeps its meaning."""
    from gloom.worker import Retry

    class UpstreamBusy(Retry):
        pass

    raise UpstreamBusy("upstream busy")
