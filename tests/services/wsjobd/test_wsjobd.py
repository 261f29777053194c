"""The websocket job service end to end: real sockets on 127.0.0.1, real trio-websocket clients.

The service runs in the test's own trio run (``WsJobService.run`` on port 0) so a
test can reach the job modules it loaded and hold jobs open with the gates in
``tests/support/wsjobs/gates.py``; nothing waits on the clock to learn about state.  The
last test starts a real ``gloomd --ws-port 0`` process.  Job functions live in
``tests/support/wsjobs``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import psutil
import pytest
import trio
import trio.testing
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from gloomd.wsjobd import WsJobService
from tests.support import WSJOBS
from tests.support.daemon import spawn_gloomd

pytestmark = pytest.mark.timeout(30)

JOBS_DIR = WSJOBS
HOST = "127.0.0.1"
# Long enough that no periodic report ever fires by accident during a test that
# is waiting for an event-driven one.
NEVER = 600


@asynccontextmanager
async def ws_client(port: int, resource: str = "/") -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client connection that always closes its socket.

    trio-websocket's own ``open_websocket`` (0.12) waits for the server's TCP
    close, as the RFC asks, and then never closes its own socket: every
    conversation the server ends (which this service always does) would leak
    one, and ``filterwarnings = error`` turns the ResourceWarning into a failure.
    So we own the TCP stream and close it ourselves.
    """
    stream = await trio.open_tcp_stream(HOST, port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, HOST, resource)
            try:
                yield ws
            finally:
                with trio.move_on_after(5):
                    await ws.aclose()
                await stream.aclose()  # also ends the reader task
    except BaseExceptionGroup as group:
        # The nursery wraps the body's exception, or the reader's
        # ConnectionRejected; give the test the bare exception.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        await stream.aclose()


@dataclass
class Served:
    service: WsJobService
    port: int
    gates: ModuleType

    def connect(self, resource: str = "/") -> Any:
        return ws_client(self.port, resource)


@pytest.fixture
async def served(nursery: trio.Nursery) -> AsyncIterator[Served]:
    service = WsJobService(JOBS_DIR)
    port = await nursery.start(service.run, HOST, 0)
    gates = await trio.to_thread.run_sync(service.jobs.load_module, "gates")
    yield Served(service, port, gates)


def new_gate(gate_names: list[str]) -> str:
    name = f"gate-{uuid.uuid4().hex}"
    gate_names.append(name)
    return name


async def send(ws: WebSocketConnection, message: Any) -> None:
    await ws.send_message(message if isinstance(message, str) else json.dumps(message))


async def receive(ws: WebSocketConnection) -> Any:
    with trio.fail_after(10):
        return json.loads(await ws.get_message())


async def closed(ws: WebSocketConnection) -> CloseReason:
    """Expect the server to close now, with no frame before the close."""
    with trio.fail_after(10):
        with pytest.raises(ConnectionClosed) as caught:
            extra = await ws.get_message()
            pytest.fail(f"expected the close, got a frame: {extra!r}")
    reason = caught.value.reason
    assert reason is not None
    return reason


async def wait_started(served: Served, gate: str) -> None:
    # A threading.Event, so wait for it in a thread; the job may be a thread or a task.
    event = served.gates.started(gate)
    with trio.fail_after(10):
        assert await trio.to_thread.run_sync(event.wait, 10)


async def until_closed(ws: WebSocketConnection) -> tuple[list[Any], CloseReason]:
    """Every frame up to the server's close, and the close reason."""
    frames = []
    with trio.fail_after(10):
        while True:
            try:
                frames.append(json.loads(await ws.get_message()))
            except ConnectionClosed as exc:
                assert exc.reason is not None
                return frames, exc.reason


async def run_job(served: Served, message: Any) -> tuple[list[Any], CloseReason]:
    """Send a job that ends by itself; return every frame and the close reason."""
    async with served.connect() as ws:
        await send(ws, message)
        return await until_closed(ws)


async def exchange(served: Served, message: Any) -> tuple[Any, CloseReason]:
    """Send one job description; return the single reply and how the server closed."""
    async with served.connect() as ws:
        await send(ws, message)
        reply = await receive(ws)
        reason = await closed(ws)
    return reply, reason


# ------------------------------------------------------------------ refused requests

TOTAL_MEMORY = psutil.virtual_memory().total
OK = {"func": "echo.run", "ident": "i"}

