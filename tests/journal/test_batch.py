"""Batches: the last word per key wins, and a key is never both put and deleted."""

from __future__ import annotations

import pytest

from gloomd.journal import Batch, BatchBuilder


def test_a_key_both_put_and_deleted_is_refused() -> None:
    with pytest.raises(ValueError, match="both put and deleted"):
        Batch({b"sa": ("queued", b"{}")}, {b"sa"})


def test_builder_keeps_the_last_word_per_key() -> None:
    b = BatchBuilder()
    b.put(b"sa", "queued", b"1")
    b.put(b"sa", "running", b"2")  # taken in the same pass: only the last state
    b.put(b"sb", "queued", b"3")
    b.delete(b"sb")  # submitted and finished in one pass: a delete, not a put
    b.delete(b"sc")
    b.put(b"sc", "queued", b"4")  # deleted, then submitted again with the same id
    b.pause(b"t", b"p1")
    b.resume(b"t")
    b.resume(b"u")
    b.pause(b"u", b"p2")
    assert len(b) == 5 and b
    batch = b.take()
    assert dict(batch.puts) == {b"sa": ("running", b"2"), b"sc": ("queued", b"4")}
    assert set(batch.deletes) == {b"sb"}
    assert dict(batch.paused) == {b"t": None, b"u": b"p2"}
    assert len(batch) == 5 and batch


def test_take_starts_an_empty_batch() -> None:
    b = BatchBuilder()
    b.put(b"sa", "queued", b"1")
    first = b.take()
    assert not b and len(b) == 0
    b.put(b"sb", "queued", b"2")
    assert dict(first.puts) == {b"sa": ("queued", b"1")}  # not changed by later puts
    assert not b.take().deletes
    assert not Batch() and len(Batch()) == 0
