"""The websocket service's frame encoder sends JSON and nothing else (issue 18).

Every case is checked by decoding the text with a strict decoder: the standard
library with NaN/Infinity refused, after a UTF-8 round trip (a websocket text
frame must be valid UTF-8).
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import pytest

from gloomd.wsjobd import encode_report

pytestmark = pytest.mark.timeout(30)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def strict(text: str) -> Any:
    """Decode as a strict JSON client would, or fail the test."""
    data = text.encode("utf-8")  # raises on a lone surrogate
    return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)


def test_pykit_format_is_kept_for_json_values() -> None:
    # pykit's utfjson: default separators, non-ASCII as is; odd values as their repr.
    assert (
        encode_report({"a": "ü", "b": [1, 2.5], "c": None})
        == '{"a": "ü", "b": [1, 2.5], "c": null}'
    )
    assert encode_report({"s": {1}}) == '{"s": "{1}"}'
    assert encode_report("80%") == '"80%"'


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers_become_null(value: float) -> None:
    text = encode_report({"progress": value, "rest": [value, 1.5], "ok": "x"})
    assert strict(text) == {"progress": None, "rest": [None, 1.5], "ok": "x"}
    assert strict(encode_report(value)) is None


def test_lone_surrogates_become_replacement_characters() -> None:
    text = encode_report({"lone": "a\ud800b\udfffc", "pair": "\ud83d\ude00", "key\udc00": "ü"})
    assert strict(text) == {"lone": "a\ufffdb\ufffdc", "pair": "\U0001f600", "key\ufffd": "ü"}


def test_values_json_cannot_write_become_null_or_text() -> None:
    cycle: dict[str, Any] = {"n": 1}
    cycle["self"] = cycle
    deep: list[Any] = []
    inner = deep
    for _ in range(1200):
        inner.append([])
        inner = inner[0]

    class BrokenRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    payload = {
        "big": 10**5000,  # over Python's int-to-text limit
        "cycle": cycle,
        "deep": deep,
        "keys": {1: "a", None: "b", False: "c", 2.5: "d", (1, 2): "e", math.inf: "f"},
        "broken": BrokenRepr(),
        "inf": math.inf,
    }
    decoded = strict(encode_report(payload))
    assert decoded["big"] is None
    assert decoded["cycle"] == {"n": 1, "self": None}
    assert decoded["keys"] == {
        "1": "a",
        "null": "b",
        "false": "c",
        "2.5": "d",
        "(1, 2)": "e",
        "inf": "f",
    }
    assert decoded["broken"] == "<unrepresentable BrokenRepr: RuntimeError>"
    assert decoded["inf"] is None
    depth, node = 0, decoded["deep"]
    while isinstance(node, list) and node:
        depth, node = depth + 1, node[0]
    assert node is None and depth < 300  # cut where the codec's MAX_DEPTH is


def test_a_dict_mutated_by_a_thread_while_encoding_still_encodes() -> None:
    # The cleaning path copies each container in one C call, so a job thread
    # adding keys meanwhile cannot make it fail with "changed size".
    data: dict[str, Any] = {f"k{i}": [math.inf, "\ud800", object()] for i in range(2000)}
    stop = threading.Event()

    def mutate() -> None:
        i = 0
        while not stop.is_set():
            data[f"new{i % 500}"] = i
            data.pop(f"new{(i + 250) % 500}", None)
            i += 1

    thread = threading.Thread(target=mutate)
    thread.start()
    try:
        for _ in range(20):
            decoded = strict(encode_report(data))
            assert decoded["k0"][:2] == [None, "\ufffd"]
    finally:
        stop.set()
        thread.join()
