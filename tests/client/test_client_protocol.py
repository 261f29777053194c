"""The client's sans-IO protocol classes, fed hand-built frames (no sockets).

These pin down the matching rules that the original Gloom client got wrong:
replies by order, results by exact id, whatever interleaving the daemon picks.
"""

from __future__ import annotations

from typing import Any

import pytest

from gloom._master_protocol import Answered, Finished, MasterProtocol, Notice, Progressed
from gloom._slave_protocol import JobOffered, SlaveProtocol
from gloom.errors import (
    GloomError,
    JobCancelled,
    JobError,
    JobFailed,
    ProtocolError,
    ServerError,
    TransportError,
    WaitTimeout,
)
from tests.support.wire import frame, raw_frame

pytestmark = pytest.mark.timeout(10)


def feed(proto: Any, *frames: Any) -> list[Any]:
    data = b"".join(frame(f) for f in frames)
    return list(proto.receive_data(data))


def test_submit_frame_is_glooms_byte_for_byte_without_extensions() -> None:
    proto = MasterProtocol()
    _, data = proto.submit("a", "echo", [1], token="tok")
    assert data == raw_frame(b'{"action":"submit","id":"a","type":"echo","priority":0,"body":[1]}')
    _, data = proto.submit(2, "t", None, priority=5, timeout=1.5, detach=True, after=["a"])
    assert data == raw_frame(
        b'{"action":"submit","id":2,"type":"t","priority":5,"body":null,'
        b'"timeout":1.5,"detach":true,"after":["a"]}'
    )


def test_result_between_submit_and_ack_goes_to_its_job() -> None:
    proto = MasterProtocol()
    first, _ = proto.submit("a", "t", 1, token="A")
    feed(proto, {"ok": True, "id": "a"})
    second, _ = proto.submit("b", "t", 2, token="B")
    # a's result overtakes b's ack: the original client took it for the ack.
    events = feed(proto, {"id": "a", "body": 10}, {"ok": True, "id": "b"})
    assert events[0] == Finished("a", "A", 10, None)
    assert isinstance(events[1], Answered) and events[1].request is second
    assert second.answered and second.error is None and first.answered


def test_result_overtaking_its_own_ack_is_not_resurrected_by_the_ack() -> None:
    proto = MasterProtocol()
    proto.submit("x", "t", 0, token="X")
    proto.submit("y", "t", 0, token="Y")
    feed(proto, {"ok": True, "id": "x"})
    events = feed(proto, {"id": "y", "body": "early"}, {"ok": True, "id": "y"})
    assert events[0] == Finished("y", "Y", "early", None)
    # A second result for y (a duplicate) no longer finds a job.
    assert feed(proto, {"id": "y", "body": "dup"}) == [Finished("y", None, "dup", None)]


def test_ids_are_compared_exactly() -> None:
    proto = MasterProtocol()
    proto.submit(1, "t", 0, token="int")
    proto.submit("1", "t", 0, token="str")
    big = 2**80 + 1
    proto.submit(big, "t", 0, token="big")
    feed(proto, {"ok": True, "id": 1}, {"ok": True, "id": "1"}, {"ok": True, "id": big})
    events = feed(proto, {"id": "1", "body": "s"}, {"id": big, "body": "b"}, {"id": 1, "body": "i"})
    assert [(e.token, e.body) for e in events] == [("str", "s"), ("big", "b"), ("int", "i")]
    assert feed(proto, {"id": True, "body": 0}) == [Finished(True, None, 0, None)]


def test_ack_for_the_wrong_id_is_a_protocol_error() -> None:
    proto = MasterProtocol()
    proto.submit("a", "t", 0)
    with pytest.raises(ProtocolError):
        feed(proto, {"ok": True, "id": "b"})


