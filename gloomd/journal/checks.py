"""Start-up checks: may this file be gloomd's journal?  Refuse without writing to it.

The checks run in this order, each on what the ones before established:

1. **The directory** must exist and be writable: SQLite in WAL mode creates
   ``PATH-wal`` and ``PATH-shm`` beside the file, and a missing file is
   created there.  This needs no file, so it comes first.
2. **The lock**: the file is opened (created if absent; an empty file is a
   new journal) and an exclusive ``flock`` taken without waiting, held for
   the store's life and dropped by the kernel when the process ends, however
   it ends (SIGKILL included).  Taken before anything is read so that the
   inspection sees a file no other gloomd is changing, and so that two
   daemons started at once on a new path cannot both initialise it.  Why
   ``flock`` and not SQLite's own locking: ``PRAGMA locking_mode=EXCLUSIVE``
   would shut out the sqlite3 shell too, while a person should be able to
   read the journal of a running daemon (WAL lets a reader beside the
   writer).  ``flock`` and the POSIX ``fcntl`` locks SQLite uses do not
   interact on Linux's local filesystems; the descriptor stays open until
   after the SQLite connection is closed, because closing any descriptor of
   a file drops the process's ``fcntl`` locks on it.
3. **The header**, read by hand (100 bytes): no SQLite magic is ``not an
   SQLite database``; another application id is ``holds another schema``.
   Done before SQLite opens the file because even a read-only SQLite
   connection to a WAL-mode database creates ``-wal`` and ``-shm`` files
   beside it, and a file that is not ours should be left entirely alone.
4. **SQLite, read-only** (``mode=ro``, and ``immutable=1`` when there is no
   ``-wal`` file, so that nothing at all is created beside the file): the
   application id, the tables and ``user_version``, authoritatively (a
   committed change may still sit in the WAL, not yet in the main file).
   A read-only connection never writes the main file, not even the
   checkpoint SQLite runs when the last connection closes.
   Before it, its ``-wal`` and ``-shm`` files, if any, must be readable and
   writable (left by a gloomd of another user that was killed, they would
   make SQLite fail with a bare "unable to open database file").
5. **The file is writable** (checked last, so that a read-only file that is
   not a journal is named for what it is).

Every refusal closes what was opened and raises `JournalError`; the file's
bytes are unchanged (the tests hash it before and after).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import stat
from dataclasses import dataclass
from urllib.request import pathname2url

from . import schema
from .errors import JournalError

DIRECTORY_NOT_WRITABLE = "directory not writable"
NOT_SQLITE = "not an SQLite database"
ANOTHER_SCHEMA = "holds another schema"
IN_USE = "in use"
FILE_NOT_READABLE = "file not readable"
FILE_NOT_WRITABLE = "file not writable"

#: Mode of a new journal: it holds job bodies, which may be private.  SQLite
#: gives its -wal and -shm files the database file's mode.
NEW_FILE_MODE = 0o600


def newer_version(found: int) -> str:
    return f"journal version {found} is newer than this gloomd's {schema.SCHEMA_VERSION}"


@dataclass(frozen=True, slots=True)
class Admitted:
    """A file that passed every check: its lock (held) and whether to initialise it."""

    lock_fd: int
    fresh: bool  # empty, or an SQLite database with no tables and no application id


def admit(path: str) -> Admitted:
    """Run the checks in order; on success the caller owns `lock_fd`."""
    _check_directory(path)
    fd = _open_and_lock(path)
    try:
        fresh = _inspect(path, fd)
        if not os.access(path, os.W_OK, effective_ids=_EFFECTIVE):
            raise JournalError(path, FILE_NOT_WRITABLE)
    except BaseException:
        os.close(fd)
        raise
    return Admitted(fd, fresh)


#: O_NONBLOCK: a FIFO at the path would otherwise block the open until a
#: writer came (the check after the open refuses anything but a file).
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK

# faccessat(AT_EACCESS) where the platform has it: a setuid daemon is judged as itself.
_EFFECTIVE = os.access in os.supports_effective_ids


def _check_directory(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    writable = os.access(directory, os.W_OK | os.X_OK, effective_ids=_EFFECTIVE)
    if not (os.path.isdir(directory) and writable):
        raise JournalError(path, DIRECTORY_NOT_WRITABLE)


def _open_and_lock(path: str) -> int:
    created = False
    try:
        try:
            fd = os.open(path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE)
            created = True
        except FileExistsError:
            fd = os.open(path, _OPEN_FLAGS)
    except IsADirectoryError:
        raise JournalError(path, NOT_SQLITE) from None
    except PermissionError:
        raise JournalError(path, FILE_NOT_READABLE) from None
    except OSError as exc:
        raise JournalError(path, f"cannot open ({exc.strerror})") from None
    try:
        if created:
            _sync_directory(path)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise JournalError(path, NOT_SQLITE)  # a FIFO, a device: never a database
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalError(path, IN_USE) from None
        except OSError as exc:
            raise JournalError(path, f"cannot lock ({exc.strerror})") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sync_directory(path: str) -> None:
    """Make a new file's name durable: SQLite syncs the directory for the
    -wal file it creates, not for a main file someone else created.  Without
    it a power loss soon after the start could lose the file while its WAL,
    holding acknowledged jobs, survives beside an empty newcomer."""
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _inspect(path: str, fd: int) -> bool:
    """Steps 3 and 4: True for a file to initialise, False for gloomd's journal."""
    if os.fstat(fd).st_size == 0:
        return True
    header = os.pread(fd, schema.HEADER_SIZE, 0)
    if not _is_sqlite_header(header):
        raise JournalError(path, NOT_SQLITE)
    at = schema.APPLICATION_ID_AT
    if int.from_bytes(header[at : at + 4], "big", signed=True) not in (0, schema.APPLICATION_ID):
        raise JournalError(path, ANOTHER_SCHEMA)
    blocked = [
        os.path.basename(side)
        for side in (path + "-wal", path + "-shm")
        if os.path.exists(side) and not os.access(side, os.R_OK | os.W_OK, effective_ids=_EFFECTIVE)
    ]
    if blocked:
        # Left by a gloomd that ran as another user and was killed: SQLite
        # could not even read the file ("unable to open database file").
        raise JournalError(path, f"{FILE_NOT_WRITABLE} ({', '.join(blocked)})")
    application_id, version, tables = _read_marks(path)
    if application_id == 0:
        if tables:
            raise JournalError(path, ANOTHER_SCHEMA)
        return True  # a blank database (made by the sqlite3 shell, say): ours to use
    if application_id != schema.APPLICATION_ID:
        raise JournalError(path, ANOTHER_SCHEMA)
    if version > schema.SCHEMA_VERSION:
        raise JournalError(path, newer_version(version))
    if version < schema.SCHEMA_VERSION or not schema.TABLES <= tables:
        # gloomd writes its id, version and tables in one transaction, and
        # version 1 is the first: this file was not made by a gloomd.
        raise JournalError(path, ANOTHER_SCHEMA)
    return False


def _is_sqlite_header(header: bytes) -> bool:
    """The magic, a valid page size and the three payload fractions SQLite fixes."""
    if len(header) < schema.HEADER_SIZE or not header.startswith(schema.MAGIC):
        return False
    page_size = int.from_bytes(header[16:18], "big")
    valid_size = page_size == 1 or (512 <= page_size <= 32768 and page_size & (page_size - 1) == 0)
    return valid_size and header[21:24] == b"\x40\x20\x20"


def _read_marks(path: str) -> tuple[int, int, set[str]]:
    uri = "file:" + pathname2url(os.path.abspath(path)) + "?mode=ro"
    if not os.path.exists(path + "-wal"):
        uri += "&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise JournalError(path, f"cannot open ({exc})") from None
    try:
        application_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {str(row[0]) for row in conn.execute(schema.SELECT_TABLES)}
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorname", None) == "SQLITE_NOTADB":
            raise JournalError(path, NOT_SQLITE) from None
        raise JournalError(path, f"cannot read ({exc})") from None
    finally:
        conn.close()
    return application_id, version, tables