# (case id, message, error name, exact message or None when the text is checked
# by a prefix) in the reference's processing order.
REFUSALS: list[tuple[str, Any, str, str]] = [
    # 1. JSON
    ("not json", "foo", "InvalidMessageError", "message is not a valid json string: foo"),
    (
        "truncated json",
        '{"ident": 1',
        "InvalidMessageError",
        'message is not a valid json string: {"ident": 1',
    ),
    (
        "NaN",
        '{"ident": NaN, "func": "echo.run"}',
        "InvalidMessageError",
        'message is not a valid json string: {"ident": NaN, "func": "echo.run"}',
    ),
    # 2. object
    ("string", '"foo"', "InvalidMessageError", "message is not dictionary"),
    ("list", "[1, 2]", "InvalidMessageError", "message is not dictionary"),
    ("number", "3", "InvalidMessageError", "message is not dictionary"),
    ("null", "null", "InvalidMessageError", "message is not dictionary"),
    # 3. ident, checked before func: {} reports the ident
    ("empty object", {}, "InvalidMessageError", "'ident' is not in message"),
    ("func only", {"func": "echo.run"}, "InvalidMessageError", "'ident' is not in message"),
    (
        "ident list",
        {"ident": [1], "func": "echo.run"},
        "InvalidMessageError",
        "ident is not a string, number, boolean or null",
    ),
    (
        "ident object",
        {"ident": {"a": 1}, "func": "echo.run"},
        "InvalidMessageError",
        "ident is not a string, number, boolean or null",
    ),
    # 4. func
    ("no func", {"ident": "bar"}, "InvalidMessageError", "'func' is not in message"),
    (
        "no func, bad rest",
        {"ident": "bar", "progress": 0, "jobs_dir": "x"},
        "InvalidMessageError",
        "'func' is not in message",
    ),
    ("func number", {"ident": 1, "func": 5}, "InvalidMessageError", "func is not a string"),
    ("func null", {"ident": 1, "func": None}, "InvalidMessageError", "func is not a string"),
    # 5. the other fields' types, in order: progress ...
    (
        "progress 0",
        {**OK, "progress": 0},
        "InvalidProgressError",
        "the progress in message is not a dictionary",
    ),
    (
        "progress true",
        {**OK, "progress": True},
        "InvalidProgressError",
        "the progress in message is not a dictionary",
    ),
    (
        "progress list",
        {**OK, "progress": []},
        "InvalidProgressError",
        "the progress in message is not a dictionary",
    ),
    (
        "progress string",
        {**OK, "progress": "fast"},
        "InvalidProgressError",
        "the progress in message is not a dictionary",
    ),
    (
        "interval 0",
        {**OK, "progress": {"interval": 0}},
        "InvalidProgressError",
        "progress interval is not a number greater than 0",
    ),
    (
        "interval negative",
        {**OK, "progress": {"interval": -1}},
        "InvalidProgressError",
        "progress interval is not a number greater than 0",
    ),
    (
        "interval string",
        {**OK, "progress": {"interval": "5"}},
        "InvalidProgressError",
        "progress interval is not a number greater than 0",
    ),
    (
        "interval bool",
        {**OK, "progress": {"interval": True}},
        "InvalidProgressError",
        "progress interval is not a number greater than 0",
    ),
    (
        "interval null",
        {**OK, "progress": {"interval": None}},
        "InvalidProgressError",
        "progress interval is not a number greater than 0",
    ),
    (
        "key number",
        {**OK, "progress": {"key": 5}},
        "InvalidProgressError",
        "progress key is not a string",
    ),
    (
        "progress before check_load",
        {**OK, "progress": 1, "check_load": 1},
        "InvalidProgressError",
        "the progress in message is not a dictionary",
    ),
    # ... check_load ...
    (
        "check_load list",
        {**OK, "check_load": []},
        "InvalidMessageError",
        "check_load is not a dictionary",
    ),
    (
        "check_load true",
        {**OK, "check_load": True},
        "InvalidMessageError",
        "check_load is not a dictionary",
    ),
    (
        "mem threshold string",
        {**OK, "check_load": {"mem_low_threshold": "foo"}},
        "InvalidMessageError",
        "mem_low_threshold is not a number",
    ),
    (
        "cpu threshold null",
        {**OK, "check_load": {"cpu_low_threshold": None}},
        "InvalidMessageError",
        "cpu_low_threshold is not a number",
    ),
    (
        "clients threshold object",
        {**OK, "check_load": {"max_client_number": {}}},
        "InvalidMessageError",
        "max_client_number is not a number",
    ),
    (
        "threshold bool",
        {**OK, "check_load": {"max_client_number": True}},
        "InvalidMessageError",
        "max_client_number is not a number",
    ),
    (
        "threshold overflowing",
        '{"func": "echo.run", "ident": 1, "check_load": {"mem_low_threshold": 1e999}}',
        "InvalidMessageError",
        "message is not a valid json string: ",
    ),
    # A 19-digit ident takes the codec's exact path: 1e999 is invalid JSON there too.
    (
        "threshold infinite",
        '{"func": "echo.run", "ident": 1234567890123456789012,'
        ' "check_load": {"mem_low_threshold": 1e999}}',
        "InvalidMessageError",
        "message is not a valid json string: ",
    ),
    (
        "type error before overload",
        {**OK, "check_load": {"mem_low_threshold": TOTAL_MEMORY * 2, "cpu_low_threshold": "x"}},
        "InvalidMessageError",
        "cpu_low_threshold is not a number",
    ),
    # ... report_system_load ...
    (
        "report_system_load 1",
        {**OK, "report_system_load": 1},
        "InvalidMessageError",
        "report_system_load is not a boolean",
    ),
    (
        "report_system_load string",
        {**OK, "report_system_load": "true"},
        "InvalidMessageError",
        "report_system_load is not a boolean",
    ),
    # ... cpu_sample_interval ...
    (
        "cpu interval string",
        {**OK, "cpu_sample_interval": "foo"},
        "InvalidMessageError",
        "cpu_sample_interval is not a number",
    ),
    (
        "cpu interval null",
        {**OK, "cpu_sample_interval": None},
        "InvalidMessageError",
        "cpu_sample_interval is not a number",
    ),
    (
        "cpu interval bool",
        {**OK, "cpu_sample_interval": True},
        "InvalidMessageError",
        "cpu_sample_interval is not a number",
    ),
    (
        "cpu interval negative",
        {**OK, "cpu_sample_interval": -0.1},
        "InvalidMessageError",
        "cpu_sample_interval is not between 0 and 10",
    ),
    (
        "cpu interval too long",
        {**OK, "cpu_sample_interval": 10.5},
        "InvalidMessageError",
        "cpu_sample_interval is not between 0 and 10",
    ),
    # ... and no jobs_dir, whatever its value
    (
        "jobs_dir string",
        {**OK, "jobs_dir": "/tmp"},
        "InvalidMessageError",
        "jobs_dir is set by the server",
    ),
    (
        "jobs_dir null",
        {**OK, "jobs_dir": None},
        "InvalidMessageError",
        "jobs_dir is set by the server",
    ),
    (
        "jobs_dir parent",
        {**OK, "jobs_dir": "../.."},
        "InvalidMessageError",
        "jobs_dir is set by the server",
    ),
    (
        "jobs_dir before overload",
        {**OK, "jobs_dir": "jobs", "check_load": {"mem_low_threshold": TOTAL_MEMORY * 2}},
        "InvalidMessageError",
        "jobs_dir is set by the server",
    ),
    # 6. load check, before loading the function
    (
        "overload before loading",
        {"ident": 1, "func": "no_such_module.run", "check_load": {"cpu_low_threshold": 100.1}},
        "SystemOverloadError",
        "cpu_idle_percent: ",
    ),
    # 7. loading
    (
        "missing module",
        {"ident": 1, "func": "no_such_module.run"},
        "LoadingError",
        "failed to import jobs.no_such_module: ModuleNotFoundError",
    ),
    (
        "missing function",
        {"ident": 1, "func": "echo.nothing"},
        "LoadingError",
        "function not found: 'nothing'",
    ),
    (
        "missing function in package",
        {"ident": 1, "func": "nothing"},
        "LoadingError",
        "function not found: 'nothing'",
    ),
    (
        "not a function",
        {"ident": 1, "func": "answer"},
        "LoadingError",
        "jobs.answer is not a function",
    ),
    (
        "generator function",
        {"ident": 1, "func": "numbers"},
        "LoadingError",
        "jobs.numbers is not a function",
    ),
    (
        "module is not a function",
        {"ident": 1, "func": "sub.deep"},
        "LoadingError",
        "function not found: 'deep'",
    ),
    (
        "import fails",
        {"ident": 1, "func": "broken_import.run"},
        "LoadingError",
        "failed to import jobs.broken_import: ModuleNotFoundError",
    ),
    (
        "import raises",
        {"ident": 1, "func": "raising_import.run"},
        "LoadingError",
        "failed to import jobs.raising_import: RuntimeError('refusing to be imported')",
    ),
]


