"""Every start-up check of notes/journal.md: the reason, and the file left untouched.

Each refusal is checked with a fingerprint of the whole directory before and
after (conftest.fingerprint): the file's bytes, and no file created beside it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gloomd.journal import (
    ANOTHER_SCHEMA,
    APPLICATION_ID,
    DIRECTORY_NOT_WRITABLE,
    FILE_NOT_READABLE,
    FILE_NOT_WRITABLE,
    IN_USE,
    NOT_SQLITE,
    SCHEMA_VERSION,
    Batch,
    JournalError,
    JournalStore,
    job_key,
    newer_version,
)

from .childstore import ChildStore
from .conftest import fingerprint


def refused(path: Path) -> str:
    """Open `path`, expecting a refusal that leaves the directory as it was."""
    before = fingerprint(path.parent)
    with pytest.raises(JournalError) as caught:
        JournalStore.open(str(path))
    assert caught.value.path == str(path)
    assert fingerprint(path.parent) == before
    return caught.value.reason


def make_journal(path: Path, jobs: int = 3) -> None:
    with JournalStore.open(str(path)) as store:
        store.commit(Batch({job_key(i): ("queued", b"{}") for i in range(jobs)}))


def sqlite_file(path: Path, *statements: str, wal: bool = False) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    for statement in statements:
        conn.execute(statement)
    conn.close()


# ---------------------------------------------------------------- a good file


def test_a_new_journal_is_created_with_gloomds_marks(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    make_journal(path)
    assert sorted(os.listdir(tmp_path)) == ["j.db"]  # closed: one self-contained file
    assert os.stat(path).st_mode & 0o777 == 0o600
    header = path.read_bytes()[:100]
    assert header[68:72] == b"glmd" and int.from_bytes(header[68:72], "big") == APPLICATION_ID
    assert int.from_bytes(header[60:64], "big") == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall() == [
        ("queued", 3)
    ]
    conn.close()
    with JournalStore.open(str(path)) as store:  # and it opens again
        assert len(store.load().jobs) == 3


def test_a_new_files_name_is_made_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite syncs the directory for the -wal it creates, not for the main
    # file we create: the store does, once, when it creates the file.
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with JournalStore.open(str(tmp_path / "j.db")):
        pass
    assert synced == [str(tmp_path)]
    synced.clear()
    with JournalStore.open(str(tmp_path / "j.db")):  # it exists now: nothing to sync
        pass
    assert synced == []


def test_an_empty_file_is_a_new_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    path.write_bytes(b"")
    make_journal(path, jobs=1)
    with JournalStore.open(str(path)) as store:
        assert len(store.load().jobs) == 1


def test_a_blank_sqlite_database_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    sqlite_file(path, "VACUUM")  # what `sqlite3 j.db 'VACUUM'` leaves: a header, no tables
    assert path.stat().st_size > 0
    make_journal(path, jobs=2)
    with JournalStore.open(str(path)) as store:
        assert len(store.load().jobs) == 2


# ---------------------------------------------------------------- the directory


def test_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "j.db"
    with pytest.raises(JournalError) as caught:
        JournalStore.open(str(path))
    assert caught.value.reason == DIRECTORY_NOT_WRITABLE
    assert not path.parent.exists()


def test_a_directory_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    before = fingerprint(tmp_path)
    with pytest.raises(JournalError, match=DIRECTORY_NOT_WRITABLE):
        JournalStore.open(str(tmp_path / "plain" / "j.db"))
    assert fingerprint(tmp_path) == before


def unprivileged_open(path: Path) -> str:
    """The reason the store gives when opened as a user other than the file's owner.

    As root (CI), a child process drops to nobody after importing gloomd;
    otherwise the modes the test set already bind this user.
    """
    before = fingerprint(path.parent)
    if os.geteuid() == 0:
        with ChildStore() as child:
            assert child.call(op="drop_privileges") == {"ok": True, "uid": 65534}
            answer = child.call(op="open", path=str(path))
            assert child.finish() == 0
        assert answer["error"] == "JournalError"
        reason = str(answer["reason"])
    else:
        with pytest.raises(JournalError) as caught:
            JournalStore.open(str(path))
        reason = caught.value.reason
    assert fingerprint(path.parent) == before
    return reason


def test_a_directory_not_writable(shared_dir: Path) -> None:
    folder = shared_dir / "ro"
    folder.mkdir()
    make_journal(folder / "j.db")
    os.chmod(folder / "j.db", 0o666)  # the file would do: the directory is what fails
    os.chmod(folder, 0o555)
    assert unprivileged_open(folder / "j.db") == DIRECTORY_NOT_WRITABLE


def test_a_file_not_writable(shared_dir: Path) -> None:
    folder = shared_dir / "rw"
    folder.mkdir()
    os.chmod(folder, 0o777)
    make_journal(folder / "j.db")
    os.chmod(folder / "j.db", 0o444)
    assert unprivileged_open(folder / "j.db") == FILE_NOT_WRITABLE


def test_wal_files_of_another_user(shared_dir: Path) -> None:
    # A gloomd run by another user was killed: its -wal and -shm stay, theirs.
    folder = shared_dir / "rw"
    folder.mkdir()
    os.chmod(folder, 0o777)
    with ChildStore() as child:
        assert child.call(op="open", path=str(folder / "j.db")) == {"ok": True}
        assert child.call(op="commit", puts=[[1, "queued", "{}"]])["ok"]
        child.kill()
    os.chmod(folder / "j.db", 0o666)
    for side in ("j.db-wal", "j.db-shm"):
        os.chmod(folder / side, 0o400)
    assert unprivileged_open(folder / "j.db") == f"{FILE_NOT_WRITABLE} (j.db-wal, j.db-shm)"


def test_a_file_not_readable(shared_dir: Path) -> None:
    folder = shared_dir / "rw"
    folder.mkdir()
    os.chmod(folder, 0o777)
    make_journal(folder / "j.db")
    os.chmod(folder / "j.db", 0o200)
    assert unprivileged_open(folder / "j.db") == FILE_NOT_READABLE


def test_a_read_only_file_that_is_not_a_journal_is_named_for_what_it_is(
    shared_dir: Path,
) -> None:
    folder = shared_dir / "rw"
    folder.mkdir()
    os.chmod(folder, 0o777)
    (folder / "j.db").write_bytes(b"not a database, and read-only too\n" * 10)
    os.chmod(folder / "j.db", 0o444)
    assert unprivileged_open(folder / "j.db") == NOT_SQLITE


# ---------------------------------------------------------------- not SQLite


@pytest.mark.parametrize(
    "content",
    [
        b"hello, this is a text file\n" * 20,
        b"SQLite format 3\x00" + b"\x00" * 20,  # the magic, then too short for a header
        b"SQLite format 3\x00" + b"\xff" * 4080,  # the magic, then a garbage header
        b"\x00" * 4096,
    ],
    ids=["text", "short", "garbage-header", "zeros"],
)
def test_not_an_sqlite_database(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "j.db"
    path.write_bytes(content)
    assert refused(path) == NOT_SQLITE


def test_a_damaged_database(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    make_journal(path)
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xa5" * 3996  # page 1 past the header: the schema's root page
    path.write_bytes(bytes(data))
    assert refused(path) == "cannot read (database disk image is malformed)"


def test_a_directory_at_the_path(tmp_path: Path) -> None:
    (tmp_path / "j.db").mkdir()
    assert refused(tmp_path / "j.db") == NOT_SQLITE


def test_a_fifo_at_the_path_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "j.db")
    with pytest.raises(JournalError, match=NOT_SQLITE):
        JournalStore.open(str(tmp_path / "j.db"))


# ---------------------------------------------------------------- another schema


def test_another_applications_database(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    sqlite_file(path, "CREATE TABLE users (name TEXT)", "INSERT INTO users VALUES ('ann')")
    assert refused(path) == ANOTHER_SCHEMA


def test_another_wal_database_gets_no_files_beside_it(tmp_path: Path) -> None:
    # A read-only SQLite connection to a WAL database would create -wal and
    # -shm beside it; the fingerprint in `refused` sees any.
    path = tmp_path / "j.db"
    sqlite_file(path, "CREATE TABLE users (name TEXT)", wal=True)
    assert sorted(os.listdir(tmp_path)) == ["j.db"]
    assert refused(path) == ANOTHER_SCHEMA


def test_another_wal_database_with_its_wal_file_is_judged_by_its_header(
    tmp_path: Path,
) -> None:
    # With a -wal file there, SQLite would read it and create -shm: another
    # application's id in the header refuses the file before SQLite opens it.
    path = tmp_path / "j.db"
    sqlite_file(path, "PRAGMA application_id = 42", "CREATE TABLE t (x)", wal=True)
    (tmp_path / "j.db-wal").write_bytes(b"")
    assert refused(path) == ANOTHER_SCHEMA
    assert not (tmp_path / "j.db-shm").exists()


def test_another_application_id(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    sqlite_file(path, "PRAGMA application_id = 42", "VACUUM")
    assert refused(path) == ANOTHER_SCHEMA


def test_another_schema_whose_tables_sit_in_the_wal_only(tmp_path: Path) -> None:
    # The main file's header shows a blank database; the truth is in the WAL.
    path = tmp_path / "j.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA journal_mode = WAL")
    other.execute("PRAGMA wal_autocheckpoint = 0")
    other.execute("CREATE TABLE users (name TEXT)")
    try:
        assert refused(path) == ANOTHER_SCHEMA
    finally:
        other.close()


def test_gloomds_mark_without_its_tables(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    sqlite_file(path, f"PRAGMA application_id = {APPLICATION_ID}", "PRAGMA user_version = 1")
    assert refused(path) == ANOTHER_SCHEMA


def test_gloomds_tables_beside_others_is_still_a_journal(tmp_path: Path) -> None:
    # A person may add a table or a view for their own queries; the journal stays usable.
    path = tmp_path / "j.db"
    make_journal(path, jobs=2)
    sqlite_file(path, "CREATE TABLE notes (text TEXT)")
    with JournalStore.open(str(path)) as store:
        assert len(store.load().jobs) == 2


# ---------------------------------------------------------------- a newer version


def test_a_newer_journal_version(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    make_journal(path)
    sqlite_file(path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    reason = refused(path)
    assert reason == newer_version(SCHEMA_VERSION + 1)
    assert reason == f"journal version {SCHEMA_VERSION + 1} is newer than this gloomd's 1"


def test_a_newer_version_still_in_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    make_journal(path)
    newer = sqlite3.connect(path, isolation_level=None)
    newer.execute("PRAGMA wal_autocheckpoint = 0")
    newer.execute("PRAGMA user_version = 9")
    try:
        assert path.read_bytes()[60:64] == SCHEMA_VERSION.to_bytes(4, "big")
        assert refused(path) == newer_version(9)
    finally:
        newer.close()


# ---------------------------------------------------------------- in use


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[ChildStore]:
    """Another process holding tmp_path/j.db open, with two jobs committed."""
    with ChildStore() as child:
        assert child.call(op="open", path=str(tmp_path / "j.db")) == {"ok": True}
        answer = child.call(op="commit", puts=[[1, "queued", "{}"], ["a", "queued", "{}"]])
        assert answer["ok"]
        yield child


def test_in_use_by_another_process_until_it_exits(tmp_path: Path, holder: ChildStore) -> None:
    path = tmp_path / "j.db"
    assert refused(path) == IN_USE
    with ChildStore() as third:  # a third process sees the same
        assert third.call(op="open", path=str(path)) == {"error": "JournalError", "reason": IN_USE}
    assert holder.finish() == 0
    with JournalStore.open(str(path)) as store:
        assert {key for key, _, _ in store.load().jobs} == {b"i1", b"sa"}


def test_in_use_until_the_holder_is_killed(tmp_path: Path, holder: ChildStore) -> None:
    path = tmp_path / "j.db"
    assert refused(path) == IN_USE
    holder.kill()  # SIGKILL: no close, no checkpoint; the kernel drops the flock
    assert (tmp_path / "j.db-wal").exists()
    with JournalStore.open(str(path)) as store:
        assert {key for key, _, _ in store.load().jobs} == {b"i1", b"sa"}


def test_in_use_within_one_process(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with JournalStore.open(str(path)):
        assert refused(path) == IN_USE
    with JournalStore.open(str(path)):  # released by close
        pass


def test_in_use_is_checked_before_the_content(tmp_path: Path, holder: ChildStore) -> None:
    # While held, a second daemon learns "in use", not what the file holds:
    # it must not judge a file another gloomd may be changing.
    sqlite_file(tmp_path / "j.db", "PRAGMA user_version = 9")
    assert refused(tmp_path / "j.db") == IN_USE


# ---------------------------------------------------------------- the order


def test_the_directory_is_checked_before_the_file(shared_dir: Path) -> None:
    folder = shared_dir / "ro"
    folder.mkdir()
    (folder / "j.db").write_bytes(b"not a database\n" * 10)
    os.chmod(folder, 0o555)
    assert unprivileged_open(folder / "j.db") == DIRECTORY_NOT_WRITABLE


def test_a_refused_open_leaves_no_lock_behind(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    make_journal(path)
    sqlite_file(path, "PRAGMA user_version = 5")
    refused(path)
    sqlite_file(path, f"PRAGMA user_version = {SCHEMA_VERSION}")
    with JournalStore.open(str(path)) as store:  # not "in use": the refusal let go
        assert len(store.load().jobs) == 3
