"""Byte and count caps on what the broker echoes and keeps (issue 18); no sockets."""

from __future__ import annotations

import json

from gloomd.broker import STORE_ENTRY_BYTES
from tests.support.brokerkit import Kit


def bad(field: str) -> list[dict[str, str]]:
    return [{"error": "invalid_type", "reason": field}]


# ---------------------------------------------------------------- ids, types, after


def test_id_size_cap_on_every_action() -> None:
    k = Kit(max_id=8)
    m = k.master()
    assert k.submit(m, "x" * 8, body=1) == [{"ok": True, "id": "x" * 8}]
    assert k.submit(m, 10**7, body=1) == [{"ok": True, "id": 10**7}]  # 8 digits
    assert k.submit(m, "x" * 9) == bad("id")
    assert k.submit(m, 10**8) == bad("id")
    assert k.submit(m, -(10**8)) == bad("id")
    assert k.send(m, {"action": "cancel", "id": "y" * 9}) == bad("id")
    assert k.send(m, {"action": "result", "id": "y" * 9}) == bad("id")


def test_type_size_cap_on_submit_join_and_stats() -> None:
    k = Kit(max_type=10)
    m = k.master()
    assert k.submit(m, 1, job_type="t" * 10, body=0) == [{"ok": True, "id": 1}]
    assert k.submit(m, 2, job_type="t" * 11) == bad("type")
    assert k.submit(m, 3, job_type=["ab", "cd", "e"]) == bad("type")  # canonical: 16 bytes
    # The type is checked in its place: before priority.
    assert k.submit(m, 4, job_type="t" * 11, priority="high") == bad("type")
    s = k.broker.connect_slave("s")
    assert k.send(s, {"action": "join", "type": "t" * 11}) == bad("type")
    assert k.send(m, {"action": "stats", "type": "t" * 11}) == bad("type")


def test_after_length_cap() -> None:
    k = Kit(max_after=2, max_id=4)
    m = k.master()
    k.submit(m, "a", body=0)
    k.submit(m, "b", body=0)
    assert k.submit(m, "c", after=["a", "b"]) == [{"ok": True, "id": "c"}]
    assert k.submit(m, "d", after=["a", "b", "c"]) == bad("after")
    assert k.submit(m, "e", after=["toolong"]) == bad("after")


def test_value_cap_counts_outside_strings_only() -> None:
    k = Kit(max_values=5000)
    m = k.master()
    # 20,000 commas and brackets, all inside one string: one value.
    text = "[a,b:{c}]," * 2000
    assert k.submit(m, 1, body=text) == [{"ok": True, "id": 1}]
    assert k.submit(m, 2, body=['he said "' + "[,{:" * 2000 + '"']) == [{"ok": True, "id": 2}]
    (reply,) = k.submit(m, 3, body=[0] * 6000)
    assert reply["error"] == "invalid_json"
    (reply,) = k.submit(m, 4, body=["s"] * 6000)  # short strings: many values
    assert reply["error"] == "invalid_json"
    (reply,) = k.submit(m, 5, body=[[]] * 6000)
    assert reply["error"] == "invalid_json"
    assert k.submit(m, 6, body=[0] * 4900) == [{"ok": True, "id": 6}]


# ---------------------------------------------------------------- stores in bytes


def answer(k: Kit, m: object, job_id: str, body: object) -> None:
    s = k.slave("t", name=f"s-{job_id}")
    k.out(s)
    k.send(s, {"action": "respond", "body": body})
    k.broker.disconnect(s)


def test_result_store_is_capped_in_bytes() -> None:
    size = 100_000
    k = Kit(max_result_bytes=2 * (size + 100 + STORE_ENTRY_BYTES))
    m = k.master()
    for job_id in ("r1", "r2", "r3"):
        k.submit(m, job_id, body=0, detach=True)
        answer(k, m, job_id, "x" * size)
    k.out(m)
    assert k.send(m, {"action": "result", "id": "r1"}) == [{"error": "unknown_id", "reason": "r1"}]
    for job_id in ("r2", "r3"):
        assert k.send(m, {"action": "result", "id": job_id}) == [{"id": job_id, "body": "x" * size}]
    assert k.broker.stores.result_bytes <= k.broker.limits.max_result_bytes
    k.tick(3601)  # expiry gives the bytes back
    assert k.broker.stores.result_bytes == 0