def _check_refusal(reply: Any, name: str, text: str) -> None:
    assert set(reply) == {"err", "val"}, reply
    assert reply["err"] == name, reply
    assert isinstance(reply["val"], list) and len(reply["val"]) == 1, reply
    assert reply["val"][0].startswith(text), reply


@pytest.mark.parametrize(
    ("message", "name", "text"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS]
)
async def test_refusal_is_one_error_frame_then_a_normal_close(
    served: Served, message: Any, name: str, text: str
) -> None:
    reply, reason = await exchange(served, message)
    _check_refusal(reply, name, text)
    assert reason.code == 1000
    assert not served.service._running, "a refused request must not start a job"
    assert served.service.client_number == 0


# Escape attempts: names that would leave the jobs directory.  Malformed names are
# InvalidMessageError; well-formed names that only resolve outside are LoadingError.
ESCAPES: list[tuple[str, str]] = [
    ("..gates.blocking", "InvalidMessageError"),
    ("../gates.blocking", "InvalidMessageError"),
    ("/etc/passwd", "InvalidMessageError"),
    ("/tmp/x.run", "InvalidMessageError"),
    (str(JOBS_DIR / "echo") + ".run", "InvalidMessageError"),
    ("__init__.hello", "InvalidMessageError"),
    ("echo.__builtins__", "InvalidMessageError"),
    ("__import__", "InvalidMessageError"),
    ("sub.__init__.x", "InvalidMessageError"),
    ("_private", "InvalidMessageError"),
    ("echo._run", "InvalidMessageError"),
    ("sub..deep.run", "InvalidMessageError"),
    ("echo.run.", "InvalidMessageError"),
    ("", "InvalidMessageError"),
    ("1echo.run", "InvalidMessageError"),
    ("echo-2.run", "InvalidMessageError"),
    ("echo run", "InvalidMessageError"),
    ("echo.run\n", "InvalidMessageError"),
    ("ech\u00f6.run", "InvalidMessageError"),
    ("class.run", "InvalidMessageError"),
    ("echo.lambda", "InvalidMessageError"),
    ("os.system", "LoadingError"),  # no jobs/os.py, even though the package imported os
    ("echo.os.system", "LoadingError"),  # echo is a module, not a package
    ("gloomd.wsjobd.serve", "LoadingError"),  # importable from sys.path, not from here
    ("tests.support.wsjobs.echo.run", "LoadingError"),  # the jobs directory by its sys.path name
    ("subprocess.run", "LoadingError"),
    ("system", "LoadingError"),  # os.system imported into the package: not a function here
    ("rmtree", "LoadingError"),  # a Python function, but defined in shutil
    ("sub.deep.echo_run", "ok"),  # imported, but defined in the jobs directory: allowed
]


