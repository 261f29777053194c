"""Several gloomd daemons on one Redis (issue 16, phase 2): the ClusterBroker
wired into the server, over real connections.

Most tests run the daemons in the test's own trio run (`make_cluster_server`:
a `GloomServer` each, with its own engine and daemon id, as separate
processes would have); one runs real `gloomd` processes and the Gloom client.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

import gloom
from gloomd.cluster.broker import ClusterBroker
from tests.cluster.redis_server import RedisServer
from tests.support.across import square_across
from tests.support.wire import Peer, join

MakeServer = Callable[..., Awaitable[Any]]


async def submit(master: Peer, job_id: Any, **fields: Any) -> Any:
    frame = {"action": "submit", "id": job_id, "type": fields.pop("type", "t"), "body": job_id}
    return await master.request({**frame, **fields})


async def test_cross_daemon_delivery_and_result(make_cluster_server: MakeServer) -> None:
    """A job submitted on daemon 1 runs on a slave of daemon 2; its progress
    and result reach the master on daemon 1."""
    one = await make_cluster_server()
    two = await make_cluster_server()
    assert isinstance(one.broker, ClusterBroker) and isinstance(two.broker, ClusterBroker)
    assert one.broker.engine.daemon != two.broker.engine.daemon
    slave = await join(two.slave_port, "t")
    master = await Peer.connect(one.master_port)
    assert await submit(master, "a") == {"ok": True, "id": "a"}
    assert await slave.recv() == {"action": "job", "id": "a", "type": "t", "body": "a"}
    await slave.send({"action": "progress", "body": 50})
    assert await master.recv() == {"id": "a", "progress": 50}
    assert await slave.request({"action": "respond", "body": "done"}) == {"ok": True}
    assert await master.recv() == {"id": "a", "body": "done"}


async def test_replies_keep_request_order(make_cluster_server: MakeServer) -> None:
    """Answers given at once (ping, invalid_json) wait behind a step in
    flight, so a connection hears in the order it asked."""
    await make_cluster_server()
    two = await make_cluster_server()
    master = await Peer.connect(two.master_port)
    await master.send({"action": "submit", "id": 1, "type": "t", "body": 0})
    await master.send_raw(b"\x00\x00\x00\x01x")
    await master.send({"action": "ping"})
    await master.send({"action": "submit", "id": 1, "type": "t", "body": 0})
    assert await master.recv() == {"ok": True, "id": 1}
    assert (await master.recv())["error"] == "invalid_json"
    assert await master.recv() == {"ok": True}
    assert await master.recv() == {"error": "id_exists", "reason": 1}


async def test_strict_order_across_daemons(make_cluster_server: MakeServer) -> None:
    """Larger priority first, then acceptance order, whichever daemon took it."""
    daemons = [await make_cluster_server() for _ in range(3)]
    one = await Peer.connect(daemons[0].master_port)
    two = await Peer.connect(daemons[1].master_port)
    accepted = [(one, "a", 0), (two, "b", 0), (one, "c", 5), (two, "d", 5), (one, "e", 0)]
    accepted += [(two, "f", -1), (one, "g", 10**30), (two, "h", 2**53 + 1), (one, "i", 2**53)]
    for master, job_id, priority in accepted:
        assert await submit(master, job_id, priority=priority) == {"ok": True, "id": job_id}
    slave = await join(daemons[2].slave_port, "t")
    got = []
    for _ in accepted:
        job = await slave.recv()
        got.append(job["id"])
        assert await slave.request({"action": "respond", "body": None}) == {"ok": True}
    assert got == ["g", "h", "i", "c", "d", "a", "b", "e", "f"]


async def test_idle_slaves_share_work_fairly(make_cluster_server: MakeServer) -> None:
    """The slave idle longest gets the next job, whichever daemon it is on."""
    daemons = [await make_cluster_server() for _ in range(3)]
    first = await join(daemons[1].slave_port, "t")
    second = await join(daemons[2].slave_port, "t")
    master = await Peer.connect(daemons[0].master_port)
    for job_id in ("1", "2"):
        assert await submit(master, job_id) == {"ok": True, "id": job_id}
    assert (await first.recv())["id"] == "1"
    assert (await second.recv())["id"] == "2"
    for job_id in ("3", "4"):  # both busy: queued
        assert await submit(master, job_id) == {"ok": True, "id": job_id}
    # The second answers first: it takes the best queued job, then the first the next.
    assert await second.request({"action": "respond", "body": 2}) == {"ok": True}
    assert (await second.recv())["id"] == "3"
    assert await first.request({"action": "respond", "body": 1}) == {"ok": True}
    assert (await first.recv())["id"] == "4"
    results = {(await master.recv())["id"] for _ in range(2)}
    assert results == {"1", "2"}


async def test_detached_result_read_from_another_daemon(make_cluster_server: MakeServer) -> None:
    one = await make_cluster_server()
    two = await make_cluster_server()
    master = await Peer.connect(one.master_port)
    assert await submit(master, "x", detach=True) == {"ok": True, "id": "x"}
    await master.aclose()
    slave = await join(two.slave_port, "t")
    assert (await slave.recv())["id"] == "x"
    reader = await Peer.connect(two.master_port)
    assert await reader.request({"action": "result", "id": "x"}) == {
        "error": "not_ready",
        "reason": "x",
    }
    assert await slave.request({"action": "respond", "body": 42}) == {"ok": True}
    assert await reader.request({"action": "result", "id": "x"}) == {"id": "x", "body": 42}


async def test_stats_are_the_clusters(make_cluster_server: MakeServer) -> None:
    one = await make_cluster_server()
    two = await make_cluster_server()
    master = await Peer.connect(one.master_port)
    for job_id in range(3):
        assert await submit(master, job_id) == {"ok": True, "id": job_id}
    other = await Peer.connect(two.master_port)
    answer = await other.request({"action": "stats"})
    assert answer["ok"] is True
    stats = answer["stats"]
    assert stats["totals"]["submitted"] == 3
    assert [(row["type"], row["queued"]) for row in stats["types"]] == [("t", 3)]
    page = await other.request({"action": "jobs", "limit": 2})
    assert [job["id"] for job in page["jobs"]] == [0, 1]
    rest = await other.request({"action": "jobs", "limit": 2, "cursor": page["next"]})
    assert [job["id"] for job in rest["jobs"]] == [2]


async def test_master_gone_withdraws_its_jobs(make_cluster_server: MakeServer) -> None:
    """Gloom's rule cluster-wide: a master's attached jobs go with it."""
    one = await make_cluster_server()
    two = await make_cluster_server()
    master = await Peer.connect(one.master_port)
    assert await submit(master, "gone") == {"ok": True, "id": "gone"}
    assert await submit(master, "kept", detach=True) == {"ok": True, "id": "kept"}
    await master.aclose()
    slave = await join(two.slave_port, "t")
    assert (await slave.recv())["id"] == "kept"


async def test_backend_unavailable_then_recovery(
    make_cluster_server: MakeServer, redis_factory: Callable[..., RedisServer]
) -> None:
    """Redis stopped: submits are refused `backend_unavailable` (never
    acked); once it is back the daemon serves again and the refused job
    does not exist."""
    redis = redis_factory(appendonly=True)
    server = await make_cluster_server(url=redis.url)
    engine = server.broker.engine
    slave = await join(server.slave_port, "t")
    master = await Peer.connect(server.master_port)
    redis.stop()
    assert await submit(master, "lost") == {"error": "backend_unavailable", "reason": "lost"}
    assert await master.request({"action": "stats"}) == {
        "error": "backend_unavailable",
        "reason": "stats",
    }
    assert await master.request({"action": "result", "id": "lost"}) == {
        "error": "backend_unavailable",
        "reason": "lost",
    }
    redis.start()
    with trio.fail_after(10):
        await engine.wait_up()
    assert await submit(master, "lost") == {"ok": True, "id": "lost"}
    assert (await slave.recv())["id"] == "lost"
    assert await slave.request({"action": "respond", "body": 1}) == {"ok": True}
    assert await master.recv() == {"id": "lost", "body": 1}


async def test_gloomd_processes_and_the_gloom_client(
    gloomd_cluster: Callable[..., list[Any]],
) -> None:
    """Real daemons: a job submitted with the Gloom client on daemon 1 runs
    on a Gloom slave of daemon 2, and its result comes back to the client."""
    one, two = gloomd_cluster(2)
    await square_across(one.master_port, two.slave_port)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cluster", "http://x"], "gloomd: --cluster http://x: redis://, rediss:// or unix://"),
        (["--cluster-name", "x"], "gloomd: --cluster-name does nothing without --cluster"),
        (["--cluster", "redis://h", "--cluster-lease", "0"], "gloomd: --cluster-lease 0.0: must"),
        (["--cluster", "redis://h", "--cluster-name", "a{b}"], "gloomd: --cluster-name 'a{b}'"),
        (["--cluster", "redis://h", "--journal", "j.db"], "gloomd: --cluster and --journal"),
        (
            ["--cluster", "redis://h", "--cluster-password-file", "/nonexistent/pw"],
            "gloomd: --cluster-password-file /nonexistent/pw: cannot read it",
        ),
    ],
)
def test_flags_are_checked(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from gloomd.cli import main

    assert main(flags) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1


def test_unreachable_redis_exits_2_with_the_password_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gloomd.cli import main
    from tests.cluster.redis_server import free_port

    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    assert main(["--cluster", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gloomd: --cluster redis://user:***@127.0.0.1:"), err
    assert "s3cret" not in err


def test_without_coredis_the_cluster_flag_says_which_extra() -> None:
    """`make serve` installs gloomd without the cluster extra: `--cluster`
    then names it in one line (exit 2), not a traceback."""
    blocked = (
        "import sys; sys.modules['coredis'] = None\n"  # as if not installed
        "from gloomd.cli import main\n"
        "sys.exit(main(['--cluster', 'redis://u:s3cret@127.0.0.1:1/0', '--no-http']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "gloomd: --cluster redis://u:***@127.0.0.1:1/0: needs the cluster extra"
        " (pip install 'gloomd[cluster]': coredis)"
    ]


async def test_in_process_master_in_cluster_mode(make_cluster_server: MakeServer) -> None:
    """The scheduler's and the HTTP admin API's seat (`LocalMaster`): its
    answers wait for their step, and a call's result comes from another
    daemon's slave."""
    from gloomd.local import HeldAnswer, LocalMaster

    one = await make_cluster_server()
    two = await make_cluster_server()
    local = LocalMaster(one, "scheduler")
    slave = await join(two.slave_port, "t")
    outcome: list[Any] = []

    async def call() -> None:
        outcome.append(await local.call("s1", "t", 3))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        job = await slave.recv()
        assert (job["id"], job["body"]) == ("s1", 3)
        assert await slave.request({"action": "respond", "body": 9}) == {"ok": True}
    assert outcome == [9]
    answer = local.ask({"action": "stats"})
    assert isinstance(answer, HeldAnswer)
    stats = await answer.wait()
    assert stats["stats"]["totals"]["completed"] == 1


