"""The lifecycle on the client's sans-IO master protocol, fed hand-built frames.

The frames are the wire contract of durability-and-operations.md section 2
(submit keys `delay`, `retries`, `backoff`, `unique`; the ack's `attached`;
`attempt` on final failures; the actions kick, delete, jobs, pause, resume),
written here by hand so that the client is checked against the reference and
not against whatever the daemon happens to send.
"""

from __future__ import annotations

from typing import Any

import pytest

from gloom import ANY_TYPE, JobInfo, JobsPage, ListedState
from gloom._master_protocol import (
    SUBMIT_KEYS,
    Answered,
    Finished,
    MasterProtocol,
    Progressed,
    check_specs,
)
from gloom.errors import (
    InvalidState,
    JobCancelled,
    JobError,
    JobFailed,
    ProtocolError,
    ServerError,
    TransportError,
    UnknownJob,
    error_from_frame,
)
from gloomwire import vocabulary
from tests.support.wire import frame, raw_frame

pytestmark = pytest.mark.timeout(10)


def feed(proto: MasterProtocol, *frames: Any) -> list[Any]:
    return list(proto.receive_data(b"".join(frame(f) for f in frames)))


# -- submit keys ----------------------------------------------------------------------


def test_lifecycle_keys_follow_glooms_and_gloomds_keys_in_check_order() -> None:
    proto = MasterProtocol()
    _, data = proto.submit(
        "a", "t", 1, timeout=5, detach=True, delay=2.5, retries=3, backoff=0.5, unique=True
    )
    assert data == raw_frame(
        b'{"action":"submit","id":"a","type":"t","priority":0,"body":1,"timeout":5,'
        b'"detach":true,"delay":2.5,"retries":3,"backoff":0.5,"unique":true}'
    )


def test_unused_lifecycle_keys_are_not_sent() -> None:
    proto = MasterProtocol()
    _, data = proto.submit("a", "t", 1, delay=None, retries=None, backoff=None, unique=False)
    assert data == raw_frame(b'{"action":"submit","id":"a","type":"t","priority":0,"body":1}')
    # Zero is a value, not "unset": delay 0 and retries 0 are sent.
    _, data = proto.submit("b", "t", 1, delay=0, retries=0)
    assert data.endswith(b'"body":1,"delay":0,"retries":0}')


def test_specs_take_the_lifecycle_keys() -> None:
    assert {"delay", "retries", "backoff", "unique"} <= SUBMIT_KEYS
    check_specs([{"type": "t", "delay": 1, "retries": 2, "backoff": 3, "unique": True}])
    with pytest.raises(TypeError, match="unknown submit keys: defer"):
        check_specs([{"type": "t", "defer": 1}])
    proto = MasterProtocol()
    _, data = proto.submit_spec("x", {"type": "t", "body": 0, "retries": 2, "unique": True}, "X")
    assert data.endswith(b'"body":0,"retries":2,"unique":true}')


# -- the ack's attached ---------------------------------------------------------------


def test_the_acks_attached_flag_is_the_submits_value() -> None:
    proto = MasterProtocol()
    fresh, _ = proto.submit("a", "t", 1, unique=True, token="A")
    joined, _ = proto.submit("b", "t", 1, unique=True, token="B")
    events = feed(proto, {"ok": True, "id": "a"}, {"ok": True, "id": "b", "attached": True})
    assert events == [Answered(fresh), Answered(joined)]
    assert fresh.value is False and joined.value is True
    assert fresh.error is None and joined.error is None


def test_attached_to_a_finished_detached_job_gets_its_final_frame_at_once() -> None:
    proto = MasterProtocol()
    request, _ = proto.submit("d", "t", 1, unique=True, detach=True, token="D")
    events = feed(proto, {"ok": True, "id": "d", "attached": True}, {"id": "d", "body": 42})
    assert events == [Answered(request), Finished("d", "D", 42, None)]
    assert request.value is True


def test_two_submits_of_one_connection_attached_to_one_job_both_finish() -> None:
    proto = MasterProtocol()
    proto.submit("u", "t", 1, unique=True, token="first")
    proto.submit("u", "t", 1, unique=True, token="second")
    feed(proto, {"ok": True, "id": "u"}, {"ok": True, "id": "u", "attached": True})
    progress = feed(proto, {"id": "u", "progress": 50})
    assert progress == [Progressed("u", "first", 50), Progressed("u", "second", 50)]
    done = feed(proto, {"id": "u", "body": "R"})
    assert done == [Finished("u", "first", "R", None), Finished("u", "second", "R", None)]
    # A second final frame (a daemon that counts the master twice) finishes nothing.
    assert feed(proto, {"id": "u", "body": "R"}) == [Finished("u", None, "R", None)]


def test_a_cancel_ends_every_submit_attached_on_this_connection() -> None:
    proto = MasterProtocol()
    proto.submit("u", "t", 1, unique=True, token="first")
    proto.submit("u", "t", 1, unique=True, token="second")
    feed(proto, {"ok": True, "id": "u"}, {"ok": True, "id": "u", "attached": True})
    cancel, _ = proto.cancel("u")
    (event,) = feed(proto, {"ok": True, "id": "u"})
    assert event == Answered(cancel, cancelled=("first", "second"))