@pytest.mark.parametrize(("func", "outcome"), ESCAPES, ids=[repr(e[0]) for e in ESCAPES])
async def test_func_cannot_leave_the_jobs_directory(
    served: Served, func: str, outcome: str
) -> None:
    async with served.connect() as ws:
        await send(ws, {"ident": f"escape {func!r}", "func": func})
        reply = await receive(ws)
        if outcome == "ok":
            assert reply.get("err") is None
            return
        assert reply["err"] == outcome, reply
        assert (await closed(ws)).code == 1000


# ------------------------------------------------------------------- reports


async def test_progress_without_key_reports_the_whole_dict_then_closes(served: Served) -> None:
    message = {"func": "echo.run", "ident": "whole", "echo": "foo", "extra": [1, {"x": "ü"}]}
    reports, reason = await run_job(served, message)
    assert reason.code == 1000
    # The first report may precede the job's writes; the final one follows them.
    assert 1 <= len(reports) <= 2
    assert reports[-1] == {**message, "result": "foo", "foo": "80%"}
    for report in reports:
        assert "system_load" not in report


async def test_progress_with_key_reports_the_bare_value(served: Served) -> None:
    values, _ = await run_job(
        served, {"func": "echo.run", "ident": "key", "progress": {"key": "foo"}}
    )
    assert values[-1] == "80%"
    assert set(values) <= {None, "80%"}  # null until the job wrote the key


async def test_missing_key_reports_null(served: Served, gate_names: list[str]) -> None:
    gate = new_gate(gate_names)
    async with served.connect() as ws:
        await send(
            ws,
            {
                "func": "gates.waiting",
                "ident": gate,
                "gate": gate,
                "progress": {"key": "nope", "interval": NEVER},
            },
        )
        assert await receive(ws) is None
        served.gates.release(gate)
        assert await receive(ws) is None
        assert (await closed(ws)).code == 1000