async def test_shutdown_leaves_the_cluster(make_cluster_server: MakeServer) -> None:
    """A daemon that stops answers its masters' attached jobs HALTED; the job
    its slave held goes back to the queue without a loss."""
    one = await make_cluster_server()
    two = await make_cluster_server()
    local_master = await Peer.connect(one.master_port)
    other_master = await Peer.connect(two.master_port)
    slave = await join(one.slave_port, "t")
    assert await submit(other_master, "held") == {"ok": True, "id": "held"}
    assert (await slave.recv())["id"] == "held"
    assert await submit(local_master, "mine") == {"ok": True, "id": "mine"}
    await one.shutdown()
    halted = await local_master.recv()
    assert (halted["error"], halted["reason"], halted["category"]) == (
        "job_failed",
        "mine",
        "HALTED",
    )
    again = await join(two.slave_port, "t")
    job = await again.recv()
    assert (job["id"], job["attempt"]) == ("held", 2)  # a redelivery
    stats = (await other_master.request({"action": "stats"}))["stats"]
    assert stats["totals"]["submitted"] == 2
    assert [(row["type"], row["running"], row["queued"]) for row in stats["types"]] == [("t", 1, 0)]


async def test_http_port_in_cluster_mode(gloomd_cluster: Callable[..., list[Any]]) -> None:
    """/metrics and /stats on any daemon show the cluster's figures."""
    import urllib.request

    one, two = gloomd_cluster(2)
    async with gloom.open_master("127.0.0.1", one.master_port) as master:
        for number in range(3):
            await master.submit("metered", number, id=number, detach=True)

    def get(path: str) -> str:
        url = f"http://127.0.0.1:{two.http_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body: bytes = response.read()
            return body.decode()

    metrics = await trio.to_thread.run_sync(get, "/metrics")
    assert 'gloomd_jobs{state="queued",type="metered"} 3.0' in metrics, metrics
    assert 'gloomd_job_events_total{event="submitted"} 3.0' in metrics, metrics
    stats = await trio.to_thread.run_sync(get, "/api/stats")
    assert '"submitted":3' in stats.replace(" ", "")


