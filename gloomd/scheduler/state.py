"""The scheduler's status on disk: one JSON file, written atomically, off the loop.

`StateFile` is the `dump_status`/`reload_status` pair over a file;
`BackgroundWriter` keeps its fsync out of the daemon's event loop.
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
from collections.abc import Callable
from typing import Any

import trio

from gloomwire import codec
from gloomwire.logformat import event

__all__ = ["BackgroundWriter", "StateFile", "StatusDict"]

#: Every job's status by name: what `dump_status` receives and the file holds.
StatusDict = dict[str, dict[str, Any]]

log = logging.getLogger("gloomd.scheduler")


class StateFile:
    """The scheduler status as a JSON file, written atomically (temp file + rename).

    `dump` and `reload` are the `dump_status`/`reload_status` callbacks.  A
    file that cannot be read or parsed is logged and treated as absent: a
    scheduler that refuses to start over a corrupt status file would be worse
    than one that recomputes its fire times.
    """

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    @property
    def _tmp(self) -> pathlib.Path:
        return self.path.with_name(f".{self.path.name}.tmp")

    def check_writable(self) -> None:
        """Raise OSError unless `dump` can write here: refused at start, not at
        every write (an unwritable path would be logged and never saved).

        Writes and removes the temporary file `dump` itself writes first.
        """
        if self.path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(self.path))
        with open(self._tmp, "wb"):
            pass
        self._tmp.unlink()

    def dump(self, status: StatusDict) -> None:
        data = codec.dumps(status)
        tmp = self._tmp
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)

    def reload(self) -> StatusDict | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            event(
                log, "schedule_state_unreadable", logging.ERROR, path=str(self.path),
                error=exc.strerror or str(exc), note="starting afresh",
            )  # fmt: skip
            return None
        try:
            status = codec.loads(data)
        except codec.DecodeError as exc:
            event(
                log, "schedule_state_unreadable", logging.ERROR, path=str(self.path),
                error=f"not JSON: {exc}", note="starting afresh",
            )  # fmt: skip
            return None
        if not isinstance(status, dict):
            event(
                log, "schedule_state_unreadable", logging.ERROR, path=str(self.path),
                error="not a JSON object", note="starting afresh",
            )  # fmt: skip
            return None
        return status


class BackgroundWriter:
    """Writes the latest status snapshot in a worker thread, coalescing bursts.

    In the daemon the scheduler shares its trio run with the broker; an fsync
    in the event loop would stall every connection for as long as the disk
    takes.  So `dump_status` only hands the snapshot over, and `run` writes
    the newest one from a thread; snapshots superseded meanwhile are skipped.
    The price is a window of a few milliseconds in which a fire has started
    but is not yet on disk.  On cancellation the last pending snapshot is
    written before `run` returns.
    """

    def __init__(self, write: Callable[[StatusDict], None]) -> None:
        self._write = write
        self._pending: StatusDict | None = None
        self._ready = trio.Event()

    def submit(self, status: StatusDict) -> None:
        self._pending = status
        self._ready.set()

    def _write_logged(self, status: StatusDict) -> None:
        try:
            self._write(status)
        except Exception as exc:
            event(
                log, "schedule_state_unwritable", logging.ERROR,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
            )  # fmt: skip

    async def run(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready = trio.Event()
                status, self._pending = self._pending, None
                if status is not None:
                    await trio.to_thread.run_sync(self._write_logged, status)
        finally:
            if self._pending is not None:
                self._write_logged(self._pending)
