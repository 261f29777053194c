"""The blocking client end to end against a real gloomd process.

Slaves run in threads; they and the test hand each other `threading.Event`s,
and every blocking call carries a timeout, so nothing can hang.  The last test
is written exactly as code for Gloom's own client was, to show the surface
still fits.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import gloom
from tests.support.daemon import Daemon, spawn_gloomd

pytestmark = pytest.mark.timeout(60)

T = 10.0  # socket timeout for every call


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with spawn_gloomd(env={"GLOOMD_TEST_QUIET_LOGS": "1"}) as d:
        yield d


class SlaveThread(threading.Thread):
    """A `gloom.Slave` serving `job_type` with `handle(slave, job)` in a thread."""

    def __init__(
        self,
        daemon: Daemon,
        job_type: Any,
        handle: Callable[[gloom.Slave, gloom.SyncJob], Any],
        count: int,
    ) -> None:
        super().__init__(daemon=True)
        self.slave = gloom.Slave(daemon.slave_addr, timeout=T)
        self.slave.join(job_type)
        self.handle = handle
        self.count = count
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _ in range(self.count):
                job = self.slave.job()
                self.handle(self.slave, job)
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            self.slave.close()

    def finish(self) -> None:
        self.join(T)
        assert not self.is_alive()
        if self.error is not None:
            raise self.error


def square(slave: gloom.Slave, job: gloom.SyncJob) -> None:
    slave.respond(job.body * job.body)


def test_submit_receive_and_do_many(daemon: Daemon) -> None:
    worker = SlaveThread(daemon, "sq", square, 11)
    worker.start()
    with gloom.Master("127.0.0.1", daemon.master_port, timeout=T) as master:
        job_id = master.submit(None, "sq", 12)
        result = master.receive()
        assert (result.id, result.body) == (job_id, 144) and result["body"] == 144
        results = list(master.do_many([{"type": "sq", "body": n} for n in range(10)]))
        assert sorted(job.body for job in results) == [n * n for n in range(10)]
    worker.finish()


def test_result_arriving_before_an_ack_is_buffered(daemon: Daemon) -> None:
    answered = threading.Event()

    def answer(slave: gloom.Slave, job: gloom.SyncJob) -> None:
        slave.respond({"first": job.body})
        answered.set()

    worker = SlaveThread(daemon, "early", answer, 1)
    worker.start()
    with gloom.Master(daemon.master_addr, timeout=T) as master:
        first = master.submit("one", "early", 1)
        # Once the slave's respond is acked, the daemon has queued the result
        # for us: it reaches this socket before the ack of the next submit.
        assert answered.wait(T)
        second = master.submit("two", "nobody-serves-this", 2)
        assert second == "two"
        result = master.receive()
        assert (result.id, result.body) == (first, {"first": 1})
        assert master.cancel("two") is True
    worker.finish()


def test_failures_timeouts_and_extensions(daemon: Daemon) -> None:
    def fail(slave: gloom.Slave, job: gloom.SyncJob) -> None:
        slave.progress(50)
        slave.fail("ERROR", {"type": "RuntimeError", "message": "no", "traceback": "tb"})

    worker = SlaveThread(daemon, "bad", fail, 1)
    worker.start()
    with gloom.Master(daemon.master_addr, timeout=T) as master:
        job_id = master.submit(None, "bad", None, priority=3)
        with pytest.raises(gloom.JobError) as raised:
            master.receive()
        assert (raised.value.id, raised.value.category, raised.value.traceback) == (
            job_id,
            "ERROR",
            "tb",
        )
        assert isinstance(raised.value, gloom.ServerError) and raised.value.error == "job_error"

        master.submit("parked", "nobody", 1)
        with pytest.raises(gloom.WaitTimeout):
            master.receive(timeout=0.05)
        with pytest.raises(TimeoutError):  # what socket.timeout was, for Gloom code
            master.receive(timeout=0.05)
        with pytest.raises(gloom.ServerError) as dup:
            master.submit("parked", "nobody", 1)
        assert (dup.value.error, dup.value.reason) == ("id_exists", "parked")
        assert master.cancel("parked") is True

        master.submit("bg", "nobody", 7, detach=True, job_timeout=30)
        with pytest.raises(gloom.ServerError) as not_ready:
            master.result("bg")
        assert not_ready.value.error == "not_ready"
        types = {row["type"]: row for row in master.stats()["types"]}
        assert types["nobody"]["queued"] == 1
        assert master.cancel("bg") is True
    worker.finish()


def test_daemon_death_is_a_transport_error() -> None:
    with spawn_gloomd(env={"GLOOMD_TEST_QUIET_LOGS": "1"}) as doomed:
        master = gloom.Master(doomed.master_addr, timeout=T)
        master.submit("x", "nobody", 1)
        doomed.stop(signal.SIGKILL)
        with pytest.raises(gloom.TransportError):
            master.receive()
        with pytest.raises(gloom.TransportError):
            master.submit(None, "nobody", 2)
        master.close()
        with pytest.raises(gloom.TransportError, match="cannot reach gloomd"):
            gloom.Master(doomed.master_addr, timeout=T)


def test_sync_slave_reconnects_and_rejoins() -> None:
    quiet = {"GLOOMD_TEST_QUIET_LOGS": "1"}
    with spawn_gloomd(env=quiet) as first:
        ports = ("--master-port", str(first.master_port), "--slave-port", str(first.slave_port))
        slave = gloom.Slave(
            first.slave_addr, timeout=T, reconnect_delay=0.02, max_reconnect_delay=0.1
        )
        slave.join("re")
        first.stop(signal.SIGKILL)
        with spawn_gloomd(*ports, env=quiet) as second:
            with gloom.Master(second.master_addr, timeout=T) as master:
                master.submit("after-restart", "re", 3)
                job = slave.job()  # notices the loss, reconnects, re-joins
                assert (job.id, job.body, job.attempt) == ("after-restart", 3, 1)
                slave.respond(job.body + 1)
                assert master.receive().body == 4
                assert slave.reconnects == 1
        slave.close()


def test_code_written_for_gloom_still_works(daemon: Daemon) -> None:
    # Gloom's README style: positional (host, port) tuples, dict jobs, ids
    # chosen by the client, exceptions imported from the module.
    from gloom import GloomError, Master, ProtocolError, ServerError, Slave, TransportError

    assert issubclass(ServerError, GloomError) and issubclass(TransportError, GloomError)
    assert issubclass(ProtocolError, GloomError)

    def echo_slave() -> None:
        s = Slave(("127.0.0.1", daemon.slave_port))
        s.join("echo")
        for _ in range(3):
            job = s.job(timeout=T)
            assert set(job) >= {"action", "id", "type", "body"}
            s.respond({"echo": job.body}, timeout=T)
        s.disconnect()

    thread = threading.Thread(target=echo_slave, daemon=True)
    thread.start()
    m = Master(("127.0.0.1", daemon.master_port))
    jid = m.submit(id=m.new_job_id(), type="echo", body={"a": 1}, timeout=T)
    job = m.receive(timeout=T)
    assert job.id == jid and job.body == {"echo": {"a": 1}} and job["id"] == jid
    out = {
        j.id: j.body
        for j in m.do_many(
            [{"type": "echo", "body": 1, "id": "i1"}, {"type": "echo", "body": 2, "id": "i2"}],
            timeout=T,
        )
    }
    assert out == {"i1": {"echo": 1}, "i2": {"echo": 2}}
    try:
        m.submit("i1", "nobody", None, timeout=T)
        m.submit("i1", "nobody", None, timeout=T)
    except ServerError as e:
        assert (e.error, e.reason) == ("id_exists", "i1")
    else:
        raise AssertionError("duplicate id accepted")
    m.disconnect()
    thread.join(T)
    assert not thread.is_alive()
