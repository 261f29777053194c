"""The journal's two failures: one at start-up, one at run time.

They differ in what the daemon does next, so they are two classes rather than
one with a flag: a `JournalError` ends the start (exit status 2 and one line
``gloomd: --journal PATH: REASON``, the file left as it was), while a
`JournalWriteError` costs one batch (its detached submits get
``journal_error`` frames instead of acks) and the daemon keeps serving.
"""

from __future__ import annotations


class JournalError(Exception):
    """The journal cannot be used: refused at start-up, or unreadable at replay.

    `reason` is the short phrase the fine print names (``in use``,
    ``not an SQLite database``...); `path` is the path as the user gave it,
    so the daemon's one line quotes what the user typed.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


class JournalWriteError(Exception):
    """A batch was not stored (disk full, I/O error, a locked file).

    The transaction was rolled back, so the journal holds exactly what it
    held before the batch; the store stays usable and the next batch is
    tried afresh.  `reason` is SQLite's message with its error name, e.g.
    ``database or disk is full (SQLITE_FULL)``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