def test_refusals_and_replies_follow_request_order() -> None:
    proto = MasterProtocol()
    dup, _ = proto.submit("a", "t", 0, token="A")
    stats, _ = proto.stats()
    cancel, _ = proto.cancel("zzz")
    events = feed(
        proto,
        {"error": "id_exists", "reason": "a"},
        {"ok": True, "stats": {"types": []}},
        {"error": "unknown_id", "reason": "zzz"},
    )
    assert [e.request for e in events] == [dup, stats, cancel]
    assert isinstance(dup.error, ServerError) and dup.error.error == "id_exists"
    assert stats.value == {"types": []}
    assert cancel.error is not None and cancel.error.reason == "zzz"  # type: ignore[attr-defined]


def test_job_failures_become_typed_exceptions() -> None:
    proto = MasterProtocol()
    for job_id in ("f", "e", "g"):
        proto.submit(job_id, "t", 0, token=job_id.upper())
        feed(proto, {"ok": True, "id": job_id})
    events = feed(
        proto,
        {"error": "job_failed", "reason": "f", "id": "f", "category": "TIMEOUT"},
        {
            "error": "job_error",
            "reason": {"type": "KeyError", "message": "k", "traceback": "TB"},
            "id": "e",
            "category": "ERROR",
        },
        {"error": "job_failed", "reason": "g"},  # Gloom's shape: no id, no category
    )
    failed, errored, gloomish = (e.error for e in events)
    assert isinstance(failed, JobFailed) and not isinstance(failed, JobError)
    assert (failed.id, failed.category, failed.error, failed.reason) == (
        "f",
        "TIMEOUT",
        "job_failed",
        "f",
    )
    assert (
        isinstance(errored, JobError) and errored.traceback == "TB" and errored.category == "ERROR"
    )
    assert errored.error == "job_error" and isinstance(errored, ServerError)
    assert isinstance(gloomish, JobFailed) and gloomish.id == "g" and gloomish.category is None
    assert [e.token for e in events] == ["F", "E", "G"]


def test_cancel_by_another_master_reaches_the_submitter_as_cancelled() -> None:
    proto = MasterProtocol()
    proto.submit("d", "t", 0, detach=True, token="D")
    feed(proto, {"ok": True, "id": "d"})
    (event,) = feed(
        proto, {"error": "job_failed", "reason": "d", "id": "d", "category": "CANCELLED"}
    )
    assert isinstance(event.error, JobCancelled) and event.token == "D"


def test_own_cancel_finishes_the_job_through_the_ack() -> None:
    proto = MasterProtocol()
    proto.submit("q", "t", 0, token="Q")
    feed(proto, {"ok": True, "id": "q"})
    request, _ = proto.cancel("q")
    (event,) = feed(proto, {"ok": True, "id": "q"})
    assert event == Answered(request, cancelled=("Q",)) and request.value is True


def test_result_request_answer_and_pushed_result_are_told_apart() -> None:
    proto = MasterProtocol()
    proto.submit("d", "t", 0, detach=True, token="D")
    feed(proto, {"ok": True, "id": "d"})
    other, _ = proto.result("other")
    mine, _ = proto.result("d")
    # Answer to the first request, then d's pushed result, then d's answer.
    events = feed(proto, {"id": "other", "body": 1}, {"id": "d", "body": 2})
    assert events[0] == Answered(other) and other.value == 1
    # d's push arrives while the head request is result("d"): it answers it
    # and also finishes the job this connection submitted.
    assert events[1] == Answered(mine) and mine.value == 2
    assert events[2] == Finished("d", "D", 2, None)
    assert feed(proto, {"id": "d", "body": 2}) == [Finished("d", None, 2, None)]


def test_result_request_not_ready_and_failure() -> None:
    proto = MasterProtocol()
    waiting, _ = proto.result("w")
    failed, _ = proto.result("f")
    feed(
        proto,
        {"error": "not_ready", "reason": "w"},
        {"error": "job_error", "reason": "bad", "id": "f", "category": "ERROR"},
    )
    assert isinstance(waiting.error, ServerError) and waiting.error.error == "not_ready"
    assert isinstance(failed.error, JobError) and failed.error.reason == "bad"


