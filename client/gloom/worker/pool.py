"""Pool processes as the trio supervisor sees them: start, talk, watch, kill.

Processes come from multiprocessing's *fork server*: a clean helper process,
started once, that forks each pool process for us.  Forking the trio
supervisor itself would copy its threads, wakeup fds and epoll state into the
child; spawning a fresh interpreter per process costs ~0.3 s each, which
would make every crash or timeout replacement slow.  The fork server is
multiprocessing's own, preloaded with `gloom.worker.child`, so a pool process
starts in a few milliseconds.

Nothing here blocks the trio loop: the pipes are non-blocking on our side
and waited on with `wait_readable`/`wait_writable`; the exit of a process is
noticed through multiprocessing's sentinel fd, also with `wait_readable`;
only `Process.start` (a short unix-socket exchange with the fork server, and
the fork server's own start the first time) runs in a worker thread.
"""

from __future__ import annotations

import errno
import math
import multiprocessing
import os
import signal
from dataclasses import dataclass
from typing import Any

import trio

from gloomd import jsoncodec
from gloomd.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame

from .child import child_main
from .handler import HandlerError, HandlerImportError, HandlerNotFound, HandlerSpec

__all__ = ["Exited", "PoolProcess", "ProcessFactory", "SpawnFailed"]

_READ_SIZE = 256 * 1024


class SpawnFailed(Exception):
    """A pool process died or went silent before it was ready."""


@dataclass(frozen=True)
class Exited:
    """The process is gone; `exitcode` is negative for a signal (multiprocessing's rule)."""

    exitcode: int

    def describe(self) -> dict[str, Any]:
        if self.exitcode < 0:
            return {"signal": -self.exitcode}
        return {"exitcode": self.exitcode}

    def text(self) -> str:
        if self.exitcode < 0:
            try:
                name = signal.Signals(-self.exitcode).name
            except ValueError:
                name = f"signal {-self.exitcode}"
            return f"was killed by {name}"
        return f"exited with status {self.exitcode}"


