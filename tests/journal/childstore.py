"""A journal store in another process, driven line by line, for tests that need one.

Tests of the lock (a second process), of SIGKILL (a process killed right
after `commit` returned) and of a full disk (a file size limit, which is a
property of the process) run the store here.  The child reads one JSON
command per line on stdin and writes one JSON answer per line on stdout;
the parent blocks on each answer with a deadline, so the tests need no
sleeps.  EOF on stdin closes the store and ends the child.

    python -m tests.journal.childstore        # from the checkout's root

Commands: open {path, sync, tuning?}, commit {puts: [[id, state, record]],
deletes: [id]}, fill {first, count, size, batch} (puts of integer ids
first.., records of `size` bytes, `batch` per commit, stopping at the
first failure), commit_loop {batches, size} (batch n puts ids n*size..,
answering {"committed": n} after each commit returns), load, fsize {limit},
drop_privileges, close.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def record_of(job_id: int, size: int) -> bytes:
    """A record of `size` bytes that names its job (so a mixed-up row shows)."""
    head = b'{"id":%d,"body":"' % job_id
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


def digest(rows: list[tuple[bytes, str, bytes]]) -> str:
    h = hashlib.sha256()
    for key, state, record in sorted(rows):
        h.update(b"%d:%s|%s|%d:%s" % (len(key), key, state.encode(), len(record), record))
    return h.hexdigest()


# ---------------------------------------------------------------- the child


def _serve() -> None:
    from gloomd.journal import Batch, JournalError, JournalStore, JournalWriteError, Tuning, job_key

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit: EFBIG, not death
    store: JournalStore | None = None

    def answer(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def commit(batch: Batch) -> dict[str, Any]:
        assert store is not None
        try:
            return {"ok": True, "seconds": store.commit(batch)}
        except JournalWriteError as exc:
            return {"error": "JournalWriteError", "reason": exc.reason}

    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "open":
            try:
                store = JournalStore.open(
                    cmd["path"], cmd.get("sync", "full"), tuning=Tuning(**cmd.get("tuning", {}))
                )
                answer({"ok": True})
            except JournalError as exc:
                answer({"error": "JournalError", "reason": exc.reason})
        elif op == "commit":
            puts = {job_key(i): (s, r.encode()) for i, s, r in cmd.get("puts", [])}
            answer(commit(Batch(puts, {job_key(i) for i in cmd.get("deletes", [])})))
        elif op == "fill":
            first, size, per = cmd["first"], cmd["size"], cmd["batch"]
            done, result = 0, {"ok": True}
            while done < cmd["count"]:
                ids = range(first + done, first + done + per)
                batch = Batch({job_key(i): ("queued", record_of(i, size)) for i in ids})
                result = commit(batch)
                if "error" in result:
                    break
                done += per
            answer({**result, "stored": done})
        elif op == "commit_loop":
            size = cmd["size"]
            for n in range(1, cmd["batches"] + 1):
                ids = range(n * size, (n + 1) * size)
                result = commit(Batch({job_key(i): ("queued", record_of(i, 100)) for i in ids}))
                answer({"committed": n, **result})
        elif op == "load":
            assert store is not None
            snap = store.load()
            answer({"ok": True, "jobs": len(snap.jobs), "digest": digest(snap.jobs)})
        elif op == "fsize":
            limit = resource.RLIM_INFINITY if cmd["limit"] is None else cmd["limit"]
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            answer({"ok": True})
        elif op == "drop_privileges":
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            answer({"ok": True, "uid": os.getuid()})
        elif op == "close":
            if store is not None:
                store.close()
            answer({"ok": True})
        else:
            answer({"error": "unknown op", "op": op})
    if store is not None:
        store.close()


# ---------------------------------------------------------------- the parent


class ChildStore:
    """The parent's end: send a command, wait (bounded) for its answer."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.journal.childstore"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buf = b""

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    raise TimeoutError("the child store did not answer in time")
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"the child store ended: {self._stderr()}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.read()

    def kill(self) -> None:
        """SIGKILL, and wait until the process is gone (its flock with it)."""
        self.proc.kill()
        self.proc.wait(self.timeout)

    def finish(self) -> int:
        """EOF on stdin: the child closes its store and exits; its status."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        status = self.proc.wait(self.timeout)
        self._close_pipes()
        return status

    def _stderr(self) -> str:
        assert self.proc.stderr is not None
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()

    def __enter__(self) -> ChildStore:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(self.timeout)
        self._close_pipes()


if __name__ == "__main__":
    _serve()
