"""Keys and the exact priority order (no Redis needed)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gloomd.cluster.keys import id_key, id_of_key, prefix, priority_key, type_key, type_key_of


@given(st.lists(st.integers(min_value=-(10**60), max_value=10**60), min_size=2))
def test_priority_keys_sort_larger_priority_first(priorities: list[int]) -> None:
    assert sorted(priorities, key=priority_key) == sorted(priorities, reverse=True)


def test_priorities_past_a_double_keep_their_order() -> None:
    # 2**53 + 1 and 2**53 are one double; the keys still differ in order.
    big = [2**53 + 1, 2**53, -(2**53) - 1, -(2**53), 10**400, -(10**400), 0]
    assert sorted(big, key=priority_key) == sorted(big, reverse=True)


def test_ids_and_types_keep_their_identity() -> None:
    assert id_key("1") != id_key(1)
    assert id_of_key(id_key(2**80)) == 2**80 and id_of_key(id_key("é")) == "é"
    assert type_key(type_key_of({"b": 1, "a": 2})) == type_key(type_key_of({"a": 2, "b": 1}))
    assert type_key(type_key_of(1)) != type_key(type_key_of(1.0))
    assert type_key(type_key_of("1")) != type_key(type_key_of(1))
    assert prefix("gloomd") == "{gloomd}:"
