"""`gloom.JobState` reads as its bare value wherever user code shows or stores it.

It is a `StrEnum`; before, a ``(str, Enum)`` with its own ``__str__``.  These pin
what both give, so that the change of base class changes nothing a user sees.
"""

from __future__ import annotations

import json
import pickle

import orjson
import pytest

import gloom

VALUES = ["queued", "running", "done", "failed", "cancelled"]


def test_the_members_and_their_values() -> None:
    assert [state.value for state in gloom.JobState] == VALUES


@pytest.mark.parametrize("value", VALUES)
def test_a_state_reads_as_its_value(value: str) -> None:
    state = gloom.JobState(value)
    assert isinstance(state, str) and state == value and hash(state) == hash(value)
    assert str(state) == value and f"{state}" == value and "%s" % state == value
    assert f"{state:>10}" == f"{value:>10}"
    assert repr(state) == f"<JobState.{value.upper()}: {value!r}>"
    assert json.dumps({"state": state}) == json.dumps({"state": value})
    assert json.dumps({state: 1}) == json.dumps({value: 1})
    assert orjson.dumps({"state": state}) == orjson.dumps({"state": value})
    assert pickle.loads(pickle.dumps(state)) is state
