"""The pool process: resolve the handler once, then run one job at a time.

This module is what runs *inside* each pool process, in a process group of
its own.  It is loaded without importing the `gloom` package (see
`pool.BOOTSTRAP`), so it may import only the standard library, gloomwire
(framing, codec, vocabulary: no trio), `handler` and `retry`; trio is
imported only for async handlers.
It talks to the supervisor over two pipes with the daemon's own framing
(4-byte length, JSON), using blocking I/O: a pool process has nothing else
to do.

Messages, supervisor -> process: ``{"op":"init", spec, sys_path, max_frame}``
first, then ``{"op":"job", id, type, body, attempt, timeout}``,
``{"op":"exit"}``.  Process -> supervisor: ``{"op":"ready","pid"}`` once the
handler resolved (or ``{"op":"fatal", kind, message}`` and exit), then per
job any number of ``{"op":"progress","body"}`` and one
``{"op":"done","frame":F}`` where F is the exact slave frame to send
(``respond`` or ``fail`` ERROR; ``"retry": true`` is added when the handler
raised `Retry`, for the runner's counters).  Encoding the result here, in the process
that produced it, is what makes an unencodable result an ordinary ERROR that
cannot hurt the supervisor.

Orphan guard: a reader thread owns the command pipe.  If it sees end of file
without having been told to exit, the supervisor is gone, and the process
kills its whole process group (itself and anything the handler started).
"""

from __future__ import annotations

import inspect
import os
import pickle
import queue
import signal
import sys
import threading
import traceback
from typing import Any

from gloomwire import codec, vocabulary
from gloomwire.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame

from .handler import Handler, HandlerError, HandlerSpec, resolve
from .retry import is_retry, retry_reason

__all__ = ["JobContext", "child_main"]

#: Exit status of a process whose handler did not resolve (sysexits EX_CONFIG).
EXIT_BAD_HANDLER = 78

#: Room left in a frame for the envelope around a result body.
_ENVELOPE = 1024


class _Writer:
    """Blocking, thread-safe frame writer (progress may come from any thread)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def send_bytes(self, data: bytes) -> None:
        with self.lock:
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]

    def send(self, message: dict[str, Any]) -> None:
        self.send_bytes(encode_frame(message))


class JobContext:
    """What a handler declared as ``fn(body, job)`` receives.

    `attempt` counts deliveries (1 for the first: the daemon sends it only on
    a redelivery), retries and requeues after a lost slave alike, so a
    handler can tell a retry from a first run; `timeout` is the limit this
    run is held to (None: no limit); `pid` is this pool process.
    """

    def __init__(self, frame: dict[str, Any], writer: _Writer) -> None:
        self.id: Any = frame.get("id")
        self.type: Any = frame.get("type")
        self.body: Any = frame.get("body")
        self.attempt: int = frame.get("attempt") or 1
        self.timeout: float | None = frame.get("timeout")
        self.pid = os.getpid()
        self._writer = writer

    def progress(self, value: Any) -> None:
        """Send a progress value to the job's master (as a ``progress`` frame)."""
        self._writer.send({"op": "progress", "body": value})

    def __repr__(self) -> str:
        return f"<gloom.worker.JobContext id={self.id!r} attempt={self.attempt} pid={self.pid}>"


def error_reason(exc: BaseException, kind: str | None = None) -> dict[str, Any]:
    """`{type, message, traceback}`: the reason of an ERROR failure."""
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return {
        "type": kind or name,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _fail_frame(reason: dict[str, Any]) -> dict[str, Any]:
    return vocabulary.fail("ERROR", reason)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def run_job(handler: Handler, frame: dict[str, Any], writer: _Writer, max_frame: int) -> bytes:
    """Run one job; return the encoded ``done`` message (never raises)."""
    job = JobContext(frame, writer)
    try:
        fn = handler.make()
        args = (job.body, job) if handler.wants_job else (job.body,)
        if handler.is_async:
            import trio

            result = trio.run(fn, *args)
        else:
            result = fn(*args)
            if inspect.iscoroutine(result):
                import trio

                result = trio.run(_await, result)
    except BaseException as exc:
        if is_retry(exc):
            frame = _fail_frame(retry_reason(exc))
            return encode_frame({"op": "done", "frame": frame, "retry": True})
        return encode_frame({"op": "done", "frame": _fail_frame(error_reason(exc))})
    try:
        data = encode_frame({"op": "done", "frame": vocabulary.respond(result)})
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        reason = error_reason(exc, "SerializationError")
        reason["message"] = (
            f"result of type {type(result).__name__} cannot be encoded as JSON: {exc}"
        )
        return encode_frame({"op": "done", "frame": _fail_frame(reason)})
    if len(data) > max_frame - _ENVELOPE:
        # gloomd would answer size_error and drop the connection, which
        # requeues the job: a loop.  Fail it here instead.
        reason = {
            "type": "ResultTooLarge",
            "message": f"encoded result is {len(data)} bytes; the frame limit is {max_frame}",
            "traceback": "",
        }
        return encode_frame({"op": "done", "frame": _fail_frame(reason)})
    return data


def _read_commands(fd: int, inbox: queue.Queue[dict[str, Any]], decoder: FrameDecoder) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            # The supervisor vanished without saying goodbye: take everything
            # this process started down with it rather than leave orphans.
            os.killpg(0, signal.SIGKILL)
            return
        for payload in decoder.feed(data):
            message = codec.loads(payload)
            inbox.put(message)
            if message.get("op") == "exit":
                return


def child_main(commands_fd: int, results_fd: int) -> int:
    """Entry point of a pool process; returns its exit status.

    The first message on the command pipe is ``{"op":"init"}`` with the
    handler path, import path and (pickled) class arguments, the
    supervisor's ``sys.path`` (so whatever the supervisor could import, the
    pool can) and the frame limit.
    """
    writer = _Writer(results_fd)
    decoder = FrameDecoder()
    init: dict[str, Any] | None = None
    pending: list[bytes] = []
    while init is None:
        data = os.read(commands_fd, 65536)
        if not data:
            return EXIT_BAD_HANDLER
        pending.extend(decoder.feed(data))
        if pending:
            init = codec.loads(pending.pop(0))
    spec = HandlerSpec(
        init["handler"],
        tuple(init.get("import_path", ())),
        pickle.loads(bytes.fromhex(init["class_args"])),
        pickle.loads(bytes.fromhex(init["class_kwargs"])),
    )
    for entry in reversed(init.get("sys_path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    max_frame = int(init.get("max_frame", DEFAULT_MAX_FRAME))
    try:
        handler = resolve(spec)
    except HandlerError as exc:
        writer.send({"op": "fatal", "kind": type(exc).__name__, "message": str(exc)})
        return EXIT_BAD_HANDLER
    inbox: queue.Queue[dict[str, Any]] = queue.Queue()
    for payload in pending:
        inbox.put(codec.loads(payload))
    reader = threading.Thread(
        target=_read_commands,
        args=(commands_fd, inbox, decoder),
        name="gloom-commands",
        daemon=True,
    )
    reader.start()
    writer.send({"op": "ready", "pid": os.getpid()})
    while True:
        message = inbox.get()
        if message.get("op") != "job":
            return 0
        writer.send_bytes(run_job(handler, message, writer, max_frame))


def main(argv: list[str]) -> int:
    commands_fd, results_fd = int(argv[0]), int(argv[1])
    return child_main(commands_fd, results_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
