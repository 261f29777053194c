"""What goes into the journal and what comes out: `Batch`, `BatchBuilder`, `Snapshot`.

A batch is the net change of one pass of the event loop.  The broker may
touch a job several times in a pass (submitted, taken, answered...); only the
last word per key matters, so puts are a mapping and `BatchBuilder` folds the
pass's changes into it in order.  A key is never both put and deleted in one
batch: the builder keeps whichever came last, and `Batch` refuses the
ambiguity, so the store may run the deletes and the upserts in any order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

#: One job row: (key, state, record); see `job_key` for the key.
JobRow = tuple[bytes, str, bytes]


@dataclass(frozen=True, slots=True)
class Batch:
    """What one pass of the loop changed; stored in one transaction.

    puts: job key -> (state, record); the row is inserted or replaced.
    deletes: job keys whose rows go (a key with no row is not an error:
        a job submitted and finished within one pass was never stored).
    paused: type key -> the type's record (paused) or None (resumed).
    """

    puts: Mapping[bytes, tuple[str, bytes]] = field(default_factory=dict)
    deletes: Collection[bytes] = field(default_factory=frozenset)
    paused: Mapping[bytes, bytes | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.deletes and self.puts and not self.puts.keys().isdisjoint(self.deletes):
            raise ValueError("a key is both put and deleted in one batch; keep the last")

    def __bool__(self) -> bool:
        return bool(self.puts or self.deletes or self.paused)

    def __len__(self) -> int:
        """Rows written: the batch's size for figures and logs."""
        return len(self.puts) + len(self.deletes) + len(self.paused)


class BatchBuilder:
    """Collects one pass's changes, last word per key, and hands them over as a `Batch`.

    `take()` returns the batch and starts an empty one, so the I/O layer can
    hand a batch to the writer thread and keep collecting the next pass's
    changes while it commits.
    """

    __slots__ = ("_deletes", "_paused", "_puts")

    def __init__(self) -> None:
        self._puts: dict[bytes, tuple[str, bytes]] = {}
        self._deletes: set[bytes] = set()
        self._paused: dict[bytes, bytes | None] = {}

    def put(self, key: bytes, state: str, record: bytes) -> None:
        self._deletes.discard(key)
        self._puts[key] = (state, record)

    def delete(self, key: bytes) -> None:
        self._puts.pop(key, None)
        self._deletes.add(key)

    def pause(self, type_key: bytes, record: bytes) -> None:
        self._paused[type_key] = record

    def resume(self, type_key: bytes) -> None:
        self._paused[type_key] = None

    def __bool__(self) -> bool:
        return bool(self._puts or self._deletes or self._paused)

    def __len__(self) -> int:
        return len(self._puts) + len(self._deletes) + len(self._paused)

    def take(self) -> Batch:
        batch = Batch(self._puts, self._deletes, self._paused)
        self._puts, self._deletes, self._paused = {}, set(), {}
        return batch


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the journal holds, read in one transaction.

    jobs: every job row, in the order the rows were first stored (an
        observation, not a promise: replay sorts by what the records hold).
    paused: type key -> record of every paused type.
    """

    jobs: list[JobRow]
    paused: dict[bytes, bytes]
