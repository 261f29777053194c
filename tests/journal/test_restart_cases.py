"""Journal records across a restart: two cases found by the broker fuzz with restarts."""

from __future__ import annotations

from pathlib import Path

from tests.journal.test_replay_model import commit, fresh_kit


def test_a_kept_result_survives_an_attached_job_of_its_id(tmp_path: Path) -> None:
    """A detached job's result is kept for --result-ttl even when an attached job
    takes its id meanwhile (both live side by side in memory); the attached job is
    not durable, so the row stays the result's.  (Found by the broker fuzz with
    restarts: the row was deleted when both happened before one commit.)"""
    path = str(tmp_path / "j.db")
    kit, durable, store = fresh_kit(path, 100.0, 1_700_000_000.0)
    master = kit.master()
    slave = kit.slave("a")
    assert kit.submit(master, 0, "a", detach=True) == [{"ok": True, "id": 0}]
    assert kit.out(slave)[0]["id"] == 0
    assert kit.send(slave, {"action": "respond", "body": 7}) == [{"ok": True}]
    assert kit.out(master) == [{"id": 0, "body": 7}]
    assert kit.submit(master, 0, "a") == [{"ok": True, "id": 0}]  # attached, same id
    commit(kit, durable, store)
    store.close()
    kit, durable, store = fresh_kit(path, kit.clock.now, kit.wall.now)
    master = kit.master()
    assert kit.send(master, {"action": "result", "id": 0}) == [{"id": 0, "body": 7}]
    store.close()


def test_restored_marks_are_written_back(tmp_path: Path) -> None:
    """Replay enters delayed, waiting and dead jobs again, with marks after the
    journal's: each record must carry its new mark, or one rewritten later (here:
    given a dependent) would move behind the others at the next restart.  (Found
    by the broker fuzz with restarts.)"""
    path = str(tmp_path / "j.db")
    kit, durable, store = fresh_kit(path, 100.0, 1_700_000_000.0)
    master = kit.master()
    for job_id in (1, 0):
        assert kit.submit(master, job_id, "a", detach=True, delay=2) == [{"ok": True, "id": job_id}]

    def restart() -> None:
        nonlocal kit, durable, store, master
        commit(kit, durable, store)
        store.close()
        kit, durable, store = fresh_kit(path, kit.clock.now, kit.wall.now)
        master = kit.master()

    def delayed() -> list[int]:
        (page,) = kit.send(master, {"action": "jobs", "state": "delayed"})
        return [row["id"] for row in page["jobs"]]

    restart()
    assert delayed() == [1, 0]
    assert kit.submit(master, 2, "a", after=[1]) == [{"ok": True, "id": 2}]  # rewrites 1
    restart()
    assert delayed() == [1, 0]
    store.close()