def test_outcome_instead_of_ack_answers_the_submit() -> None:
    proto = MasterProtocol()
    request, _ = proto.submit("h", "t", 0, token="H")
    stats, _ = proto.stats()
    events = feed(
        proto,
        {"error": "job_failed", "reason": "h", "id": "h", "category": "HALTED"},
        {"ok": True, "stats": {}},
    )
    assert events == [Answered(request), Answered(stats)]
    assert isinstance(request.error, JobFailed) and request.error.category == "HALTED"


def test_progress_and_notices() -> None:
    proto = MasterProtocol()
    proto.submit("p", "t", 0, token="P")
    feed(proto, {"ok": True, "id": "p"})
    assert feed(proto, {"id": "p", "progress": {"done": 1}}) == [Progressed("p", "P", {"done": 1})]
    assert feed(proto, {"id": "nope", "progress": 3}) == [Progressed("nope", None, 3)]
    (notice,) = feed(proto, {"error": "too_many_connections", "reason": 10})
    assert isinstance(notice, Notice) and notice.error.error == "too_many_connections"


def test_frames_split_anywhere_are_reassembled() -> None:
    proto = MasterProtocol()
    proto.submit("s", "t", 0, token="S")
    data = frame({"ok": True, "id": "s"}) + frame({"id": "s", "body": "x" * 100})
    events = []
    for i in range(len(data)):
        events.extend(proto.receive_data(data[i : i + 1]))
    assert events[-1] == Finished("s", "S", "x" * 100, None)


def test_non_object_or_garbage_frames_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError):
        MasterProtocol().receive_data(frame([1, 2]))
    with pytest.raises(ProtocolError):
        MasterProtocol().receive_data(raw_frame(b"{nope"))
    with pytest.raises(ProtocolError):
        MasterProtocol().receive_data(frame({"ok": True}))  # nothing was asked


def test_connection_lost_fails_requests_and_reports_unfinished_jobs() -> None:
    proto = MasterProtocol()
    proto.submit("a", "t", 0, token="A")
    feed(proto, {"ok": True, "id": "a"})
    pending, _ = proto.submit("b", "t", 0, token="B")
    proto.submit("c", "t", 0, token="C")
    feed(proto, {"ok": True, "id": "b"}, {"id": "c", "body": 0})
    failed, tokens = proto.connection_lost(TransportError("gone"))
    assert [r.job_id for r in failed] == ["c"]
    assert sorted(tokens) == ["A", "B"] and pending.answered


def test_slave_protocol_round_trip() -> None:
    proto = SlaveProtocol()
    join, data = proto.join("echo")
    assert data == raw_frame(b'{"action":"join","type":"echo"}')
    events = feed(
        proto,
        {"ok": True},
        {"action": "job", "id": 1, "type": "echo", "body": None, "attempt": 2, "timeout": 5},
    )
    assert events[0].request is join and join.value is True
    assert isinstance(events[1], JobOffered) and events[1].frame["attempt"] == 2
    respond, data = proto.respond({"r": 1})
    assert data == raw_frame(b'{"action":"respond","body":{"r":1}}')
    fail, data = proto.fail("TIMEOUT", "slow")
    assert data == raw_frame(b'{"action":"fail","error":"TIMEOUT","reason":"slow"}')
    assert proto.progress(0.5) == raw_frame(b'{"action":"progress","body":0.5}')
    feed(proto, {"error": "invalid_state", "reason": "not_processing"}, {"ok": True})
    assert isinstance(respond.error, ServerError) and fail.value is True
    with pytest.raises(ValueError):
        proto.fail("OOPS")


def test_exception_tree_is_the_decided_one() -> None:
    import trio

    for cls in (TransportError, ProtocolError, ServerError, JobCancelled, WaitTimeout):
        assert issubclass(cls, GloomError)
    assert issubclass(JobError, JobFailed) and issubclass(JobFailed, ServerError)
    assert issubclass(WaitTimeout, trio.TooSlowError) and issubclass(WaitTimeout, TimeoutError)
    assert not issubclass(WaitTimeout, ServerError) and not issubclass(JobFailed, WaitTimeout)
    error = ServerError({"error": "id_exists", "reason": "a"})
    assert (error.error, error.reason, str(error)) == ("id_exists", "a", "id_exists -> a")
