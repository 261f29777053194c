"""Hypothesis against a live gloomd: adversarial frames over real sockets (issue 18).

One daemon serves the module (``python -m gloomd`` with a token file, a small
``--max-frame`` so that huge strings also cross it, and the websocket service).
Each example opens fresh connections and sends frames drawn from adversarial
classes: lone surrogates, non-finite and huge numbers (``1e400``, ``NaN``,
``10**400``) and huge strings in every field, deep and wide nesting, every
action on every port, with and without a 19+ digit integer beside them (which
sends a payload to the exact decoder), before and after authentication.

Every frame must be answered as protocol.md says: after each one a *fence*
(a request with a unique id the daemon must echo in an error) is sent, and
everything up to the fence's answer must be strict JSON objects (no NaN, no
Infinity, no lone surrogate), error names documented in README's tables (and
never ``internal_error``: that would be a bug caught by the boundary), a short
``invalid_json`` reason, and at least one answer to the frame (``progress`` on
a held job has none).  The connection may only close after ``size_error``
(frame over the cap) or ``unauthorized`` (a first frame that is not the right
auth).  After each example the daemon must still be running and a
well-behaved master and slave must complete a round trip.  A daemon that died
is restarted before the next example, so hypothesis can shrink the frame that
killed it.

The websocket service gets the same treatment with adversarial job
descriptions: every text frame it sends must be strict JSON, and it must close
the connection normally (after an error frame, or once the job ended).

Budget: ``GLOOMD_FUZZ_EXAMPLES`` examples per test (default 100, a few
seconds each test on a daemon that holds); derandomized unless
``GLOOMD_FUZZ_RANDOM=1``.  A long run:
``GLOOMD_FUZZ_EXAMPLES=5000 GLOOMD_FUZZ_RANDOM=1 pytest tests/test_live_fuzz.py``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from benchmarks.attack_kit import Daemon, FrameSocket, WsClient, raw_frame, start_daemon
from benchmarks.attack_probe import connect, round_trip

pytestmark = pytest.mark.timeout(600)

EXAMPLES = int(os.environ.get("GLOOMD_FUZZ_EXAMPLES", "100"))
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("GLOOMD_FUZZ_RANDOM") is None,
)

TOKEN = "live-fuzz-token"
MAX_FRAME = 256 * 1024
ANSWER_TIMEOUT = 20.0  # a frame of the cap's size decodes in well under a second
ROOT = Path(__file__).resolve().parents[2]
JOBS_DIR = ROOT / "tests" / "support" / "wsjobs"


def documented_errors() -> frozenset[str]:
    """Error names README documents: its error table, the security layer, job failures."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("### Error frames") :]
    table = table[: table.index("\n## ")]
    names = set(re.findall(r"^\| `([a-z_]+)`(?: / `([a-z_]+)`)?", table, re.MULTILINE))
    found = {name for pair in names for name in pair if name}
    security = re.search(r"Error frames of the security layer:([^.]*)", text)
    assert security, "README lost its list of the security layer's error frames"
    found |= set(re.findall(r"`([a-z_]+)`", security.group(1)))
    return frozenset(found | {"job_failed", "job_error"})


ERRORS = documented_errors()
CLOSING = {"size_error", "unauthorized"}


# --------------------------------------------------------------------------- the daemon