async def test_slave_step_while_redis_is_down_ends_the_slave(
    make_cluster_server: MakeServer, redis_factory: Callable[..., RedisServer]
) -> None:
    """A slave's respond that cannot reach Redis closes that slave; once
    Redis is back its job is requeued with one loss and redelivered."""
    redis = redis_factory(appendonly=True)
    server = await make_cluster_server(url=redis.url)
    master = await Peer.connect(server.master_port)
    slave = await join(server.slave_port, "t")
    assert await submit(master, "j") == {"ok": True, "id": "j"}
    assert (await slave.recv())["id"] == "j"
    redis.stop()
    await slave.send({"action": "respond", "body": 1})
    assert await slave.recv_eof()
    redis.start()
    with trio.fail_after(10):
        await server.broker.engine.wait_up()
    again = await join(server.slave_port, "t")
    job = await again.recv()
    assert (job["id"], job["attempt"]) == ("j", 2)
    assert await again.request({"action": "respond", "body": 2}) == {"ok": True}
    assert await master.recv() == {"id": "j", "body": 2}


async def test_redis_that_lost_its_data_fences_the_daemon(
    make_cluster_server: MakeServer, redis_factory: Callable[..., RedisServer]
) -> None:
    """Redis restarted empty: the daemon's record is gone, so is every
    connection's state: it closes them all and serves new ones."""
    redis = redis_factory()
    server = await make_cluster_server(url=redis.url)
    engine = server.broker.engine
    before = engine.daemon
    master = await Peer.connect(server.master_port)
    assert await submit(master, "a") == {"ok": True, "id": "a"}
    redis.stop()
    redis.start()
    # The engine sees its connections broken, reconnects, finds its record
    # gone: it closes every connection, then joins again under a new id.
    assert await master.recv_eof()
    with trio.fail_after(10):
        await engine.wait_up()
    assert engine.daemon != before
    fresh = await Peer.connect(server.master_port)
    assert await submit(fresh, "a") == {"ok": True, "id": "a"}