def test_a_lost_connection_fails_attached_submits_too() -> None:
    proto = MasterProtocol()
    proto.submit("u", "t", 1, unique=True, token="first")
    proto.submit("u", "t", 1, unique=True, token="second")
    feed(proto, {"ok": True, "id": "u"}, {"ok": True, "id": "u", "attached": True})
    _, tokens = proto.connection_lost(TransportError("gone"))
    assert sorted(tokens) == ["first", "second"]


# -- attempt on final failures --------------------------------------------------------


def test_final_failure_frames_carry_the_attempt() -> None:
    proto = MasterProtocol()
    for job_id in ("e", "f", "g"):
        proto.submit(job_id, "t", 0, retries=2, token=job_id)
        feed(proto, {"ok": True, "id": job_id})
    events = feed(
        proto,
        {"error": "job_error", "reason": {"type": "Retry"}, "id": "e", "category": "ERROR",
         "attempt": 3},
        {"error": "job_failed", "reason": "f", "id": "f", "category": "TIMEOUT", "attempt": 2},
        {"error": "job_failed", "reason": "g", "id": "g", "category": "CRASH"},
    )  # fmt: skip
    errored, failed, older = (event.error for event in events)
    assert isinstance(errored, JobError) and errored.attempt == 3
    assert isinstance(failed, JobFailed) and failed.attempt == 2
    assert isinstance(older, JobFailed) and older.attempt is None  # no attempt key: None


@pytest.mark.parametrize("bad", [True, 0, -1, 1.0, "2", None])
def test_an_attempt_that_is_not_a_positive_integer_reads_as_none(bad: Any) -> None:
    failure = error_from_frame(
        {"error": "job_failed", "reason": "x", "id": "x", "category": "TIMEOUT", "attempt": bad}
    )
    assert isinstance(failure, JobFailed) and failure.attempt is None


# -- admin requests: frames -----------------------------------------------------------


def test_admin_request_frames_are_the_references() -> None:
    proto = MasterProtocol()
    frames = [
        proto.kick("j1")[1],
        proto.kick_type("resize")[1],
        proto.kick_type({"k": 1}, limit=10)[1],
        proto.delete(7)[1],
        proto.jobs()[1],
        proto.jobs("resize", state="dead", limit=50, cursor=[3, "x"])[1],
        proto.jobs(None)[1],  # the null type is a type like any other
        proto.pause("resize")[1],
        proto.resume("resize")[1],
    ]
    assert frames == [
        raw_frame(b'{"action":"kick","id":"j1"}'),
        raw_frame(b'{"action":"kick","type":"resize"}'),
        raw_frame(b'{"action":"kick","type":{"k":1},"limit":10}'),
        raw_frame(b'{"action":"delete","id":7}'),
        raw_frame(b'{"action":"jobs"}'),
        raw_frame(b'{"action":"jobs","type":"resize","state":"dead","limit":50,"cursor":[3,"x"]}'),
        raw_frame(b'{"action":"jobs","type":null}'),
        raw_frame(b'{"action":"pause","type":"resize"}'),
        raw_frame(b'{"action":"resume","type":"resize"}'),
    ]
    assert proto.jobs(ANY_TYPE, state=ListedState.QUEUED)[1] == raw_frame(
        b'{"action":"jobs","state":"queued"}'
    )


@pytest.mark.parametrize("state", ["buried", "DEAD", "", 1])
def test_an_unknown_state_is_refused_before_sending(state: Any) -> None:
    proto = MasterProtocol()
    with pytest.raises(ValueError, match="state must be one of waiting, delayed, queued"):
        proto.jobs(state=state)
    assert proto.outstanding == 0


def test_listed_states_are_the_wires() -> None:
    """The client's states are gloomwire's (the words the daemon writes)."""
    assert {state.value for state in ListedState} == set(vocabulary.JOB_STATES)


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "3"])
def test_a_kick_limit_must_be_a_positive_integer(limit: Any) -> None:
    proto = MasterProtocol()
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        proto.kick_type("t", limit=limit)
    assert proto.outstanding == 0


# -- admin requests: answers ----------------------------------------------------------


def test_admin_answers_in_request_order() -> None:
    proto = MasterProtocol()
    kick, _ = proto.kick("d1")
    kick_type, _ = proto.kick_type("t", limit=5)
    delete, _ = proto.delete("q1")
    pause, _ = proto.pause("t")
    resume, _ = proto.resume("t")
    events = feed(
        proto,
        {"ok": True, "id": "d1"},
        {"ok": True, "kicked": 3},
        {"ok": True, "id": "q1"},
        {"ok": True},
        {"ok": True},
    )
    assert [e.request for e in events] == [kick, kick_type, delete, pause, resume]
    assert (kick.value, kick_type.value, delete.value, pause.value, resume.value) == (
        True, 3, True, None, None,
    )  # fmt: skip
    assert all(e.request.error is None for e in events)