class LiveDaemon:
    """The module's gloomd and a well-behaved master/slave pair; restarted when dead."""

    def __init__(self, work: str) -> None:
        self.work = work
        self.token_file = os.path.join(work, "token")
        Path(self.token_file).write_text(TOKEN + "\n")
        self.daemon: Daemon | None = None
        self.probe: tuple[FrameSocket, FrameSocket] | None = None
        self.starts = 0
        self.trips = 0

    def ensure(self) -> Daemon:
        """The daemon, restarted if the last example killed it (or is killing it)."""
        if self.daemon is not None and self.daemon.alive() and self.probe is not None:
            try:
                self.trips += 1
                round_trip(*self.probe, self.trips, limit=5.0)
            except (OSError, EOFError, ValueError):
                self.close()
        if self.daemon is None or not self.daemon.alive():
            self.close()
            self.starts += 1
            self.daemon = start_daemon(
                [
                    f"--token-file={self.token_file}",
                    f"--max-frame={MAX_FRAME}",
                    "--log-level=warning",
                    "--ws-port=0",
                    f"--jobs-dir={JOBS_DIR}",
                ],
                os.path.join(self.work, f"gloomd-{self.starts}.log"),
            )
            self.probe = connect(self.daemon.master_port, self.daemon.slave_port, TOKEN)
        return self.daemon

    def status(self) -> str:
        """How the daemon is, for a failure message (waiting briefly for a dying one)."""
        daemon = self.daemon
        if daemon is None:
            return "not started"
        try:
            daemon.proc.wait(0.5)
        except subprocess.TimeoutExpired:
            return "still running"
        return f"exited with {daemon.proc.returncode}: {daemon.cause()}"

    def check_alive_and_serving(self) -> None:
        daemon = self.daemon
        assert daemon is not None and self.probe is not None
        assert daemon.alive(), f"gloomd exited with {daemon.proc.returncode}: {daemon.cause()}"
        self.trips += 1
        round_trip(*self.probe, self.trips, limit=5.0)

    def close(self) -> None:
        for conn in self.probe or ():
            conn.close()
        self.probe = None
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None


@pytest.fixture(scope="module")
def live() -> Iterator[LiveDaemon]:
    with tempfile.TemporaryDirectory(prefix="live-fuzz-") as work:
        handle = LiveDaemon(work)
        try:
            yield handle
        finally:
            handle.close()


# --------------------------------------------------------------------------- adversarial values


class Raw(str):
    """JSON text written as it is: 1e400, NaN, a 400-digit integer, a wide array."""


class Deep(NamedTuple):
    depth: int
    inner: Any


class Big(NamedTuple):
    """A long string (optionally with a lone surrogate), made here rather than drawn."""

    size: int
    surrogate: bool


