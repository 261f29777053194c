"""Held replies (`gloomd.holds`): order per peer, tickets, a failed write's journal_error."""

from __future__ import annotations

from gloomd.holds import DROP, Dispatch, Holds, divert, take_ready
from gloomd.state import Job, MasterPeer, SlavePeer


def sent(peer: MasterPeer | SlavePeer, *frames: bytes) -> None:
    peer.outbox.extend(frames)


def test_frames_before_a_hold_leave_now_and_after_it_wait_in_order() -> None:
    holds = Holds()
    peer = MasterPeer("m")
    sent(peer, b"before")
    holds.hold(peer, "a")
    sent(peer, b"ack-a", b"result-x")
    holds.seal()
    assert peer.outbox == []
    assert take_ready(peer) == [b"before"]  # what the flush writes now
    sent(peer, b"later")  # queued after the held ack: waits behind it
    assert take_ready(peer) == []
    assert peer.outbox == []
    assert holds.close() == 1
    sent(peer, b"during")  # while ticket 1 commits
    divert(peer)
    assert holds.release(1, failed=False) == [(peer, [b"ack-a", b"result-x", b"later", b"during"])]
    assert peer.gated is None
    assert not holds


def test_a_failed_write_turns_held_acks_into_journal_error_and_drops_job_frames() -> None:
    holds = Holds()
    master, slave = MasterPeer("m"), SlavePeer("s")
    holds.hold(master, "a")
    sent(master, b"ack-a")
    sent(master, b"unrelated")
    holds.hold(master, "b")
    sent(master, b"ack-b")
    sent(slave, b"ok")
    holds.hold(slave, DROP)
    sent(slave, b"job-a")
    holds.seal()
    assert take_ready(slave) == [b"ok"]
    ticket = holds.close()
    released = dict(holds.release(ticket, failed=True))
    assert take_ready(master) == []
    assert released[master] == [
        {"error": "journal_error", "reason": "a"},
        b"unrelated",
        {"error": "journal_error", "reason": "b"},
    ]
    assert slave not in released  # its only held frame was dropped


def test_a_later_ticket_waits_for_its_own_write() -> None:
    holds = Holds()
    peer = MasterPeer("m")
    holds.hold(peer, 1)
    sent(peer, b"ack-1")
    holds.seal()
    first = holds.close()
    holds.hold(peer, 2)  # arrives while the first write runs
    sent(peer, b"ack-2")
    holds.seal()
    assert holds.release(first, failed=False) == [(peer, [b"ack-1"])]
    assert peer.gated is not None  # ack-2 still waits
    second = holds.close()
    assert holds.release(second, failed=True) == [(peer, [{"error": "journal_error", "reason": 2}])]


def test_a_job_frame_is_dropped_when_its_slave_no_longer_holds_the_job() -> None:
    holds = Holds()
    slave = SlavePeer("s")
    job = object.__new__(Job)
    slave.job = job
    holds.hold(slave, Dispatch(job))
    sent(slave, b"job")
    holds.seal()
    slave.job = None  # it re-joined: the broker took the job back
    sent(slave, b"ok-join")
    take_ready(slave)
    assert holds.release(holds.close(), failed=False) == [(slave, [b"ok-join"])]
