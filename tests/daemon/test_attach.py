"""The one attach rule (gloomd.attach), shared by `unique` submits and wsjobd's `ident`."""

from __future__ import annotations

from dataclasses import dataclass, field

from gloomd.attach import (
    ATTACH,
    NEW,
    TAKEN,
    Registry,
    add_listener,
    claim,
    drop_listener,
    has_listener,
    listeners,
)


def test_the_rule() -> None:
    assert claim(False, False, False) == NEW
    assert claim(False, True, True) == NEW
    assert claim(True, True, True) == ATTACH
    assert claim(True, False, True) == TAKEN  # another kind: id_exists
    assert claim(True, True, False) == TAKEN  # not unique: id_exists


@dataclass
class Thing:
    kind: str
    master: str | None = None
    others: list[str] | None = field(default=None)


def test_registry_claims_by_key_and_kind() -> None:
    registry: Registry[str, Thing] = Registry(kind_of=lambda thing: thing.kind)
    assert registry.claim("k", "a") == (NEW, None)
    thing = Thing("a")
    registry["k"] = thing
    assert registry.claim("k", "a") == (ATTACH, thing)
    assert registry.claim("k", "b") == (TAKEN, thing)
    assert registry.claim("k", "a", unique=False) == (TAKEN, thing)
    assert len(registry) == 1 and "k" in registry and registry.get("k") is thing
    del registry["k"]
    assert registry.claim("k", "a") == (NEW, None) and registry.live == {}


def test_one_kind_by_default_as_wsjobd_uses_it() -> None:
    registry: Registry[tuple[str, int], Thing] = Registry()
    registry[("number", 1)] = Thing("x")
    assert registry.claim(("number", 1))[0] == ATTACH
    assert registry.claim(("boolean", 1))[0] == NEW


def test_listeners_first_then_others_and_once_each() -> None:
    thing = Thing("a")
    assert add_listener(thing, "m1") and thing.others is None  # one listener: no list
    assert not add_listener(thing, "m1")
    assert add_listener(thing, "m2") and add_listener(thing, "m3")
    assert list(listeners(thing)) == ["m1", "m2", "m3"] and has_listener(thing, "m3")
    assert not drop_listener(thing, "m1")  # the next one becomes the first
    assert thing.master == "m2" and list(listeners(thing)) == ["m2", "m3"]
    assert not drop_listener(thing, "m3") and thing.others is None
    assert not drop_listener(thing, "absent")
    assert drop_listener(thing, "m2") and list(listeners(thing)) == []