def encode(value: Any) -> str:
    """ASCII JSON text; lone surrogates written as \\uXXXX escapes, Raw as it is."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Deep):
        return "[" * value.depth + encode(value.inner) + "]" * value.depth
    if isinstance(value, Big):
        return json.dumps(("\ud800" if value.surrogate else "") + "h" * value.size)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value)


def long_int(digits: int) -> Raw:
    return Raw("1" + "0" * (digits - 1))


numbers = st.one_of(
    st.sampled_from(
        [
            Raw("1e400"),
            Raw("-1e400"),
            Raw("1e-400"),
            Raw("NaN"),
            Raw("Infinity"),
            Raw("-Infinity"),
            long_int(401),
            Raw("-" + "9" * 40),
            2**63,
            -(2**63) - 1,
            2**64,
            10**19,
            0,
            -1,
            1,
            1.5,
            -0.5,
            1e308,
            5e-324,
            Raw("-0"),
            Raw("1E+2"),
            Raw("0.1e1"),
        ]
    ),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)
strings = st.one_of(
    st.sampled_from(
        [
            "\ud800",
            "\udfff",
            "a\udc80b",
            "\ud83d",
            "\ud83d\ude00",
            "",
            "\x00",
            "\u2028",
            "\u00e9",
            "0" * 25,
            "__proto__",
        ]
    ),
    st.text(max_size=12),
    st.builds(Big, st.sampled_from([4_000, 60_000, 200_000, 300_000]), st.booleans()),
)
WIDE = [Raw("[" + ",".join(["[]"] * n) + "]") for n in (1_000, 40_000)]
WIDE += [Raw("{" + ",".join(f'"k{i}":{i}' for i in range(n)) + "}") for n in (1_000, 15_000)]
nests = st.one_of(
    st.builds(
        Deep,
        st.sampled_from([2, 100, 250, 252, 253, 254, 255, 300, 1100]),
        st.one_of(numbers, strings),
    ),
    st.sampled_from(WIDE),
)
#: The classes that broke the daemon in issue 18, drawn more often than the rest.
hostile = st.sampled_from(
    [
        "\ud800",
        "a\udfff",
        Raw("1e400"),
        Raw("-1e400"),
        long_int(401),
        [Raw("1e400"), long_int(30)],
        {"\ud800": 1},
    ]
)
small_keys = st.one_of(st.sampled_from(["\ud800", "", "action", "id"]), st.text(max_size=5))
adversarial = st.one_of(
    hostile,
    numbers,
    strings,
    hostile,
    nests,
    st.none(),
    st.booleans(),
    st.lists(st.one_of(numbers, strings), max_size=3),
    st.dictionaries(small_keys, st.one_of(numbers, strings), max_size=2),
)

CATEGORIES = ["ERROR", "TIMEOUT", "CRASH", "HALTED"]
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "id": st.sampled_from([1, 2, "a", "b"]),
    "type": st.sampled_from(["t0", "t1", [1, 2]]),
    "priority": st.integers(-2, 3),
    "body": st.sampled_from([None, 1, "x", {"k": [1]}]),
    "timeout": st.sampled_from([0.3, 5, 60]),
    "detach": st.booleans(),
    "after": st.sampled_from([[], [1], ["a"]]),
    "error": st.sampled_from(CATEGORIES),
    "reason": st.sampled_from([None, "r"]),
    "token": st.just(TOKEN),
}
FIELDS = {
    "submit": ["id", "type", "priority", "body", "timeout", "detach", "after"],
    "cancel": ["id"],
    "result": ["id"],
    "stats": [],
    "ping": [],
    "auth": ["token"],
    "join": ["type"],
    "respond": ["body"],
    "progress": ["body"],
    "fail": ["error", "reason"],
}
MASTER_ACTIONS = {"submit", "cancel", "result", "stats"}
SLAVE_ACTIONS = {"join", "respond", "progress", "fail"}
RAW_PAYLOADS = [
    b"",
    b"{",
    b"[1,2]",
    b"null",
    b'"s"',
    b"NaN",
    b'{"action":NaN}',
    b'{"action":Infinity}',
    b"\xff\xfe{}",
    b'\xef\xbb\xbf{"action":"ping"}',
    b'{"action":"ping"} x',
    b'{"action":"ping"',
    b'{"action":"ping","a":1,"a":2}',
    b'{"action":"\xed\xa0\x80"}',
    b'{"action":"ping","n":1e400}',
]


def _shown(payload: bytes) -> str:
    """A frame for a failure report: hypothesis prints every drawn value, and whole
    frames of hundreds of kB would drown the report (and trip its repr warning)."""
    head = repr(payload[:300])
    return head if len(payload) <= 300 else f"{head}... ({len(payload):,} B)"


class Step(NamedTuple):
    port: str  # "master" or "slave"
    action: str | None  # as sent, when it is a plain string
    payload: bytes

    def __repr__(self) -> str:
        return f"Step({self.port!r}, {self.action!r:.60}, {_shown(self.payload)})"


class Case(NamedTuple):
    """A websocket job description, and whether the service may stay silent."""

    payload: bytes
    silent: bool

    def __repr__(self) -> str:
        return f"Case({_shown(self.payload)}, silent={self.silent})"


@st.composite
def fields_of(draw: st.DrawFn, action: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if draw(st.integers(0, 19)):  # 1 in 20 frames has no action
        obj["action"] = action
    for name in FIELDS.get(action, []) if isinstance(action, str) else []:
        mode = draw(st.integers(0, 9))
        if mode == 0:
            continue
        obj[name] = draw(PLAUSIBLE[name] if mode < 5 else adversarial)
    if draw(st.booleans()):  # a long digit run: the exact decoder's path
        obj["n"] = long_int(draw(st.integers(19, 40)))
    if draw(st.integers(0, 6)) == 0:
        obj[draw(small_keys)] = draw(adversarial)
    return obj


@st.composite
def steps(draw: st.DrawFn, action: Any = None) -> Step:
    if action is None and draw(st.integers(0, 9)) == 0:
        return Step(
            draw(st.sampled_from(["master", "slave"])), None, draw(st.sampled_from(RAW_PAYLOADS))
        )
    if action is None:
        action = draw(
            st.one_of(st.sampled_from(sorted(FIELDS)), st.sampled_from(sorted(FIELDS)), adversarial)
        )
    obj = draw(fields_of(action))
    wrong = draw(st.integers(0, 6)) == 0
    name = action if isinstance(action, str) else None
    if name in MASTER_ACTIONS:
        port = "slave" if wrong else "master"
    elif name in SLAVE_ACTIONS:
        port = "master" if wrong else "slave"
    else:
        port = draw(st.sampled_from(["master", "slave"]))
    return Step(port, name, encode(obj).encode("ascii"))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[bool, list[Step]]:
    authed = draw(st.integers(0, 4)) > 0
    first = draw(steps(action="auth")) if not authed and draw(st.booleans()) else draw(steps())
    return authed, [first, *draw(st.lists(steps(), max_size=3))]


# --------------------------------------------------------------------------- the oracle


def strict_json(payload: bytes) -> Any:
    """Decode as RFC 8259 allows: UTF-8, no NaN/Infinity, no lone surrogates anywhere."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} is not JSON: {payload[:120]!r}")

    value = json.loads(payload.decode("utf-8"), parse_constant=refuse)
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            item.encode("utf-8")  # raises on a lone surrogate
        elif isinstance(item, float):
            assert math.isfinite(item), payload[:120]
    return value


