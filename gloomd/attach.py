"""Unique / attach: one rule for the broker's `unique` submits and wsjobd's `ident`.

A client that asks for work under a key (a job id, a websocket job's ident)
while something live already holds that key either *attaches* to it (it
becomes one more listener and gets what the others get) or is refused; one
that finds the key free starts something new.  The rule, in one place
(lifecycle.md "Unique / attach"; durability-and-operations.md section 2):

    key free                                   -> NEW
    key live, `unique` asked, same kind        -> ATTACH
    key live otherwise (not unique, or another kind)  -> TAKEN

A *kind* is what must match for an attach to make sense: a job's type (the
same id submitted for another type is `id_exists`); wsjobd's jobs have one
kind, so its attach needs only a live ident (its requests are always
"unique": pykit attached every duplicate).

`Registry` holds the live things by key and applies the rule; each thing
keeps its own listeners (`Listened`: the first one, then the others, so
that the common case, one listener, costs no list).  Who may remove a thing
is the owner's rule: the broker removes a job when its last master has gone
(never a detached one), wsjobd when the job function returns.  Pure: no I/O,
no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any, Final, Generic, Protocol, TypeVar

__all__ = [
    "ATTACH",
    "NEW",
    "TAKEN",
    "Listened",
    "Registry",
    "add_listener",
    "claim",
    "drop_listener",
    "has_listener",
    "listeners",
]

#: Start a new thing under the key.
NEW: Final = 0
#: Join the live thing as one more listener.
ATTACH: Final = 1
#: Refused: the key is held (`id_exists`).
TAKEN: Final = 2

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
L = TypeVar("L")


def claim(live: bool, same_kind: bool, unique: bool) -> int:
    """The rule itself: NEW, ATTACH or TAKEN."""
    if not live:
        return NEW
    return ATTACH if unique and same_kind else TAKEN


def _one_kind(thing: Any) -> Hashable:
    return None


class Registry(Generic[K, T]):
    """Live things by key, with the attach rule.

    `live` is a plain dict, shared with the owner's hot path (the broker
    indexes jobs by id through it: `job_id in live` costs what a dict costs).
    `kind_of` says what a thing's kind is (default: every thing one kind).
    """

    __slots__ = ("_kind_of", "live")

    def __init__(self, kind_of: Callable[[T], Hashable] = _one_kind) -> None:
        self.live: dict[K, T] = {}
        self._kind_of = kind_of

    def claim(self, key: K, kind: Hashable = None, unique: bool = True) -> tuple[int, T | None]:
        """(NEW, None), (ATTACH, thing) or (TAKEN, thing) for a request under `key`."""
        thing = self.live.get(key)
        if thing is None:
            return NEW, None
        return claim(True, self._kind_of(thing) == kind, unique), thing

    def get(self, key: K) -> T | None:
        return self.live.get(key)

    def __setitem__(self, key: K, thing: T) -> None:
        """`thing` is live under `key` (the caller claimed it NEW)."""
        self.live[key] = thing

    def __delitem__(self, key: K) -> None:
        del self.live[key]

    def __len__(self) -> int:
        return len(self.live)

    def __contains__(self, key: object) -> bool:
        return key in self.live


class Listened(Protocol[L]):
    """A live thing's listeners: `master` (the first) and `others` (None while there are none).

    The names are the broker's (a job's listeners are its masters); a thing
    with one listener holds no list.
    """

    master: L | None
    others: list[L] | None


def listeners(thing: Listened[L]) -> Iterator[L]:
    """Every listener of `thing`, the first one first."""
    if thing.master is not None:
        yield thing.master
    if thing.others:
        yield from thing.others


def has_listener(thing: Listened[L], listener: L) -> bool:
    return thing.master is listener or (thing.others is not None and listener in thing.others)


def add_listener(thing: Listened[L], listener: L) -> bool:
    """Add `listener` (False if it already listens: a listener hears a thing once)."""
    if has_listener(thing, listener):
        return False
    if thing.master is None:
        thing.master = listener
    elif thing.others is None:
        thing.others = [listener]
    else:
        thing.others.append(listener)
    return True


def drop_listener(thing: Listened[L], listener: L) -> bool:
    """Remove `listener`; True when nobody listens any more."""
    others = thing.others
    if thing.master is listener:
        thing.master = others.pop(0) if others else None
    elif others is not None and listener in others:
        others.remove(listener)
    if not others:
        thing.others = None
    return thing.master is None
