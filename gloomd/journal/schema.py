"""What a gloomd journal file holds: its marks, its tables, its statements.

Two marks in the SQLite header tell a gloomd journal from any other file:
``PRAGMA application_id`` (a constant of gloomd's, ``glmd`` in ASCII at bytes
68-71, so ``file`` and a hex dump name it too) and ``PRAGMA user_version``
(the schema version).  Both are written in the same transaction as the
tables, so a file that carries gloomd's application id always has its tables.

The tables, for a person with the sqlite3 shell (the daemon may be running:
WAL lets a reader in beside the writer)::

    SELECT state, count(*) FROM jobs GROUP BY state;
    SELECT CAST(key AS TEXT), state, CAST(record AS TEXT) FROM jobs LIMIT 5;

`jobs` keeps SQLite's rowid and a UNIQUE index on the key rather than being a
WITHOUT ROWID table keyed by the job key.  New jobs then go to the right-hand
end of the table, the pages that finished jobs empty on the left are whole
pages SQLite puts on its freelist and reuses, and only the narrow key index
takes scattered writes.  Keyed by the job key, each 200-byte record lands on
a random leaf.  Measured (benchmarks/journal_store.py ``settings``, 200k jobs
through at a depth of 10k, 100 per commit): with random string ids, 0.95 ms
per commit against 1.7-2.3 ms, and the database at 1.02x its size at depth
against 1.12x; with sequential integer ids, about the same commit cost
(0.46-0.49 ms against 0.46-0.67 ms, run to run) and 1.02x against 1.11x.
The upsert keeps a row's rowid, so `load` returns jobs in the order they were
first stored, close to the order replay sorts them into.
"""

from __future__ import annotations

from typing import Final

#: ``glmd``: gloomd's mark in the SQLite header (PRAGMA application_id).
APPLICATION_ID: Final = int.from_bytes(b"glmd", "big")

#: The schema this gloomd writes (PRAGMA user_version).  A newer file is
#: refused, never rewritten: an older gloomd cannot know what it would lose.
SCHEMA_VERSION: Final = 1

#: The tables gloomd creates; a file with our application id must have them.
TABLES: Final = frozenset({"jobs", "paused"})

CREATE: Final = (
    """CREATE TABLE jobs (
        key    BLOB NOT NULL UNIQUE,  -- job_key(id): b's' + utf-8, or b'i' + digits
        state  TEXT NOT NULL,         -- the broker's word for it: queued, running, dead...
        record BLOB NOT NULL          -- the broker's record of the job; opaque to the store
    )""",
    """CREATE TABLE paused (
        type   BLOB PRIMARY KEY,      -- the broker's key of a paused job type
        record BLOB NOT NULL          -- the broker's record of that type
    ) WITHOUT ROWID""",
)

UPSERT_JOB: Final = (
    "INSERT INTO jobs (key, state, record) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET state = excluded.state, record = excluded.record"
)
DELETE_JOB: Final = "DELETE FROM jobs WHERE key = ?"
UPSERT_PAUSED: Final = (
    "INSERT INTO paused (type, record) VALUES (?, ?) "
    "ON CONFLICT (type) DO UPDATE SET record = excluded.record"
)
DELETE_PAUSED: Final = "DELETE FROM paused WHERE type = ?"
SELECT_JOBS: Final = "SELECT key, state, record FROM jobs"
SELECT_PAUSED: Final = "SELECT type, record FROM paused"
SELECT_TABLES: Final = "SELECT name FROM sqlite_schema WHERE type = 'table'"

# The SQLite file header (https://sqlite.org/fileformat2.html#the_database_header),
# read by hand before SQLite is let near a file (see checks.py).
HEADER_SIZE: Final = 100
MAGIC: Final = b"SQLite format 3\x00"
APPLICATION_ID_AT: Final = 68
