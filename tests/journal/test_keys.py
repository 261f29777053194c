"""Job ids as journal keys: "1" and 1 differ, any integer round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gloomd.journal import job_id_of, job_key


def test_strings_and_integers_have_their_own_tag() -> None:
    assert job_key("1") == b"s1"
    assert job_key(1) == b"i1"
    assert job_key("1") != job_key(1)
    assert job_key("i1") == b"si1"  # a string that looks like a key stays a string
    assert job_key(-42) == b"i-42"
    assert job_key("é") == b"s\xc3\xa9"
    assert job_key("") == b"s"


def test_integers_beyond_64_bits_round_trip_exactly() -> None:
    big = 2**200 + 1
    assert job_key(big) == b"i" + str(big).encode()
    assert job_id_of(job_key(big)) == big
    assert job_id_of(job_key(-(2**70))) == -(2**70)


@pytest.mark.parametrize("bad", [True, False, 1.0, None, b"1", ["1"]])
def test_other_types_are_not_ids(bad: object) -> None:
    with pytest.raises(TypeError):
        job_key(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [b"", b"x1", b"i", b"i--1", b"i1.5", b"i 1", b"s\xff"])
def test_job_id_of_refuses_what_job_key_never_makes(bad: bytes) -> None:
    with pytest.raises(ValueError):
        job_id_of(bad)


ids = st.one_of(st.text(), st.integers(), st.integers(min_value=2**63, max_value=2**300))


@given(ids)
def test_round_trip(job_id: str | int) -> None:
    back = job_id_of(job_key(job_id))
    assert back == job_id and type(back) is type(job_id)


@given(ids, ids)
def test_distinct_ids_have_distinct_keys(a: str | int, b: str | int) -> None:
    same_id = type(a) is type(b) and a == b
    assert (job_key(a) == job_key(b)) == same_id