async def test_lifecycle_actions_across_daemons(make_cluster_server: MakeServer) -> None:
    """Dead letters, kick by type, pause and resume, delete: asked on one
    daemon, about jobs another one took."""
    one = await make_cluster_server()
    two = await make_cluster_server()
    master = await Peer.connect(one.master_port)
    admin = await Peer.connect(two.master_port)
    slave = await join(one.slave_port, "t")
    assert await submit(master, "d", detach=True) == {"ok": True, "id": "d"}
    assert (await slave.recv())["id"] == "d"
    assert await slave.request({"action": "fail", "error": "ERROR", "reason": "no"}) == {"ok": True}
    failed = await master.recv()
    assert (failed["error"], failed["reason"]) == ("job_error", "no")
    assert await admin.request({"action": "pause", "type": "t"}) == {"ok": True}
    assert await admin.request({"action": "kick", "type": "t"}) == {"ok": True, "kicked": 1}
    assert await submit(master, "e", detach=True) == {"ok": True, "id": "e"}
    assert await admin.request({"action": "delete", "id": "e"}) == {"ok": True, "id": "e"}
    assert await admin.request({"action": "resume", "type": "t"}) == {"ok": True}
    job = await slave.recv()
    assert (job["id"], job["attempt"]) == ("d", 2)


async def test_wsjobd_and_gloom_ports_in_cluster_mode(
    gloomd_cluster: Callable[..., list[Any]],
) -> None:
    """The websocket job service runs beside the cluster's ports."""
    import json

    from tests.support import WSJOBS
    from tests.support.wsclient import ws_client

    (daemon,) = gloomd_cluster(1, "--ws-port", "0", "--jobs-dir", str(WSJOBS))
    assert daemon.ws_port is not None
    async with ws_client(daemon.ws_port) as ws:
        await ws.send_message(json.dumps({"func": "echo.run", "ident": "c", "echo": "hi"}))
        with trio.fail_after(10):
            while True:
                frame = json.loads(await ws.get_message())
                if "result" in frame:
                    break
        assert frame["result"] == "hi"