def test_unknown_id_and_invalid_state_are_clear_exceptions() -> None:
    proto = MasterProtocol()
    kick, _ = proto.kick("q")
    delete, _ = proto.delete("r")
    gone, _ = proto.kick("nope")
    feed(
        proto,
        {"error": "invalid_state", "reason": "queued"},
        {"error": "invalid_state", "reason": "running"},
        {"error": "unknown_id", "reason": "nope"},
    )
    assert isinstance(kick.error, InvalidState) and isinstance(kick.error, ServerError)
    assert (kick.error.state, kick.error.id, kick.error.error) == ("queued", "q", "invalid_state")
    assert str(kick.error) == "job 'q' is queued (invalid_state)"
    assert isinstance(delete.error, InvalidState) and delete.error.state == "running"
    assert isinstance(gone.error, UnknownJob) and gone.error.id == "nope"
    assert str(gone.error) == "no job 'nope' (unknown_id)"
    assert (gone.error.error, gone.error.reason) == ("unknown_id", "nope")


def test_cancel_keeps_its_shape_with_the_new_exceptions() -> None:
    # Code written for ServerError(.error, .reason) still reads the same values.
    proto = MasterProtocol()
    running, _ = proto.cancel("r")
    feed(proto, {"error": "invalid_state", "reason": "running"})
    assert isinstance(running.error, ServerError)
    assert (running.error.error, running.error.reason) == ("invalid_state", "running")


def test_delete_of_this_connections_job_ends_it_as_cancel_does() -> None:
    proto = MasterProtocol()
    proto.submit("mine", "t", 1, detach=True, token="M")
    feed(proto, {"ok": True, "id": "mine"})
    delete, _ = proto.delete("mine")
    (event,) = feed(proto, {"ok": True, "id": "mine"})
    assert event == Answered(delete, cancelled=("M",))
    other, _ = proto.delete("someone-elses")
    (event,) = feed(proto, {"ok": True, "id": "someone-elses"})
    assert event == Answered(other)


def test_cancelled_category_still_reads_as_job_cancelled() -> None:
    proto = MasterProtocol()
    proto.submit("d", "t", 0, detach=True, token="D")
    feed(proto, {"ok": True, "id": "d"})
    (event,) = feed(
        proto, {"error": "job_failed", "reason": "d", "id": "d", "category": "CANCELLED"}
    )
    assert isinstance(event.error, JobCancelled)


ROW = {"id": "a", "type": "t", "priority": 5, "state": "dead", "attempt": 3, "age_s": 12.5,
       "detach": True}  # fmt: skip


def test_jobs_answer_becomes_typed_rows_and_a_cursor() -> None:
    proto = MasterProtocol()
    request, _ = proto.jobs()
    second = {**ROW, "id": 2, "type": ["x"], "state": "queued", "age_s": 0, "detach": False}
    feed(proto, {"ok": True, "jobs": [ROW, second], "next": {"after": 17}})
    page = request.value
    assert isinstance(page, JobsPage) and page.next_cursor == {"after": 17}
    assert page.jobs == [
        JobInfo("a", "t", 5, ListedState.DEAD, 3, 12.5, True),
        JobInfo(2, ["x"], 5, ListedState.QUEUED, 3, 0.0, False),
    ]
    assert page.jobs[0].state == "dead" and str(page.jobs[0].state) == "dead"
    with pytest.raises(AttributeError):
        page.jobs[0].state = ListedState.QUEUED  # type: ignore[misc]
    last, _ = proto.jobs(cursor={"after": 17})
    feed(proto, {"ok": True, "jobs": [], "next": None})
    assert last.value == JobsPage([], None)


@pytest.mark.parametrize(
    "answer",
    [
        {"ok": True, "next": None},
        {"ok": True, "jobs": {"a": 1}, "next": None},
        {"ok": True, "jobs": [[1]], "next": None},
        {"ok": True, "jobs": [{**ROW, "state": "buried"}], "next": None},
        {"ok": True, "jobs": [{k: v for k, v in ROW.items() if k != "age_s"}], "next": None},
        {"ok": True, "jobs": [{**ROW, "priority": "5"}], "next": None},
        {"ok": True, "jobs": [{**ROW, "attempt": True}], "next": None},
        {"ok": True, "jobs": [{**ROW, "detach": 1}], "next": None},
    ],
)
def test_a_malformed_jobs_answer_fails_the_request_not_the_connection(answer: Any) -> None:
    proto = MasterProtocol()
    request, _ = proto.jobs()
    stats, _ = proto.stats()
    events = feed(proto, answer, {"ok": True, "stats": {"types": []}})
    assert [e.request for e in events] == [request, stats]
    assert isinstance(request.error, ProtocolError)
    assert stats.value == {"types": []}


def test_a_kick_count_must_be_a_count() -> None:
    proto = MasterProtocol()
    request, _ = proto.kick_type("t")
    feed(proto, {"ok": True, "kicked": "3"})
    assert isinstance(request.error, ProtocolError)