class PoolProcess:
    """One pool process and its two pipes.

    `receive()` returns the process's messages in order and, once it is gone,
    an `Exited` (after every message it wrote before dying).
    """

    def __init__(self, proc: Any, command_fd: int, result_fd: int) -> None:
        self.proc = proc
        self.pid: int = proc.pid
        self.jobs_started = 0
        self.exitcode: int | None = None
        self.exited = trio.Event()
        self._command_fd = command_fd
        self._result_fd = result_fd
        os.set_blocking(command_fd, False)
        os.set_blocking(result_fd, False)
        self._decoder = FrameDecoder(DEFAULT_MAX_FRAME + 4096)
        self._inbox_send, self._inbox = trio.open_memory_channel[dict[str, Any] | Exited](math.inf)
        self._closed = False

    def __repr__(self) -> str:
        return f"<PoolProcess pid={self.pid} jobs={self.jobs_started}>"

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()

    # ------------------------------------------------------------ messages

    async def send(self, message: dict[str, Any]) -> None:
        """Write one message; a process that died meanwhile is not an error here
        (its `Exited` is what the caller will read next)."""
        view = memoryview(encode_frame(message))
        while view:
            if not self.alive:
                return
            try:
                written = os.write(self._command_fd, view)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_writable(self._command_fd)
                except trio.ClosedResourceError:
                    return
                continue
            except (OSError, trio.ClosedResourceError):
                return
            view = view[written:]
        await trio.lowlevel.checkpoint()

    async def receive(self) -> dict[str, Any] | Exited:
        return await self._inbox.receive()

    def _drain(self) -> bool:
        """Read what is there now; False at end of file."""
        while True:
            try:
                data = os.read(self._result_fd, _READ_SIZE)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            for payload in self._decoder.feed(data):
                self._inbox_send.send_nowait(jsoncodec.loads(payload))

    async def _read_loop(self) -> None:
        while self._drain():
            await trio.lowlevel.wait_readable(self._result_fd)

    async def watch(self) -> None:
        """Run for the process's lifetime: deliver its messages, then its exit."""
        sentinel = self.proc.sentinel
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_loop)
            await trio.lowlevel.wait_readable(sentinel)
            nursery.cancel_scope.cancel()
        # Whatever it wrote before dying is still in the pipe: deliver it first.
        # (Not to end of file: a grandchild may hold the pipe open.)
        self._drain()
        self.proc.join(0)  # the status is already there: this does not block
        code = self.proc.exitcode
        self.exitcode = 255 if code is None else code
        self._inbox_send.send_nowait(Exited(self.exitcode))
        self.exited.set()
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in (self._command_fd, self._result_fd):
            trio.lowlevel.notify_closing(fd)
            os.close(fd)
        if not self.alive:
            trio.lowlevel.notify_closing(self.proc.sentinel)
            self.proc.close()

    # ------------------------------------------------------------ ending it

    def signal_group(self, sig: int) -> None:
        """Signal the process group (the process and whatever it started)."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            # Not yet its own group leader (it dies before setpgid): signal it alone.
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        except OSError as exc:  # pragma: no cover - defensive
            if exc.errno != errno.ESRCH:
                raise

    async def terminate(self, grace: float) -> None:
        """SIGTERM the group, SIGKILL it after `grace` seconds; return once dead.

        The final SIGKILL goes to the group even when the leader obeyed, so
        a grandchild that ignored SIGTERM does not outlive its job.
        """
        if self.alive:
            self.signal_group(signal.SIGTERM)
            with trio.move_on_after(grace):
                await self.exited.wait()
        self.signal_group(signal.SIGKILL)
        await self.exited.wait()

    async def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        await self.exited.wait()

    async def retire(self, timeout: float) -> None:
        """Ask an idle process to exit; kill it if it does not within `timeout`."""
        if self.alive:
            await self.send({"op": "exit"})
            with trio.move_on_after(timeout):
                await self.exited.wait()
        if self.alive:
            await self.kill()


class ProcessFactory:
    """Starts pool processes for one handler; `spawn` returns them ready for jobs."""

    def __init__(self, spec: HandlerSpec, nursery: trio.Nursery, *, startup_timeout: float = 60.0) -> None:
        self.spec = spec
        self.startup_timeout = startup_timeout
        self._nursery = nursery
        self._lock = trio.Lock()  # Process.start is not safe from two threads at once
        self._ctx = multiprocessing.get_context("forkserver")
        # Only effective if the fork server is not running yet in this process.
        self._ctx.set_forkserver_preload(["gloom.worker.child"])

    async def spawn(self) -> PoolProcess:
        ctx = self._ctx
        command_r, command_w = ctx.Pipe(duplex=False)
        result_r, result_w = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=child_main,
            args=(self.spec, command_r, result_w, DEFAULT_MAX_FRAME),
            name="gloom-worker",
        )
        try:
            async with self._lock:
                await trio.to_thread.run_sync(proc.start)
        except BaseException:
            for conn in (command_r, command_w, result_r, result_w):
                conn.close()
            raise
        # Our copies of the child's ends must go, or we would never see EOF.
        command_r.close()
        result_w.close()
        pool_proc = PoolProcess(proc, os.dup(command_w.fileno()), os.dup(result_r.fileno()))
        command_w.close()
        result_r.close()
        self._nursery.start_soon(pool_proc.watch)
        try:
            with trio.fail_after(self.startup_timeout):
                first = await pool_proc.receive()
        except trio.TooSlowError:
            await pool_proc.kill()
            raise SpawnFailed(f"pool process {pool_proc.pid} did not start within {self.startup_timeout} s") from None
        except BaseException:
            with trio.CancelScope(shield=True):
                await pool_proc.kill()
            raise
        if isinstance(first, Exited):
            raise SpawnFailed(f"pool process {pool_proc.pid} {first.text()} before it was ready")
        if first.get("op") == "fatal":
            await pool_proc.exited.wait()
            kind = HandlerImportError if first.get("kind") == "HandlerImportError" else HandlerNotFound
            error: HandlerError = kind(first.get("message", "handler did not resolve"))
            raise error
        return pool_proc