def is_async(frame: dict[str, Any], port: str) -> bool:
    """Frames that answer no request: jobs to slaves, results, progress and failures to masters."""
    if port == "slave":
        return frame.get("action") == "job"
    if "category" in frame:
        return True
    return (
        "id" in frame
        and ("body" in frame or "progress" in frame)
        and not ("ok" in frame or "error" in frame)
    )


class Conn:
    """One fuzz connection, its fence and what it was told."""

    def __init__(self, daemon: Daemon, port: str, authed: bool) -> None:
        number = daemon.master_port if port == "master" else daemon.slave_port
        self.sock = FrameSocket(number, token=TOKEN if authed else None, timeout=ANSWER_TIMEOUT)
        self.port = port
        self.authed = authed
        self.closed = False
        self.acked: list[Any] = []
        self.fences = 0

    def exchange(self, payload: bytes) -> tuple[list[dict[str, Any]], bool]:
        """Send a frame, then a fence; return the frames before the fence's answer, and
        whether the daemon closed the connection instead of answering the fence."""
        self.fences += 1
        fence_id = f"__fence__{self.fences}"
        fence = (
            {"action": "result", "id": fence_id} if self.port == "master" else {"action": fence_id}
        )
        answer = {
            "error": "unknown_id" if self.port == "master" else "unknown_type",
            "reason": fence_id,
        }
        try:
            self.sock.send_raw(raw_frame(payload) + raw_frame(json.dumps(fence).encode()))
        except OSError:
            pass  # closed while we sent (size_error): read what it said
        frames: list[dict[str, Any]] = []
        while True:
            try:
                got = self.sock.recv_payload(ANSWER_TIMEOUT)
            except TimeoutError:
                raise AssertionError(
                    f"no answer in {ANSWER_TIMEOUT} s; so far {frames!r:.300}"
                ) from None
            except OSError:
                got = None
            if got is None:
                self.closed = True
                return frames, True
            frame = strict_json(got)
            assert isinstance(frame, dict), f"not an object: {got[:120]!r}"
            if frame == answer:
                return frames, False
            if frame.get("ok") is True and "id" in frame:
                self.acked.append(frame["id"])
            frames.append(frame)

    def close(self) -> None:
        self.sock.close()


