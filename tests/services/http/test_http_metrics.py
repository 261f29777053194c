"""/metrics: the snapshot, the collector, and the scrape end to end.

Every exposition is read back with prometheus_client's own text parser, so
what is checked is what Prometheus would ingest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from gloomd.http.metrics import (
    OTHER,
    OUTCOMES,
    HistogramSnapshot,
    MetricsSnapshot,
    TypeMetrics,
    snapshot_from_broker,
)
from gloomd.http.metrics import render as render_bytes
from gloomd.server import GloomServer
from gloomwire.codec import canonical
from tests.support.brokerkit import Kit
from tests.support.httpkit import Client, fetch, start_http
from tests.support.wire import Peer, frame, join

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by (name, sorted labels)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"duplicate series {key}"
            found[key] = sample.value
    return found


def families(text: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def by_name(found: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in found.items() if sample == name}


def render(snapshot: MetricsSnapshot) -> str:
    return render_bytes(snapshot).decode()


# ---------------------------------------------------------------- the collector


def full_snapshot() -> MetricsSnapshot:
    hist = HistogramSnapshot(bounds=(0.01, 0.1, 1.0), counts=(5, 3, 1, 2), total=9.5)
    row = TypeMetrics(
        label="resize",
        queued=4,
        running=2,
        slaves_idle=1,
        slaves_busy=2,
        delayed=3,
        waiting=1,
        dead=7,
        submitted=40,
        finished={
            "ok": 20,
            "error": 2,
            "timeout": 1,
            "crash": 0,
            "cancelled": 1,
            "halted": 0,
            "dependency": 1,
        },
        wait_seconds=hist,
        run_seconds=hist,
    )
    return MetricsSnapshot(
        types=(row,),
        totals={"submitted": 40, "completed": 20, "failed": 3, "requeued": 1, "cancelled": 1},
        waiting=1,
        connections={"master": 2, "slave": 3, "http": 1},
        uptime_s=12.5,
        build={"version": "9.9", "python": "3.11.2"},
        journal_commit_seconds=HistogramSnapshot((0.001, 0.01), (10, 2, 0), 0.03),
    )


def test_every_reference_metric_is_rendered_from_a_full_snapshot() -> None:
    text = render(full_snapshot())
    types = families(text)
    assert types == {
        "gloomd_jobs_submitted": "counter",
        "gloomd_jobs_finished": "counter",
        "gloomd_jobs": "gauge",
        "gloomd_slaves": "gauge",
        "gloomd_job_wait_seconds": "histogram",
        "gloomd_job_run_seconds": "histogram",
        "gloomd_job_events": "counter",
        "gloomd_waiting_jobs": "gauge",
        "gloomd_connections": "gauge",
        "gloomd_journal_commit_seconds": "histogram",
        "gloomd_uptime_seconds": "gauge",
        "gloomd_build_info": "gauge",
    }
    found = samples(text)
    t = (("type", "resize"),)
    assert found[("gloomd_jobs_submitted_total", t)] == 40
    assert found[("gloomd_jobs_finished_total", (("outcome", "ok"), ("type", "resize")))] == 20
    assert (
        found[("gloomd_jobs_finished_total", (("outcome", "dependency"), ("type", "resize")))] == 1
    )
    states = {dict(k)["state"]: v for k, v in by_name(found, "gloomd_jobs").items()}
    assert states == {"queued": 4, "delayed": 3, "waiting": 1, "running": 2, "dead": 7}
    slaves = {dict(k)["state"]: v for k, v in by_name(found, "gloomd_slaves").items()}
    assert slaves == {"idle": 1, "busy": 2}
    buckets = {
        dict(k)["le"]: v for k, v in by_name(found, "gloomd_job_wait_seconds_bucket").items()
    }
    assert buckets == {"0.01": 5, "0.1": 8, "1.0": 9, "+Inf": 11}
    assert found[("gloomd_job_wait_seconds_count", t)] == 11
    assert found[("gloomd_job_run_seconds_sum", t)] == 9.5
    assert found[("gloomd_journal_commit_seconds_count", ())] == 12
    assert found[("gloomd_connections", (("port", "slave"),))] == 3
    assert found[("gloomd_job_events_total", (("event", "requeued"),))] == 1
    assert found[("gloomd_waiting_jobs", ())] == 1
    assert found[("gloomd_uptime_seconds", ())] == 12.5
    assert found[("gloomd_build_info", (("python", "3.11.2"), ("version", "9.9")))] == 1


def test_figures_the_broker_does_not_keep_are_absent_not_zero() -> None:
    row = TypeMetrics(label="t", queued=1, running=0, slaves_idle=0, slaves_busy=0)
    snap = MetricsSnapshot(types=(row,), totals={}, waiting=0, connections={}, uptime_s=0.0)
    found = samples(render(snap))
    assert {dict(k)["state"] for k in by_name(found, "gloomd_jobs")} == {"queued", "running"}
    assert not by_name(found, "gloomd_jobs_submitted_total")
    assert not by_name(found, "gloomd_job_wait_seconds_bucket")
    assert not by_name(found, "gloomd_journal_commit_seconds_count")


def test_histograms_check_their_shape_and_add() -> None:
    with pytest.raises(ValueError):
        HistogramSnapshot((1.0,), (1,), 0.0)
    with pytest.raises(ValueError):
        HistogramSnapshot((1.0, 0.5), (1, 1, 1), 0.0)
    a = HistogramSnapshot((1.0,), (1, 2), 3.0)
    assert a.plus(a) == HistogramSnapshot((1.0,), (2, 4), 6.0)
    with pytest.raises(ValueError):
        a.plus(HistogramSnapshot((2.0,), (1, 2), 3.0))


def test_other_sums_every_figure_including_future_ones() -> None:
    hist = HistogramSnapshot((1.0,), (1, 1), 2.0)
    a = TypeMetrics("a", 1, 2, 3, 4, 5, 6, 7, 8, {"ok": 1}, hist, hist)
    b = TypeMetrics("b", 10, 20, 30, 40, 50, 60, 70, 80, {"ok": 2, "error": 1}, hist, hist)
    total = a.plus(b, OTHER)
    assert total == TypeMetrics(
        OTHER, 11, 22, 33, 44, 55, 66, 77, 88, {"ok": 3, "error": 1},
        HistogramSnapshot((1.0,), (2, 2), 4.0), HistogramSnapshot((1.0,), (2, 2), 4.0),
    )  # fmt: skip
    assert a.plus(TypeMetrics("c"), OTHER).submitted is None  # unknown on one side: unknown


# ---------------------------------------------------------------- snapshot of a broker


def test_snapshot_of_a_broker_matches_its_stats() -> None:
    kit = Kit()
    master = kit.master()
    for i in range(3):
        kit.submit(master, i, "resize")
    kit.submit(master, 10, {"k": [1, 2]})
    kit.submit(master, 11, 7, after=[0])  # waits for job 0
    kit.slave("email")
    busy = kit.slave("resize")  # takes job 0
    assert kit.out(busy)[0]["id"] == 0
    kit.clock.now = 5.0
    snap = snapshot_from_broker(kit.broker, now=kit.clock(), max_types=1000, connections={"x": 1})
    stats = kit.send(master, {"action": "stats"})[0]["stats"]
    rows = {row.label: row for row in snap.types}
    assert set(rows) == {"resize", '{"k":[1,2]}', "email", "7"}
    for entry in stats["types"]:
        job_type = entry["type"]
        row = rows[job_type if isinstance(job_type, str) else canonical(job_type).decode()]
        assert (row.queued, row.running) == (entry["queued"], entry["running"])
        assert (row.delayed, row.waiting, row.dead) == (
            entry["delayed"],
            entry["waiting"],
            entry["dead"],
        )
        assert (row.slaves_idle, row.slaves_idle + row.slaves_busy) == (
            entry["idle"],
            entry["slaves"],
        )
    assert rows["resize"].slaves_busy == 1
    assert rows["7"].waiting == 1 and rows["resize"].submitted == 3
    assert rows["resize"].wait_seconds is not None and rows["resize"].wait_seconds.count == 1
    assert snap.totals == stats["totals"]
    assert snap.waiting == stats["waiting"] == 1
    assert snap.uptime_s == stats["uptime_s"] == 5.0
    assert snap.connections == {"x": 1}


def test_type_cardinality_is_capped_with_5000_types() -> None:
    kit = Kit()
    master = kit.master()
    for i in range(5000):
        kit.submit(master, i, f"type-{i}")
    kit.submit(master, "x", OTHER)  # a type that is literally "_other" joins the sum
    snap = snapshot_from_broker(kit.broker, now=0.0, max_types=1000, connections={})
    labels = [row.label for row in snap.types]
    assert len(labels) == 1001 and len(set(labels)) == 1001
    assert labels[:1000] == [f"type-{i}" for i in range(1000)]
    other = snap.types[-1]
    assert other.label == OTHER and other.queued == 4001
    found = samples(render(snap))
    queued = by_name(found, "gloomd_jobs")
    assert len({dict(k)["type"] for k in queued}) == 1001
    assert sum(queued.values()) == 5001


# ---------------------------------------------------------------- end to end


async def scrape(port: int, **kwargs: Any) -> Samples:
    reply = await fetch(port, "GET", "/metrics", **kwargs)
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    return samples(reply.body.decode())


def jobs_gauge(found: Samples) -> dict[tuple[str, str], float]:
    return {
        (dict(k)["type"], dict(k)["state"]): v for k, v in by_name(found, "gloomd_jobs").items()
    }


def slaves_gauge(found: Samples) -> dict[tuple[str, str], float]:
    return {
        (dict(k)["type"], dict(k)["state"]): v for k, v in by_name(found, "gloomd_slaves").items()
    }


async def submit_all(master: Peer, jobs: Iterable[tuple[Any, Any]]) -> None:
    for job_id, job_type in jobs:
        assert await master.request(
            {"action": "submit", "id": job_id, "type": job_type, "body": None}
        ) == {"ok": True, "id": job_id}


async def test_metrics_equal_stats_at_the_same_moment(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    http = await start_http(nursery, gloomd_server)
    master = await Peer.connect(gloomd_server.master_port)
    await submit_all(master, [(1, "resize"), (2, "resize"), (3, "resize"), (4, "email"), (5, [1])])
    slave = await join(gloomd_server.slave_port, "email")
    assert (await slave.recv())["id"] == 4
    await join(gloomd_server.slave_port, "resize")  # takes job 1
    idle = await join(gloomd_server.slave_port, "spare")
    assert idle is not None
    # Nothing moves now: a scrape and a stats call see the same moment.
    found = await scrape(http.port)
    stats = (await master.request({"action": "stats"}))["stats"]
    expected_jobs: dict[tuple[str, str], float] = {}
    expected_slaves: dict[tuple[str, str], float] = {}
    for row in stats["types"]:
        label = row["type"] if isinstance(row["type"], str) else "[1]"
        for state in ("queued", "delayed", "waiting", "running", "dead"):
            expected_jobs[(label, state)] = row[state]
        expected_slaves[(label, "idle")] = row["idle"]
        expected_slaves[(label, "busy")] = row["slaves"] - row["idle"]
    assert jobs_gauge(found) == expected_jobs
    assert slaves_gauge(found) == expected_slaves
    assert expected_jobs[("resize", "queued")] == 2 and expected_jobs[("[1]", "queued")] == 1
    submitted = {
        dict(k)["type"]: v for k, v in by_name(found, "gloomd_jobs_submitted_total").items()
    }
    assert submitted == {"resize": 3, "email": 1, "[1]": 1, "spare": 0}
    finished = by_name(found, "gloomd_jobs_finished_total")
    assert {dict(k)["outcome"] for k in finished} == set(OUTCOMES) and sum(finished.values()) == 0
    events = {dict(k)["event"]: v for k, v in by_name(found, "gloomd_job_events_total").items()}
    assert events == stats["totals"]
    assert found[("gloomd_waiting_jobs", ())] == stats["waiting"]
    connections = {dict(k)["port"]: v for k, v in by_name(found, "gloomd_connections").items()}
    assert connections == {
        "master": stats["connections"]["masters"],
        "slave": stats["connections"]["slaves"],
        "http": 1,  # the scrape itself
    }
    assert connections["master"] == 1  # the HTTP service's admin seat is not a connection
    assert found[("gloomd_uptime_seconds", ())] >= stats["uptime_s"] - 1.0
    build = by_name(found, "gloomd_build_info")
    assert len(build) == 1 and dict(next(iter(build)))["version"]


async def test_counters_only_grow_while_jobs_flow(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    http = await start_http(nursery, gloomd_server)
    total = 600

    async def work() -> None:
        slave = await join(gloomd_server.slave_port, "w")
        for _ in range(total):
            job = await slave.recv()
            await slave.send({"action": "respond", "body": job["id"]})
            assert await slave.recv() == {"ok": True}

    nursery.start_soon(work)
    master = await Peer.connect(gloomd_server.master_port)
    done = trio.Event()

    async def feed() -> None:
        for i in range(total):
            await master.send({"action": "submit", "id": i, "type": "w", "body": None})
        got = 0
        while got < total:
            frame = await master.recv()
            got += "body" in frame
        done.set()

    nursery.start_soon(feed)
    previous: dict[str, float] = {}
    scrapes = 0
    with trio.fail_after(30):
        while True:
            finished = done.is_set()
            found = await scrape(http.port)
            events = {
                dict(k)["event"]: v for k, v in by_name(found, "gloomd_job_events_total").items()
            }
            for name, value in events.items():
                assert value >= previous.get(name, 0), (name, value, previous)
            previous = events
            scrapes += 1
            if finished:
                break
    assert previous["completed"] == previous["submitted"] == total
    assert scrapes >= 2


async def test_cardinality_cap_end_to_end(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    http = await start_http(nursery, gloomd_server, metrics_max_types=1000)
    master = await Peer.connect(gloomd_server.master_port)
    count = 5000
    payload = b"".join(
        frame({"action": "submit", "id": i, "type": f"t{i}", "body": None}) for i in range(count)
    )
    await master.send_raw(payload)
    for _ in range(count):
        assert (await master.recv())["ok"] is True
    found = await scrape(http.port)
    queued = {t: v for (t, state), v in jobs_gauge(found).items() if state == "queued"}
    assert len(queued) == 1001
    assert queued[OTHER] == 4000
    assert sum(queued.values()) == count


async def test_metrics_reuse_one_keep_alive_connection(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    http = await start_http(nursery, gloomd_server)
    client = await Client.open(http.port)
    try:
        for _ in range(3):
            reply = await client.request("GET", "/metrics")
            assert reply.status == 200
        assert http.open_connections == 1
    finally:
        await client.aclose()
