"""gloomd's journal store: durable job records in an SQLite file (issue 13).

The store half of the journal (see notes/journal.md): it opens the file with
every start-up check, stores one `Batch` per pass of the event loop in one
transaction (`JournalStore.commit`, called from a worker thread) and reads
everything back for replay (`JournalStore.load`).  It knows nothing of trio
or of the broker: records are opaque bytes keyed by `job_key(id)`.

Modules: `keys` (job ids as keys), `batch` (what goes in and comes out),
`schema` (the file's marks, tables and statements), `checks` (the start-up
checks, in order), `store` (the connection, commit, load), `figures` (commit
counts and histogram), `errors`.
"""

from .batch import Batch, BatchBuilder, JobRow, Snapshot
from .checks import (
    ANOTHER_SCHEMA,
    DIRECTORY_NOT_WRITABLE,
    FILE_NOT_READABLE,
    FILE_NOT_WRITABLE,
    IN_USE,
    NOT_SQLITE,
    newer_version,
)
from .errors import JournalError, JournalWriteError
from .figures import COMMIT_BOUNDS, CommitHistogram
from .keys import job_id_of, job_key
from .schema import APPLICATION_ID, SCHEMA_VERSION
from .store import JournalStats, JournalStore, Space, Sync, Tuning

__all__ = [
    "ANOTHER_SCHEMA",
    "APPLICATION_ID",
    "COMMIT_BOUNDS",
    "DIRECTORY_NOT_WRITABLE",
    "FILE_NOT_READABLE",
    "FILE_NOT_WRITABLE",
    "IN_USE",
    "NOT_SQLITE",
    "SCHEMA_VERSION",
    "Batch",
    "BatchBuilder",
    "CommitHistogram",
    "JobRow",
    "JournalError",
    "JournalStats",
    "JournalStore",
    "JournalWriteError",
    "Snapshot",
    "Space",
    "Sync",
    "Tuning",
    "job_id_of",
    "job_key",
    "newer_version",
]
