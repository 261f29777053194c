"""Pool processes as the trio supervisor sees them: start, talk, watch, kill.

Each pool process is a fresh interpreter running `child` (see `BOOTSTRAP`),
started by `trio.lowlevel.open_process` in a process group of its own (so a
kill reaches everything the job started) with two pipes passed by fd number.
Not a fork of the supervisor (that would copy trio's threads, wakeup fd and
epoll state), and not multiprocessing's spawn or fork server either: both
re-run the user's ``__main__`` in every child, which breaks scripts without
an ``if __name__ == "__main__"`` guard.  The price is interpreter start-up
(~0.1 s); the runner hides it where it can (a recycled process's
successor is started while the process runs its last job).

Nothing here blocks the trio loop: our pipe ends are non-blocking and waited
on with `wait_readable`/`wait_writable`, and exits come from `Process.wait`.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from gloomwire import codec
from gloomwire.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame

from .handler import HandlerError, HandlerImportError, HandlerNotFound, HandlerSpec

__all__ = ["Exited", "PoolProcess", "ProcessFactory", "SpawnFailed"]

_READ_SIZE = 256 * 1024

#: How a pool process starts.  It loads `child` and `handler` as the package
#: ``_gloom_pool`` straight from this directory instead of ``-m
#: gloom.worker.child``: importing the `gloom` package pulls in trio and the
#: whole client, which would triple the start-up time of every process.
BOOTSTRAP = (
    "import sys, types\n"
    "pkg = types.ModuleType('_gloom_pool')\n"
    "pkg.__path__ = [sys.argv[1]]\n"
    "sys.modules['_gloom_pool'] = pkg\n"
    "from _gloom_pool.child import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)
_HERE = os.path.dirname(os.path.abspath(__file__))


class SpawnFailed(Exception):
    """A pool process died or went silent before it was ready."""


@dataclass(frozen=True)
class Exited:
    """The process is gone; `exitcode` is negative for a signal (subprocess's rule)."""

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
        await self.send_bytes(encode_frame(message))

    async def send_bytes(self, data: bytes) -> None:
        view = memoryview(data)
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
                self._inbox_send.send_nowait(codec.loads(payload))

    async def _read_loop(self) -> None:
        while self._drain():
            await trio.lowlevel.wait_readable(self._result_fd)

    async def watch(self, on_exit: Callable[[PoolProcess], None] | None = None) -> None:
        """Run for the process's lifetime: deliver its messages, then its exit."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_loop)
            code = await self.proc.wait()
            nursery.cancel_scope.cancel()
        # Whatever it wrote before dying is still in the pipe: deliver it first.
        # (Not to end of file: a grandchild may hold the pipe open.)
        self._drain()
        self.exitcode = code
        self._inbox_send.send_nowait(Exited(self.exitcode))
        self.exited.set()
        self.close()
        if on_exit is not None:
            on_exit(self)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in (self._command_fd, self._result_fd):
            trio.lowlevel.notify_closing(fd)
            os.close(fd)

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

    def __init__(
        self,
        spec: HandlerSpec,
        nursery: trio.Nursery,
        *,
        on_exit: Callable[[PoolProcess], None] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.spec = spec
        self.on_exit = on_exit
        self.startup_timeout = startup_timeout
        self._nursery = nursery
        self._init = encode_frame(
            {
                "op": "init",
                "handler": spec.path,
                "import_path": list(spec.import_path),
                "class_args": pickle.dumps(tuple(spec.class_args)).hex(),
                "class_kwargs": pickle.dumps(dict(spec.class_kwargs)).hex(),
                "sys_path": [p for p in sys.path if p],
                "max_frame": DEFAULT_MAX_FRAME,
            }
        )
        # The pool must find this very gloomwire (framing, codec), whatever the cwd.
        import gloomwire

        wire_root = os.path.dirname(os.path.dirname(os.path.abspath(gloomwire.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [wire_root, env.get("PYTHONPATH")]))
        self._env = env

    async def spawn(self) -> PoolProcess:
        command_r, command_w = os.pipe()
        result_r, result_w = os.pipe()
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-c", BOOTSTRAP, _HERE, str(command_r), str(result_w)],
                pass_fds=(command_r, result_w),
                stdin=subprocess.DEVNULL,
                env=self._env,
                process_group=0,
            )
        except BaseException:
            for fd in (command_r, command_w, result_r, result_w):
                os.close(fd)
            raise
        # Our copies of the child's ends must go, or we would never see EOF.
        os.close(command_r)
        os.close(result_w)
        pool_proc = PoolProcess(proc, command_w, result_r)
        self._nursery.start_soon(pool_proc.watch, self.on_exit)
        try:
            with trio.fail_after(self.startup_timeout):
                await pool_proc.send_bytes(self._init)
                first = await pool_proc.receive()
        except trio.TooSlowError:
            await pool_proc.kill()
            raise SpawnFailed(
                f"pool process {pool_proc.pid} did not start within {self.startup_timeout} s"
            ) from None
        except BaseException:
            with trio.CancelScope(shield=True):
                await pool_proc.kill()
            raise
        if isinstance(first, Exited):
            raise SpawnFailed(f"pool process {pool_proc.pid} {first.text()} before it was ready")
        if first.get("op") == "fatal":
            await pool_proc.exited.wait()
            kind = (
                HandlerImportError if first.get("kind") == "HandlerImportError" else HandlerNotFound
            )
            error: HandlerError = kind(first.get("message", "handler did not resolve"))
            raise error
        return pool_proc