def check_answers(
    step: Step, frames: list[dict[str, Any]], closed: bool, first_unauth: bool
) -> None:
    shown = f"{step.port} <- {_shown(step.payload)}: {frames!r:.300}"
    for frame in frames:
        if "error" in frame:
            assert frame["error"] != "internal_error", f"a bug caught by the boundary: {shown}"
            assert frame["error"] in ERRORS, f"undocumented error {frame['error']!r}: {shown}"
            if frame["error"] == "invalid_json":
                assert len(str(frame.get("reason"))) <= 256, (
                    f"invalid_json echoes too much: {shown}"
                )
    last = frames[-1].get("error") if frames else None
    if len(step.payload) > MAX_FRAME:
        assert closed and last == "size_error", f"over --max-frame: {shown}"
    elif first_unauth:
        refused = closed and frames == [{"error": "unauthorized", "reason": "auth"}]
        assert refused or (not closed and frames == [{"ok": True}]), (
            f"first frame before auth: {shown}"
        )
    elif closed:
        raise AssertionError(f"closed without a closing error frame: {shown}")
    elif step.action != "progress":
        answers = (
            frames if step.action == "result" else [f for f in frames if not is_async(f, step.port)]
        )
        assert answers, f"no answer: {shown}"


def cleanup(daemon: Daemon, conns: dict[str, Conn]) -> None:
    """Leave nothing queued for the next example: close the slave, cancel what was acked.

    Detached jobs outlive their master, and a job with a bad timeout left queued
    would go off in a later example, blamed on the wrong frame.
    """
    slave = conns.pop("slave", None)
    if slave is not None:
        slave.close()
    master = conns.pop("master", None)
    if master is None:
        return
    pending = list(master.acked)
    if pending and (master.closed or not master.authed):
        master.close()
        master = Conn(daemon, "master", True)
    try:
        for job_id in pending:
            cancel = json.dumps({"action": "cancel", "id": job_id}).encode()
            # The job the slave held is requeued once the daemon has read the
            # slave's EOF, which may come after our cancel: then it is "running".
            for _ in range(20):
                frames, closed = master.exchange(cancel)
                if closed or {"error": "invalid_state", "reason": "running"} not in frames:
                    break
    finally:
        master.close()


# --------------------------------------------------------------------------- the tests


LONG = b',"n":1234567890123456789012}'  # ends a frame with a 22-digit integer


@fuzz
@given(scenarios())
# The four frames of issue 18 that stopped the daemon, always tried first.
@example((False, [Step("master", "auth", b'{"action":"auth","token":"\\ud800"' + LONG)]))
@example((True, [Step("master", None, b'{"action":"\\ud800"' + LONG)]))
@example((True, [Step("master", "cancel", b'{"action":"cancel","id":"\\ud800"' + LONG)]))
@example(
    (
        True,
        [Step("slave", "join", b'{"action":"join","type":[1e400,123456789012345678901234567890]}')],
    )
)
@example(
    (
        True,
        [
            Step(
                "master",
                "submit",
                b'{"action":"submit","id":1,"type":"t0","body":null,"timeout":1'
                + b"0" * 400
                + b"}",
            ),
            Step("slave", "join", b'{"action":"join","type":"t0"}'),
        ],
    )
)
def test_gloom_ports_answer_adversarial_frames(
    live: LiveDaemon, scenario: tuple[bool, list[Step]]
) -> None:
    authed, plan = scenario
    daemon = live.ensure()
    conns: dict[str, Conn] = {}
    try:
        for step in plan:
            conn = conns.get(step.port)
            first_unauth = conn is None and not authed
            if conn is None:
                conn = conns[step.port] = Conn(daemon, step.port, authed)
            if conn.closed:
                continue
            try:
                frames, closed = conn.exchange(step.payload)
                check_answers(step, frames, closed, first_unauth)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\ngloomd {live.status()}") from None
            if first_unauth and not closed:
                conn.authed = True
    finally:
        # A failure in the cleanup must not hide the frame's own failure.
        cleanup_failed: Exception | None = None
        try:
            if daemon.alive():
                cleanup(daemon, conns)
        except (OSError, EOFError, AssertionError) as exc:
            cleanup_failed = exc
        finally:
            for conn in conns.values():
                conn.close()
    if cleanup_failed is not None:
        raise AssertionError(f"cleanup: {cleanup_failed}\ngloomd {live.status()}")
    live.check_alive_and_serving()


