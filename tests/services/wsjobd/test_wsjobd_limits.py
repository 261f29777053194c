"""The websocket service under issue 18's attacks: JSON-only frames, caps, timeouts, memory.

Like test_wsjobd.py, the service runs in the test's own trio run on 127.0.0.1,
here with small caps and short timeouts so that each limit is reached in a few
connections; the last tests start a real gloomd under a lowered RLIMIT_NOFILE.
Waiting is on events, closes and ``wait_all_tasks_blocked``, never on sleeps;
the only clocks are the timeouts under test, set to a fraction of a second.
"""

from __future__ import annotations

import gc
import json
import logging
import resource
import socket
import struct
import subprocess
import sys
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection

from gloomd.fdlimit import DescriptorBudgetError, fit_connection_caps
from gloomd.wsjobd import WsJobService
from gloomd.wsjobd.limits import WsLimits
from tests.support.daemon import spawn_gloomd

from .test_wsjobd import (
    HOST,
    JOBS_DIR,
    NEVER,
    Served,
    closed,
    new_gate,
    receive,
    send,
    wait_started,
)

# A 19+ digit integer sends a payload down the codec's exact (stdlib) path.
LONG_INT = "1234567890123456789012"
SURROGATE_PAYLOAD = '{{"ident": {}, "func": "echo.run", "echo": "\\ud800"}}'.format(LONG_INT)
INFINITE_PAYLOAD = '{{"ident": {}, "func": "echo.run", "echo": 1e400}}'.format(LONG_INT)

pytestmark = pytest.mark.timeout(60)

StartService = Callable[..., Awaitable[Served]]