async def test_reports_follow_the_interval(served: Served, gate_names: list[str]) -> None:
    gate = new_gate(gate_names)
    interval = 0.1
    async with served.connect() as ws:
        await send(
            ws,
            {
                "func": "gates.waiting",
                "ident": gate,
                "gate": gate,
                "progress": {"interval": interval, "key": "gate"},
            },
        )
        times = []
        for _ in range(4):
            assert await receive(ws) == gate
            times.append(trio.current_time())
    # Reports are due at first + k * interval: never early (give or take the
    # first report's own delivery time, a millisecond or so).
    assert times[3] - times[0] >= 3 * interval * 0.9


async def test_report_system_load_fields(served: Served, gate_names: list[str]) -> None:
    gate = new_gate(gate_names)
    async with served.connect() as ws:
        await send(
            ws,
            {
                "func": "gates.waiting",
                "ident": gate,
                "gate": gate,
                "report_system_load": True,
                "progress": {"interval": NEVER},
            },
        )
        report = await receive(ws)
        load = report["system_load"]
        assert set(load) == {"mem_available", "cpu_idle_percent", "client_number"}
        assert isinstance(load["mem_available"], int) and 0 < load["mem_available"] <= TOTAL_MEMORY
        assert isinstance(load["cpu_idle_percent"], float) and 0 <= load["cpu_idle_percent"] <= 100
        assert load["client_number"] == 1

        # A second client attaching to the same job counts, and never sees the
        # first one's system_load: reports are copies, not the job's own dict.
        async with served.connect() as other:
            await send(
                other,
                {
                    "func": "gates.waiting",
                    "ident": gate,
                    "progress": {"interval": NEVER},
                    "report_system_load": True,
                    "cpu_sample_interval": 0,
                },
            )
            assert (await receive(other))["system_load"]["client_number"] == 2
        async with served.connect() as plain:
            await send(
                plain, {"func": "gates.waiting", "ident": gate, "progress": {"interval": NEVER}}
            )
            assert "system_load" not in await receive(plain)
        job = served.service.running_job(gate)
        assert job is not None and "system_load" not in job.data
        served.gates.release(gate)
        final = await receive(ws)
        assert final["state"] == "released" and "system_load" in final
        assert (await closed(ws)).code == 1000


async def test_system_load_is_not_added_to_a_bare_value(
    served: Served, gate_names: list[str]
) -> None:
    gate = new_gate(gate_names)
    async with served.connect() as ws:
        await send(
            ws,
            {
                "func": "gates.waiting",
                "ident": gate,
                "gate": gate,
                "report_system_load": True,
                "progress": {"key": "gate", "interval": NEVER},
            },
        )
        assert await receive(ws) == gate


async def test_report_now_and_progress_available_wake_every_listener(
    served: Served, gate_names: list[str]
) -> None:
    for func in ("gates.stepping", "gates.stepping_async"):
        gate = new_gate(gate_names)
        message = {
            "func": func,
            "ident": gate,
            "gate": gate,
            "step": 0,
            "progress": {"interval": NEVER, "key": "step"},
        }
        async with served.connect() as first, served.connect() as second:
            await send(first, message)
            assert await receive(first) == 0
            await wait_started(served, gate)
            await send(second, message)
            assert await receive(second) == 0
            # Step 1 uses job.report_now(), step 2 pykit's progress_available.set():
            # each wakes both listeners, which an interval of 600 s would not.
            for step in (1, 2):
                served.gates.release(f"{gate}/{step}")
                assert await receive(first) == step
                assert await receive(second) == step
            served.gates.release(f"{gate}/3")
            for ws in (first, second):
                assert await receive(ws) == 3  # the final report
                assert (await closed(ws)).code == 1000


async def test_progress_off_sends_nothing_but_still_closes(
    served: Served, gate_names: list[str]
) -> None:
    for progress in (None, False):
        gate = new_gate(gate_names)
        async with served.connect() as ws:
            await send(
                ws, {"func": "gates.blocking", "ident": gate, "gate": gate, "progress": progress}
            )
            await wait_started(served, gate)
            served.gates.release(gate)
            assert (await closed(ws)).code == 1000  # and no frame before it


