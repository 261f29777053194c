"""Fixtures of the journal store's tests: directories and file fingerprints."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def fingerprint(directory: Path) -> dict[str, str]:
    """Every file in `directory` and the sha256 of its bytes.

    A refused journal must be byte-for-byte untouched, and nothing may
    appear beside it (no -wal, -shm or -journal file either).  An existing
    ``-shm`` file counts by its presence only: it is SQLite's shared memory
    (the WAL index and the readers' marks), which every reader writes,
    the sqlite3 shell included; it holds no data.
    """
    return {
        entry.name: _signature(entry) for entry in sorted(directory.iterdir()) if entry.is_file()
    }


def _signature(entry: Path) -> str:
    if entry.name.endswith("-shm"):
        return "shared memory"
    if not os.access(entry, os.R_OK):  # a test's unreadable file, when not run as root
        status = entry.stat()
        return f"unreadable: {status.st_size} bytes, mtime {status.st_mtime_ns}"
    return hashlib.sha256(entry.read_bytes()).hexdigest()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is mode 0700).

    For the tests that run the store as an unprivileged user to see a
    directory or a file it may not write.
    """
    path = Path(tempfile.mkdtemp(prefix="gloomd-journal-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        for root, dirs, _files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
        os.chmod(path, 0o755)
        shutil.rmtree(path)