@pytest.fixture
def start_service(nursery: trio.Nursery) -> StartService:
    """Start a WsJobService with the given WsLimits fields (and token) on port 0."""

    async def start(token: str | None = None, **limits: Any) -> Served:
        service = WsJobService(JOBS_DIR, token=token, limits=WsLimits(**limits))
        port = await nursery.start(service.run, HOST, 0)
        gates = await trio.to_thread.run_sync(service.jobs.load_module, "gates")
        return Served(service, port, gates)

    return start


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def strict_json(text: str | bytes) -> Any:
    """Decode a frame as a strict client would: valid UTF-8, no NaN/Infinity."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)


async def strict_frames_until_close(ws: WebSocketConnection) -> tuple[list[Any], int | None]:
    frames = []
    with trio.fail_after(10):
        while True:
            try:
                frames.append(strict_json(await ws.get_message()))
            except ConnectionClosed as exc:
                assert exc.reason is not None
                return frames, exc.reason.code


# ------------------------------------------------------------------ JSON out, JSON in


async def test_reports_are_json_whatever_the_job_writes(start_service: StartService) -> None:
    # Before: the report went out with Infinity and NaN in it, and the lone
    # surrogate made the send fail, so the listener was dropped without a close.
    served = await start_service()
    async with served.connect() as ws:
        await send(
            ws, {"func": "awkward.values", "ident": "awkward", "progress": {"interval": NEVER}}
        )
        frames, code = await strict_frames_until_close(ws)
    assert code == 1000
    result = frames[-1]["result"]
    assert (result["inf"], result["ninf"], result["nan"], result["big"]) == (None, None, None, None)
    assert result["lone"] == "a\ufffdb" and result["pair"] == "\U0001f600"
    assert result["keys"] == {"1": "one", "null": "none", "(1, 2)": "tuple"}
    assert result["set"] == "{1}" and result["cycle"] == {"name": "cycle", "self": None}
    assert result["fine"] == [1, 2.5, "ü"]


async def test_a_non_finite_bare_value_is_sent_as_null(start_service: StartService) -> None:
    served = await start_service()
    async with served.connect() as ws:
        await send(
            ws,
            {
                "func": "awkward.infinite_progress",
                "ident": "p",
                "progress": {"interval": NEVER, "key": "progress"},
            },
        )
        frames, code = await strict_frames_until_close(ws)
    assert code == 1000 and frames[-1] is None


@pytest.mark.parametrize(
    "payload", [SURROGATE_PAYLOAD, INFINITE_PAYLOAD], ids=["lone surrogate", "1e400"]
)
async def test_message_the_codec_refuses_is_invalid_json(
    start_service: StartService, payload: str
) -> None:
    # A 19+ digit ident sends the message down the codec's exact path, which
    # used to accept a lone surrogate and read 1e400 as infinity.
    served = await start_service()
    async with served.connect() as ws:
        await send(ws, payload)
        reply = strict_json(await ws.get_message())
        assert (await closed(ws)).code == 1000
    assert reply["err"] == "InvalidMessageError"
    assert reply["val"][0].startswith("message is not a valid json string: ")
    assert served.service.running_jobs == 0


# ------------------------------------------------------------------ connections


async def _raw_connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream(HOST, port)


async def test_connections_over_the_cap_get_503_and_closing_one_frees_its_slot(
    start_service: StartService,
) -> None:
    served = await start_service(max_connections=2, idle_timeout=NEVER)
    # A connection counts from accept on: one still in its handshake takes a slot.
    raw = await _raw_connect(served.port)
    async with served.connect() as first:
        await trio.testing.wait_all_tasks_blocked()
        assert served.service.open_connections == 2
        with pytest.raises(ConnectionRejected) as caught:
            async with served.connect():
                pytest.fail("a third connection should have been refused")
        assert caught.value.status_code == 503
        assert caught.value.body == b"too many connections\n"
        await raw.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert served.service.open_connections == 1
        async with served.connect() as second:
            await send(second, {"func": "echo.run", "ident": "second", "echo": "ok"})
            frames, _ = await strict_frames_until_close(second)
            assert frames[-1]["result"] == "ok"
        await send(first, {"func": "echo.run", "ident": "first", "echo": "still here"})
        frames, _ = await strict_frames_until_close(first)
        assert frames[-1]["result"] == "still here"
    await trio.testing.wait_all_tasks_blocked()
    assert served.service.open_connections == 0


async def test_a_connection_without_a_handshake_is_closed_after_the_handshake_timeout(
    start_service: StartService,
) -> None:
    served = await start_service(handshake_timeout=0.2)
    raw = await _raw_connect(served.port)
    with trio.fail_after(10):
        assert await raw.receive_some(100) == b""  # closed by the server, nothing sent
    await raw.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert served.service.open_connections == 0


async def test_a_connection_that_sends_nothing_gets_idle_timeout_then_close(
    start_service: StartService,
) -> None:
    served = await start_service(idle_timeout=0.2)
    async with served.connect() as ws:
        reply = strict_json(await ws.get_message())
        assert (await closed(ws)).code == 1000
    assert reply == {"err": "IdleTimeoutError", "val": ["no job description within 0.2 s"]}
    await trio.testing.wait_all_tasks_blocked()
    assert (served.service.open_connections, served.service.client_number) == (0, 0)


async def test_the_idle_timeout_ends_when_the_description_arrives(
    start_service: StartService, gate_names: list[str]
) -> None:
    # A listener waiting for its job's reports sends nothing more: not idle.
    served = await start_service(idle_timeout=0.2)
    gate = new_gate(gate_names)
    async with served.connect() as ws:
        await send(
            ws,
            {"func": "gates.blocking", "ident": gate, "gate": gate, "progress": {"interval": 0.3}},
        )
        assert "err" not in await receive(ws)
        second = await receive(ws)  # a report 0.3 s later: the connection outlived 0.2 s
        assert "err" not in second
        served.gates.release(gate)


async def test_oversized_message_is_closed_1009(start_service: StartService) -> None:
    served = await start_service(max_message=1000)
    async with served.connect() as ws:
        await send(ws, {"func": "echo.run", "ident": "big", "echo": "x" * 2000})
        assert (await closed(ws)).code == 1009
    assert served.service.running_jobs == 0


# ------------------------------------------------------------------ jobs


async def test_jobs_over_the_cap_are_refused_but_attaching_still_works(
    start_service: StartService, gate_names: list[str]
) -> None:
    served = await start_service(max_jobs=2)
    gates = [new_gate(gate_names) for _ in range(2)]
    async with served.connect() as one, served.connect() as two:
        for ws, gate in ((one, gates[0]), (two, gates[1])):
            await send(
                ws,
                {
                    "func": "gates.blocking",
                    "ident": gate,
                    "gate": gate,
                    "progress": {"interval": NEVER},
                },
            )
            await receive(ws)
        assert served.service.running_jobs == 2

        async with served.connect() as third:
            await send(third, {"func": "echo.run", "ident": "third"})
            reply = strict_json(await third.get_message())
            assert (await closed(third)).code == 1000
        assert reply == {
            "err": "SystemOverloadError",
            "val": ["running_jobs: 2 is at the limit: 2"],
        }

        async with served.connect() as attaching:  # starts nothing: allowed at the cap
            await send(
                attaching,
                {"func": "gates.blocking", "ident": gates[0], "progress": {"interval": NEVER}},
            )
            assert "err" not in await receive(attaching)

        served.gates.release(gates[0])
        while (await receive(one)).get("state") != "released":
            pass
        assert (await closed(one)).code == 1000
    await trio.testing.wait_all_tasks_blocked()
    assert served.service.running_jobs == 1
    async with served.connect() as fourth:
        await send(fourth, {"func": "echo.run", "ident": "fourth", "echo": "room again"})
        frames, code = await strict_frames_until_close(fourth)
        assert code == 1000 and frames[-1]["result"] == "room again"
    served.gates.release(gates[1])


@pytest.mark.parametrize("fail", [False, True], ids=["returns", "raises"])
async def test_a_finished_job_of_a_client_that_hung_up_is_freed_without_the_collector(
    start_service: StartService, gate_names: list[str], caplog: pytest.LogCaptureFixture, fail: bool
) -> None:
    # Before: job -> job.progress_available -> job (and, when the job raised,
    # job.err -> traceback -> frames -> job) were cycles, so the client's whole
    # description stayed in memory until a full collection: every 300 s in
    # gloomd (--gc-interval).  600 such 1 MB jobs kept the daemon at 708 MB.
    caplog.set_level(logging.WARNING, logger="gloomd.wsjobd")  # no record holding a traceback
    served = await start_service()
    gate = new_gate(gate_names)
    async with served.connect() as ws:
        await send(
            ws,
            {
                "func": "gates.blocking",
                "ident": gate,
                "gate": gate,
                "fail": fail,
                "pad": "x" * 100_000,
            },
        )
        await receive(ws)
    await wait_started(served, gate)
    job = served.service.running_job(gate)
    assert job is not None
    ref = weakref.ref(job)
    finished = job.finished
    del job
    gc.disable()
    try:
        served.gates.release(gate)
        with trio.fail_after(10):
            await finished.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert ref() is None
    finally:
        gc.enable()


# ------------------------------------------------------------------ logging


async def test_connection_events_are_rate_limited(
    start_service: StartService, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: one line per refused connection, as many as a client cared to open.
    served = await start_service(token="secret", max_connections=1)
    caplog.set_level(logging.INFO, logger="gloomd.wsjobd")
    for _ in range(30):
        with pytest.raises(ConnectionRejected):
            async with served.connect("/?token=wrong"):
                pass
    raw = await _raw_connect(served.port)  # takes the only slot
    await trio.testing.wait_all_tasks_blocked()
    for _ in range(30):
        with pytest.raises(ConnectionRejected):
            async with served.connect():
                pass
    await raw.aclose()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("event=wsjobd_unauthorized" in line for line in lines) == 10
    assert sum("event=wsjobd_too_many_connections" in line for line in lines) == 10


# ------------------------------------------------------------------ the descriptor budget


def test_connection_caps_fit_the_descriptor_limit() -> None:
    # Room enough: both caps stand.
    assert fit_connection_caps(20_000, gloom=10_000, ws=1000, ws_jobs=256, open_now=20) == (
        10_000,
        1000,
    )
    # Not enough: the websocket service gets a quarter of the room, the Gloom ports the rest.
    room = 1024 - 20 - 64 - 256
    assert fit_connection_caps(1024, gloom=10_000, ws=1000, ws_jobs=256, open_now=20) == (
        room - room // 4,
        room // 4,
    )
    # A small request keeps what it asked for.
    assert fit_connection_caps(1024, gloom=10_000, ws=50, ws_jobs=256, open_now=20) == (
        room - 50,
        50,
    )
    # Without the websocket service the Gloom ports get all the room.
    assert fit_connection_caps(1024, gloom=10_000, open_now=20) == (1024 - 20 - 64, 0)
    with pytest.raises(DescriptorBudgetError, match=r"RLIMIT_NOFILE 1024 - 20 open - 64 reserved"):
        fit_connection_caps(1024, gloom=10_000, ws=1000, ws_jobs=1000, open_now=20)


def _limit_descriptors(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def test_gloomd_fits_its_caps_to_a_small_descriptor_limit() -> None:
    # The defaults (10,000 Gloom connections, 1,000 websocket) cannot fit 1,024
    # descriptors: both caps are lowered, logged, and gloomd serves.
    args = ("--ws-port", "0", "--jobs-dir", str(JOBS_DIR))
    with spawn_gloomd(*args, preexec_fn=_limit_descriptors(1024), capture_logs=True) as daemon:
        assert "error" not in _gloom_stats(daemon.master_port)
        daemon.stop()
        assert daemon.proc.stderr is not None
        log = daemon.proc.stderr.read().decode()
    assert "event=cap_lowered flag=--max-connections requested=10000" in log
    assert "event=cap_lowered flag=--ws-max-connections requested=1000" in log


def test_gloomd_refuses_to_start_without_descriptor_room() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gloomd", "--master-port", "0", "--slave-port", "0",
         "--ws-port", "0", "--jobs-dir", str(JOBS_DIR), "--ws-max-jobs", "1000"],
        preexec_fn=_limit_descriptors(1024), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "gloomd ready" not in done.stdout
    assert "event=fatal error=no descriptors left for connections" in done.stderr
    assert "1000 (--ws-max-jobs)" in done.stderr


def _gloom_stats(port: int) -> dict[str, Any]:
    with socket.create_connection((HOST, port), timeout=10) as sock:
        body = b'{"action":"stats"}'
        sock.sendall(struct.pack(">I", len(body)) + body)
        head = sock.recv(4, socket.MSG_WAITALL)
        (size,) = struct.unpack(">I", head)
        reply: dict[str, Any] = json.loads(sock.recv(size, socket.MSG_WAITALL))
        return reply


async def test_idle_websockets_cannot_starve_the_gloom_ports_of_descriptors() -> None:
    # Before: 1,012 idle websockets took every descriptor of a 1,024 limit and a
    # Gloom master's connection hung unanswered.  Now both caps are fitted to the
    # limit: the websocket service gets a quarter of 1024 - open - 64 - 200.
    args = ("--ws-port", "0", "--jobs-dir", str(JOBS_DIR), "--max-connections", "700",
            "--ws-max-jobs", "200", "--ws-idle-timeout", str(NEVER))  # fmt: skip
    with spawn_gloomd(*args, preexec_fn=_limit_descriptors(1024)) as daemon:
        assert daemon.ws_port is not None
        daemon_process = psutil.Process(daemon.proc.pid)
        opened: list[trio.SocketStream] = []
        accepted = refused = 0
        try:
            async with trio.open_nursery() as nursery:
                release = trio.Event()

                async def hold(task_status: trio.TaskStatus[bool]) -> None:
                    stream = await trio.open_tcp_stream(HOST, daemon.ws_port)  # type: ignore[arg-type]
                    opened.append(stream)
                    try:
                        from trio_websocket import wrap_client_stream

                        async with trio.open_nursery() as inner:
                            await wrap_client_stream(inner, stream, HOST, "/")
                            task_status.started(True)
                            await release.wait()
                            inner.cancel_scope.cancel()
                    except BaseExceptionGroup as group:
                        rejected = group.subgroup(ConnectionRejected)
                        assert rejected is not None, group
                        assert isinstance(rejected.exceptions[0], ConnectionRejected)
                        assert rejected.exceptions[0].status_code == 503
                        task_status.started(False)

                for _ in range(250):
                    if await nursery.start(hold):
                        accepted += 1
                    else:
                        refused += 1
                assert 0 < accepted < 250 and refused == 250 - accepted
                assert accepted <= (1024 - 64 - 200) // 4
                # The Gloom port still answers, with every websocket slot taken.
                stats = await trio.to_thread.run_sync(_gloom_stats, daemon.master_port)
                assert isinstance(stats, dict) and "error" not in stats
                assert daemon_process.num_fds() < 1024 // 2
                release.set()
        finally:
            for stream in opened:
                await stream.aclose()