async def test_messages_after_the_first_are_ignored(served: Served, gate_names: list[str]) -> None:
    gate = new_gate(gate_names)
    async with served.connect() as ws:
        await send(
            ws,
            {
                "func": "gates.waiting",
                "ident": gate,
                "gate": gate,
                "progress": {"interval": NEVER, "key": "gate"},
            },
        )
        assert await receive(ws) == gate
        for junk in ("not json", {"func": "echo.run", "ident": "other"}, "{}"):
            await send(ws, junk)
        await trio.testing.wait_all_tasks_blocked()
        assert served.service.running_job("other") is None
        served.gates.release(gate)
        assert await receive(ws) == gate  # the final report, not an error
        assert (await closed(ws)).code == 1000


# ------------------------------------------------------------------- attach by ident


async def test_second_listener_attaches_with_its_own_interval_and_key(
    served: Served, gate_names: list[str]
) -> None:
    gate = new_gate(gate_names)
    fast, slow = 0.02, 0.25
    async with served.connect() as first:
        await send(
            first,
            {
                "func": "gates.waiting",
                "ident": gate,
                "gate": gate,
                "echo": "foo",
                "progress": {"interval": fast, "key": "result"},
            },
        )
        await wait_started(served, gate)
        async with served.connect() as second:
            # Its own func must load, its own extra fields are ignored.
            await send(
                second,
                {"func": "echo.run", "ident": gate, "echo": "bar", "progress": {"interval": slow}},
            )
            slow_times: list[float] = []
            fast_count = 0

            async def count_fast() -> None:
                nonlocal fast_count
                while True:
                    # null only in reports sent before the job had started
                    if await receive(first) == "foo":
                        fast_count += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(count_fast)
                for _ in range(3):
                    report = await receive(second)
                    assert report["echo"] == "foo" and report["result"] == "foo"
                    assert report["func"] == "gates.waiting"
                    slow_times.append(trio.current_time())
                nursery.cancel_scope.cancel()
            assert slow_times[2] - slow_times[0] >= 2 * slow * 0.9
            # Over two slow intervals the fast listener got many more reports.
            assert fast_count >= 6
            assert served.gates.start_counts[gate] == 1, "attaching must not start a second job"
            served.gates.release(gate)
            final = await receive(second)
            assert final["state"] == "released"
            assert (await closed(second)).code == 1000


async def test_attaching_needs_a_loadable_func_and_passing_check_load(
    served: Served, gate_names: list[str]
) -> None:
    gate = new_gate(gate_names)
    async with served.connect() as ws:
        await send(
            ws,
            {"func": "gates.waiting", "ident": gate, "gate": gate, "progress": {"interval": NEVER}},
        )
        await receive(ws)
        reply, _ = await exchange(served, {"func": "echo.nothing", "ident": gate})
        assert reply["err"] == "LoadingError"
        reply, _ = await exchange(
            served, {"func": "echo.run", "ident": gate, "check_load": {"cpu_low_threshold": 101}}
        )
        assert reply["err"] == "SystemOverloadError"
        served.gates.release(gate)


async def test_ident_types_are_distinct_keys(served: Served, gate_names: list[str]) -> None:
    idents: list[Any] = [True, 1, "1", None, "true", 2.5]
    async with trio.open_nursery() as nursery:
        for ident in idents:
            gate = new_gate(gate_names)
            ws = await nursery.start(
                _open_job,
                served,
                {
                    "func": "gates.waiting",
                    "ident": ident,
                    "gate": gate,
                    "progress": {"interval": NEVER},
                },
            )
            await wait_started(served, gate)
            job = served.service.running_job(ident)
            assert job is not None and job.data["gate"] == gate
            del ws
        assert len(served.service._running) == len(idents)
        # 1 and 1.0 are the same JSON number, hence the same job.
        assert served.service.running_job(1.0) is served.service.running_job(1)
        for name in gate_names:
            served.gates.release(name)


async def _open_job(
    served: Served, message: Any, *, task_status: trio.TaskStatus[WebSocketConnection]
) -> None:
    async with served.connect() as ws:
        await send(ws, message)
        await receive(ws)
        task_status.started(ws)
        with trio.fail_after(10):
            while True:
                try:
                    await ws.get_message()
                except ConnectionClosed:
                    return


async def test_same_ident_after_the_job_ended_starts_a_new_job(served: Served) -> None:
    for echo in ("foo", "bar"):
        frames, _ = await run_job(served, {"func": "echo.run", "ident": "again", "echo": echo})
        assert frames[-1]["result"] == echo


# ------------------------------------------------------------------- disconnects