WS_RAW = [
    b"",
    b"{",
    b"[]",
    b"null",
    b"NaN",
    b'{"ident":1,"func":"echo.run"} x',
    b'{"ident":Infinity}',
]


@st.composite
def descriptions(draw: st.DrawFn) -> Case:
    """A job description; the service may stay silent only when it turns reports off."""
    if draw(st.integers(0, 9)) == 0:
        return Case(draw(st.sampled_from(WS_RAW)), False)

    def field(plausible: st.SearchStrategy[Any], missing: int = 1) -> Any:
        mode = draw(st.integers(0, 9))
        return None if mode < missing else draw(plausible if mode < 6 else adversarial)

    obj: dict[str, Any] = {}
    for key, plausible, missing in (
        ("ident", st.integers(0, 10**6), 1),
        ("func", st.sampled_from(["echo.run", "echo.run", "nope.run", "echo"]), 1),
        ("echo", hostile, 2),
        ("progress", st.sampled_from([{}, {"interval": 0.05}, {"key": "result"}, False]), 4),
        ("check_load", st.sampled_from([{"max_client_number": 10**6}]), 8),
        ("report_system_load", st.booleans(), 8),
        ("cpu_sample_interval", st.sampled_from([0, 0.01]), 8),
    ):
        value = field(plausible, missing)
        if value is not None or draw(st.integers(0, 9)) == 0:
            obj[key] = value
    if isinstance(obj.get("progress"), dict) and draw(st.booleans()):
        obj["progress"] = {draw(st.sampled_from(["interval", "key"])): draw(adversarial)}
    if isinstance(obj.get("check_load"), dict) and draw(st.booleans()):
        obj["check_load"] = {"mem_low_threshold": draw(numbers)}
    if draw(st.integers(0, 19)) == 0:
        obj["jobs_dir"] = "."
    if draw(st.booleans()):
        obj["n"] = long_int(draw(st.integers(19, 40)))
    silent = "progress" in obj and (obj["progress"] is None or obj["progress"] is False)
    return Case(encode(obj).encode("ascii"), silent)


@fuzz
@given(descriptions())
# Issue 18: reports echoed 1e400 as Infinity (not JSON), and a lone surrogate killed the report.
@example(Case(b'{"ident":1,"func":"echo.run","echo":1e400' + LONG, False))
@example(Case(b'{"ident":2,"func":"echo.run","echo":"\\ud800"' + LONG, False))
def test_websocket_service_answers_adversarial_descriptions(live: LiveDaemon, case: Case) -> None:
    description, silent = case
    daemon = live.ensure()
    assert daemon.ws_port is not None
    shown = _shown(description)
    client = WsClient.connect(daemon.ws_port, f"/?token={TOKEN}")
    try:
        client.send_text(description)
        frames = list(client.messages(timeout=10))
    except TimeoutError:
        raise AssertionError(f"the service neither answered nor closed: {shown}") from None
    finally:
        client.close()
    assert frames and frames[-1][0] == 8, (
        f"not closed with a close frame: {shown} -> {frames!r:.300}"
    )
    code = int.from_bytes(frames[-1][1][:2], "big") if len(frames[-1][1]) >= 2 else None
    assert code in (1000, 1009), f"close code {code}: {shown}"  # 1009: over the message cap
    # Over the message cap the close (1009) is the answer; else a report or an error frame.
    assert silent or code == 1009 or len(frames) > 1, f"closed without an answer: {shown}"
    for opcode, payload in frames[:-1]:
        assert opcode == 1, f"opcode {opcode}: {shown}"
        frame = strict_json(payload)
        if isinstance(frame, dict) and "err" in frame:
            assert isinstance(frame["err"], str) and isinstance(frame["val"], list), shown
    live.check_alive_and_serving()