def test_outcome_store_is_capped_in_bytes() -> None:
    k = Kit(max_outcome_bytes=3 * (1000 + STORE_ENTRY_BYTES), max_id=1000)
    m = k.master()
    ids = [str(i) * 1000 for i in range(5)]
    for job_id in ids:
        k.submit(m, job_id, body=0)
        k.send(m, {"action": "cancel", "id": job_id})
    assert k.broker.stores.outcome_bytes <= k.broker.limits.max_outcome_bytes
    # The oldest outcomes were dropped: a job cannot wait for them any more.
    refused = {"error": "unknown_dependency", "reason": ids[0]}
    assert k.submit(m, "late", after=[ids[0]]) == [refused]
    (ack, failed) = k.submit(m, "later", after=[ids[4]])
    assert ack == {"ok": True, "id": "later"} and failed["category"] == "DEPENDENCY"


# ---------------------------------------------------------------- stats


def test_stats_rows_past_the_cap_are_summed() -> None:
    k = Kit(max_stats_types=2)
    m = k.master()
    for i, job_type in enumerate(["a", "b", "c", "d"]):
        k.submit(m, i, job_type=job_type, body=0)
    k.submit(m, 10, job_type="d", body=0)
    s1 = k.slave("c", name="s1")  # takes job 2: running
    k.out(s1)
    k.slave("e", name="s2")  # joined, idle
    k.submit(m, 11, job_type="a", after=[10])  # waiting
    k.out(m)
    (reply,) = k.send(m, {"action": "stats"})
    stats = reply["stats"]
    assert list(stats) == [
        "types", "types_omitted", "totals", "waiting", "connections", "uptime_s", "journal",
    ]  # fmt: skip
    assert [row["type"] for row in stats["types"]] == ["a", "b"]
    assert stats["types_omitted"] == {
        "types": 3, "queued": 2, "running": 1, "slaves": 2, "idle": 1,
        "delayed": 0, "waiting": 0, "dead": 0,
    }  # fmt: skip
    assert stats["types"][0]["waiting"] == 1  # job 11, of type "a", shown
    assert stats["waiting"] == 1
    encoded = json.dumps(reply)
    assert len(encoded) < 1000


def test_running_sums_follow_a_released_dependent() -> None:
    k = Kit(max_stats_types=1)
    m = k.master()
    k.submit(m, "first", job_type="x", body=0)
    k.submit(m, "then", job_type="y", body=0, after=["first"])
    k.submit(m, "other", job_type="z", body=0)
    k.out(m)

    def stats() -> dict[str, object]:
        k.out(m)
        (reply,) = k.send(m, {"action": "stats"})
        return reply["stats"]  # type: ignore[no-any-return]

    assert stats()["waiting"] == 1
    s = k.slave("x")
    k.out(s)
    k.send(s, {"action": "respond", "body": 1})  # "then" is released: queued now
    after = stats()
    assert after["waiting"] == 0
    assert after["types_omitted"] == {
        "types": 2, "queued": 2, "running": 0, "slaves": 0, "idle": 0,
        "delayed": 0, "waiting": 0, "dead": 0,
    }  # fmt: skip


def test_stats_for_one_type() -> None:
    k = Kit(max_stats_types=1)
    m = k.master()
    k.submit(m, 1, job_type="a", body=0)
    k.submit(m, 2, job_type=None, body=0)
    k.out(m)
    (reply,) = k.send(m, {"action": "stats", "type": None})
    row = {"type": None, "queued": 1, "running": 0, "slaves": 0, "idle": 0, "delayed": 0,
           "waiting": 0, "dead": 0, "paused": False, "completed": 0, "failed": 0}  # fmt: skip
    assert reply["stats"]["types"] == [row]
    assert "types_omitted" not in reply["stats"]
    (reply,) = k.send(m, {"action": "stats", "type": "nobody"})
    assert reply["stats"]["types"] == []


def test_small_stats_answer_keeps_its_shape() -> None:
    k = Kit()
    m = k.master()
    k.submit(m, 1, body=0)
    k.out(m)
    (reply,) = k.send(m, {"action": "stats"})
    assert list(reply["stats"]) == [
        "types", "totals", "waiting", "connections", "uptime_s", "journal",
    ]  # fmt: skip