async def test_client_disconnect_keeps_the_job_and_reattach_works(
    served: Served, gate_names: list[str]
) -> None:
    gate = new_gate(gate_names)
    async with served.connect() as ws:
        await send(
            ws,
            {
                "func": "gates.blocking",
                "ident": gate,
                "gate": gate,
                "echo": "foo",
                "progress": {"interval": NEVER},
            },
        )
        await receive(ws)
    await wait_started(served, gate)
    await trio.testing.wait_all_tasks_blocked()
    assert served.service.client_number == 0  # the close was noticed at once
    job = served.service.running_job(gate)
    assert job is not None and not job.done

    async with served.connect() as ws:
        await send(
            ws,
            {
                "func": "gates.blocking",
                "ident": gate,
                "echo": "bar",
                "progress": {"interval": NEVER},
            },
        )
        report = await receive(ws)
        assert report["result"] == "foo" and report["echo"] == "foo"
        served.gates.release(gate)
        assert (await receive(ws))["state"] == "released"
        assert (await closed(ws)).code == 1000
    assert served.service.running_job(gate) is None


async def test_send_and_hang_up_still_starts_the_job(served: Served, gate_names: list[str]) -> None:
    # pykit's test_client_close: the job starts even if the client leaves at once.
    gate = new_gate(gate_names)
    async with served.connect() as ws:
        await send(ws, {"func": "gates.blocking", "ident": gate, "gate": gate, "echo": "foo"})
    await wait_started(served, gate)
    async with served.connect() as ws:
        await send(ws, {"func": "gates.blocking", "ident": gate, "echo": "bar"})
        assert (await receive(ws))["result"] == "foo"
        served.gates.release(gate)


# ------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("func", "text"),
    [
        ("failing.raises", "ValueError: the job failed on purpose"),
        ("failing.raises_async", "KeyError: 'missing'"),
    ],
)
async def test_job_raising_sends_job_failed_error_then_closes(
    served: Served, func: str, text: str
) -> None:
    frames, reason = await run_job(served, {"func": func, "ident": func})
    assert reason.code == 1000
    assert frames[-1] == {"err": "JobFailedError", "val": [text]}
    assert all("err" not in frame for frame in frames[:-1])


@pytest.mark.parametrize("func", ["gates.blocking", "gates.waiting"])
@pytest.mark.parametrize("progress", [{"interval": NEVER}, None])
async def test_failure_after_reports(
    served: Served, gate_names: list[str], func: str, progress: Any
) -> None:
    gate = new_gate(gate_names)
    async with served.connect() as ws:
        await send(
            ws, {"func": func, "ident": gate, "gate": gate, "fail": True, "progress": progress}
        )
        if progress is not None:
            assert "err" not in await receive(ws)
        await wait_started(served, gate)
        served.gates.release(gate)
        # Even with reports off the failure is said, not swallowed.
        assert await receive(ws) == {
            "err": "JobFailedError",
            "val": ["ValueError: failed on purpose after release"],
        }
        assert (await closed(ws)).code == 1000


# ------------------------------------------------------------------- load thresholds
# Real measurements, no mocks: thresholds the machine certainly passes or fails.


async def test_memory_threshold_above_total_memory_is_an_overload(served: Served) -> None:
    threshold = TOTAL_MEMORY + 1024**3
    reply, reason = await exchange(served, {**OK, "check_load": {"mem_low_threshold": threshold}})
    _check_refusal(reply, "SystemOverloadError", "mem_available: ")
    mem = int(reply["val"][0].split(" ")[1])
    assert 0 < mem <= TOTAL_MEMORY
    assert reply["val"][0] == f"mem_available: {mem} is less than: {threshold}"
    assert reason.code == 1000


async def test_cpu_threshold_above_100_percent_is_an_overload(served: Served) -> None:
    reply, _ = await exchange(
        served, {**OK, "check_load": {"mem_low_threshold": 0, "cpu_low_threshold": 100.1}}
    )
    _check_refusal(reply, "SystemOverloadError", "cpu_idle_percent: ")
    assert reply["val"][0].endswith(" is less than: 100")  # pykit's %d truncation


async def test_thresholds_the_machine_always_passes(served: Served) -> None:
    for check in (
        {"mem_low_threshold": 0, "cpu_low_threshold": 0},
        {"mem_low_threshold": 1, "cpu_low_threshold": 0, "max_client_number": 1},
    ):
        async with served.connect() as ws:
            await send(
                ws,
                {
                    "func": "echo.run",
                    "ident": f"pass {check}",
                    "check_load": check,
                    "cpu_sample_interval": 0,
                },
            )
            assert "err" not in await receive(ws)


async def test_max_client_number_counts_open_connections(
    served: Served, gate_names: list[str]
) -> None:
    gate = new_gate(gate_names)
    check = {"max_client_number": 1, "cpu_low_threshold": 0, "mem_low_threshold": 0}
    async with served.connect() as first:
        await send(
            first,
            {
                "func": "gates.waiting",
                "ident": gate,
                "gate": gate,
                "check_load": check,
                "progress": {"interval": NEVER},
            },
        )
        assert "err" not in await receive(first)
        reply, _ = await exchange(
            served, {"func": "echo.run", "ident": "second", "check_load": check}
        )
        assert reply == {
            "err": "SystemOverloadError",
            "val": ["client_number: 2 is greater than: 1"],
        }
    # The first client's close has begun: it no longer counts.
    await trio.testing.wait_all_tasks_blocked()
    assert served.service.client_number == 0
    async with served.connect() as third:
        await send(third, {"func": "echo.run", "ident": "third", "check_load": check})
        assert "err" not in await receive(third)
    served.gates.release(gate)


# ------------------------------------------------------------------- threads and the loop


async def test_blocking_jobs_never_stall_the_event_loop(
    served: Served, gate_names: list[str]
) -> None:
    # 45 jobs that block their thread: more than trio's default 40-thread limiter,
    # so this also shows plain-function jobs do not queue behind it.  While they
    # all block, new connections are still served.
    count = 45
    gates = [new_gate(gate_names) for _ in range(count)]
    async with trio.open_nursery() as nursery:
        for gate in gates:
            await nursery.start(
                _open_job,
                served,
                {
                    "func": "gates.blocking",
                    "ident": gate,
                    "gate": gate,
                    "progress": {"interval": NEVER},
                },
            )
        for gate in gates:
            await wait_started(served, gate)
        frames, _ = await run_job(served, {"func": "hello", "ident": "while blocked"})
        assert frames[-1]["result"] == "hello from the jobs package"
        for gate in gates:
            served.gates.release(gate)


async def test_functions_in_the_package_and_in_sub_packages(served: Served) -> None:
    for func, key, value in (
        ("hello", "result", "hello from the jobs package"),
        ("sub.deep.run", "where", "sub.deep"),
    ):
        frames, _ = await run_job(served, {"func": func, "ident": func, "echo": "x"})
        assert frames[-1][key] == value


# ------------------------------------------------------------------- token


async def test_token_is_required_when_set(nursery: trio.Nursery) -> None:
    token = "s3cret/+&=?"
    service = WsJobService(JOBS_DIR, token=token)
    port = await nursery.start(service.run, HOST, 0)
    from urllib.parse import quote

    for resource in (
        "/",
        "/?token=",
        "/?token=wrong",
        f"/?token={quote(token, safe='')}x",
        f"/?token=x&token={quote(token, safe='')}",
    ):
        with pytest.raises(ConnectionRejected) as caught:
            async with ws_client(port, resource):
                pytest.fail("the handshake should have been refused")
        assert caught.value.status_code == 401, resource
    assert service.client_number == 0
    async with ws_client(port, f"/any/path?a=1&token={quote(token, safe='')}") as ws:
        await send(ws, {"func": "echo.run", "ident": "tok"})
        assert "err" not in await receive(ws)


# ------------------------------------------------------------------- a real gloomd


async def test_real_gloomd_serves_wsjobd() -> None:
    with spawn_gloomd("--ws-port", "0", "--jobs-dir", str(JOBS_DIR)) as daemon:
        assert daemon.ws_port is not None
        async with ws_client(daemon.ws_port) as ws:
            await send(
                ws,
                {
                    "func": "echo.run",
                    "ident": "e2e",
                    "echo": "foo",
                    "report_system_load": True,
                    "progress": {"interval": 0.05},
                },
            )
            frames, reason = await until_closed(ws)
            assert reason.code == 1000
            assert frames[-1]["result"] == "foo"
            assert frames[-1]["system_load"]["client_number"] == 1
        reply, _ = await _exchange_port(daemon.ws_port, {"ident": 1, "func": "os.system"})
        assert reply["err"] == "LoadingError"


async def _exchange_port(port: int, message: Any) -> tuple[Any, CloseReason]:
    async with ws_client(port) as ws:
        await send(ws, message)
        return await receive(ws), await closed(ws)
