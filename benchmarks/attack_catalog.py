"""The attacks of issue 18, one function each, registered in `ATTACKS` by name.

Each attack receives a `Ctx`: the daemon (its ports, pid and log), the caps it
runs under, its sizes (full or quick), and a few helpers; it sets up what it
needs, calls `ctx.begin()` when the harm starts (the memory baseline and the
round-trip window start there), does its harm within `ctx.deadline`, and
reports through `ctx.check` (its own targets), `ctx.note` and `ctx.measured`.
It also says what it involves (`ctx.conns`, `ctx.ws_conns`, `ctx.ws_jobs`,
`ctx.stores`), which `rss_bound` turns into the memory the caps allow.
Every socket it opens through `ctx` is closed by the runner, whatever happens.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .attack_kit import (
    HOST,
    Daemon,
    FrameSocket,
    Sampler,
    WsClient,
    count_fds,
    daemon_sockets,
    frame,
    raw_frame,
    readable,
)
from .attack_limits import (
    BASE_CAPS,
    CLIENT_MAX_FRAME,
    LOG_TARGET_PER_10S,
    PROBE_CONNS,
    Caps,
    KiB,
    MiB,
)

__all__ = ["ATTACKS", "JOBS", "TOKEN", "Attack", "Check", "Ctx"]

#: The token of the attacks that run the daemon with --token-file.
TOKEN = "attack-token-0123456789"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Ctx:
    """What an attack body works with, and what it reports back."""

    daemon: Daemon
    sampler: Sampler
    caps: Caps
    size: dict[str, float]
    token: str | None
    work: str
    deadline: float
    begun: float | None = None
    baseline_kb: int = 0
    baseline_fds: int = 0
    #: Involved in the bound (the probe's connections are added by the runner).
    conns: int = 1
    ws_conns: int = 0
    ws_jobs: int = 0
    stores: tuple[str, ...] = ()
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)
    #: Every socket the attack opened: the runner closes them whatever happened.
    opened: list[socket.socket] = field(default_factory=list)

    def begin(self) -> None:
        """Setup is over: the memory baseline and the round-trip window start now."""
        self.sampler.restart_peaks()
        self.baseline_kb = self.sampler.rss_kb
        self.baseline_fds = count_fds(self.daemon.pid)
        self.begun = time.monotonic()

    def n(self, key: str) -> int:
        return int(self.size[key])

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def master(self, timeout: float = 5.0) -> FrameSocket:
        return self.frames(self.daemon.master_port, timeout)

    def slave(self, timeout: float = 5.0) -> FrameSocket:
        return self.frames(self.daemon.slave_port, timeout)

    def frames(self, port: int, timeout: float = 5.0, *, auth: bool = True) -> FrameSocket:
        sock = FrameSocket(port, token=self.token if auth else None, timeout=timeout)
        self.opened.append(sock.sock)
        return sock

    def connect(self, port: int, timeout: float = 5.0) -> socket.socket:
        """A plain TCP connection (no authentication), closed by the runner at the latest."""
        sock = socket.socket()
        self.opened.append(sock)
        sock.settimeout(timeout)
        sock.connect((HOST, port))
        return sock

    def ws(self, path: str = "/", timeout: float = 5.0) -> WsClient:
        assert self.daemon.ws_port is not None
        client = WsClient.connect(self.daemon.ws_port, path, timeout)
        self.opened.append(client.sock)
        return client

    def close_all(self) -> None:
        for sock in self.opened:
            sock.close()
        self.opened.clear()

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def note(self, text: str) -> None:
        self.notes.append(text)


@dataclass(frozen=True)
class Attack:
    name: str
    summary: str
    body: Callable[[Ctx], None]
    full: dict[str, float]
    quick: dict[str, float]
    caps: dict[str, Any]
    quick_caps: dict[str, Any]
    judge: str  # "peak": RSS during the attack; "end": RSS kept after it
    token: bool
    ws: bool
    nofile: int | None
    #: The checks the attack records; one it could not reach (the daemon cut the
    #: attack short) is a failed check, never a silent pass.
    expects: tuple[str, ...] = ()


ATTACKS: dict[str, Attack] = {}


def attack(
    name: str,
    summary: str,
    *,
    full: dict[str, float] | None = None,
    quick: dict[str, float] | None = None,
    caps: dict[str, Any] | None = None,
    quick_caps: dict[str, Any] | None = None,
    judge: str = "peak",
    token: bool = False,
    ws: bool = False,
    nofile: int | None = None,
    expects: tuple[str, ...] = (),
) -> Callable[[Callable[[Ctx], None]], Callable[[Ctx], None]]:
    def register(body: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
        ATTACKS[name] = Attack(
            name,
            summary,
            body,
            full or {},
            quick or full or {},
            {**BASE_CAPS, **(caps or {})},
            quick_caps or {},
            judge,
            token,
            ws,
            nofile,
            expects,
        )
        return body

    return register


def _short(value: Any, limit: int = 90) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} chars)"


def _first_frames(sock: FrameSocket, count: int, timeout: float) -> list[str]:
    """Up to `count` frames, shortened, for the notes; stops at EOF or timeout."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        try:
            payload = sock.recv_payload(max(deadline - time.monotonic(), 0.01))
        except (TimeoutError, OSError):
            break
        if payload is None:
            seen.append("EOF")
            break
        seen.append(_short(payload))
    return seen


_LONG_INT = b"1234567890123456789012"  # 22 digits: the payload goes to the exact decoder
_INT30 = b"123456789012345678901234567890"


def _one_frame(ctx: Ctx, port: int, payload: bytes) -> None:
    ctx.begin()
    sock = ctx.frames(port, auth=False)
    sock.send_raw(raw_frame(payload))
    ctx.note("answer: " + " | ".join(_first_frames(sock, 2, 2.0)))
    sock.close()


@attack(
    "crash-auth-surrogate",
    'before auth, with --token-file: {"action":"auth","token":"\\ud800"} beside a 22-digit integer',
    token=True,
)
def crash_auth_surrogate(ctx: Ctx) -> None:
    _one_frame(
        ctx, ctx.daemon.master_port, b'{"action":"auth","token":"\\ud800","n":' + _LONG_INT + b"}"
    )


@attack(
    "crash-surrogate-action",
    'an unknown action "\\ud800" (echoed in the error) beside a long integer',
)
def crash_surrogate_action(ctx: Ctx) -> None:
    _one_frame(ctx, ctx.daemon.master_port, b'{"action":"\\ud800","n":' + _LONG_INT + b"}")


@attack(
    "crash-surrogate-id", 'a submit whose id is "\\ud800" (echoed in the ack) beside a long integer'
)
def crash_surrogate_id(ctx: Ctx) -> None:
    payload = b'{"action":"submit","id":"\\ud800","type":"t","body":null,"n":' + _LONG_INT + b"}"
    _one_frame(ctx, ctx.daemon.master_port, payload)


@attack("crash-inf-type-join", "a join whose type is [1e400, <30-digit integer>]")
def crash_inf_type_join(ctx: Ctx) -> None:
    _one_frame(ctx, ctx.daemon.slave_port, b'{"action":"join","type":[1e400,' + _INT30 + b"]}")


@attack("crash-inf-type-submit", "a submit whose type is [1e400, <30-digit integer>]")
def crash_inf_type_submit(ctx: Ctx) -> None:
    payload = b'{"action":"submit","id":1,"type":[1e400,' + _INT30 + b'],"body":null}'
    _one_frame(ctx, ctx.daemon.master_port, payload)


@attack("crash-timeout-bomb", 'a submit with "timeout": 10**400, then a slave takes the job')
def crash_timeout_bomb(ctx: Ctx) -> None:
    ctx.conns = 2
    ctx.begin()
    master = ctx.master()
    master.send_raw(
        raw_frame(
            b'{"action":"submit","id":"bomb","type":"bomb","body":null,"timeout":1'
            + b"0" * 400
            + b"}"
        )
    )
    ctx.note("submit: " + " | ".join(_first_frames(master, 1, 2.0)))
    slave = ctx.slave()
    slave.send({"action": "join", "type": "bomb"})
    ctx.note("join: " + " | ".join(_first_frames(slave, 2, 2.0)))
    slave.close()
    master.close()


@attack(
    "slowloris",
    "N connections each trickle a started frame one byte every 0.25 s; the daemon must cut them",
    full={"conns": 500},
    quick={"conns": 100},
    caps={"frame_timeout": 2.0, "max_frame": 1 * MiB, "max_outbuf": 1 * MiB},
    expects=("cut at --frame-timeout",),
)
def slowloris(ctx: Ctx) -> None:
    count = ctx.n("conns")
    ctx.conns = count
    timeout = ctx.caps.frame_timeout
    ctx.begin()
    open_socks: dict[socket.socket, float] = {}
    for _ in range(count):
        sock = ctx.connect(ctx.daemon.master_port, timeout=2)
        sock.sendall(raw_frame(b"{" + b" " * 999)[:5])  # the header and one byte of 1,000
        open_socks[sock] = time.monotonic()
    cut: list[float] = []
    give_up = time.monotonic() + timeout + 1.5
    next_drip = time.monotonic()
    while open_socks and time.monotonic() < min(give_up, ctx.deadline):
        if time.monotonic() >= next_drip:
            next_drip += 0.25
            for sock in list(open_socks):
                try:
                    sock.send(b" ")
                except OSError:
                    pass  # closed by the daemon: its EOF is read below
        for sock in readable(open_socks, 0.05):
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                cut.append(time.monotonic() - open_socks.pop(sock))
                sock.close()
    left = len(open_socks)
    for sock in open_socks:
        sock.close()
    worst = max(cut) if cut else math.inf
    ctx.measured.update(cut=len(cut), still_open=left, slowest_cut_s=round(worst, 2))
    ctx.check(
        "cut at --frame-timeout",
        left == 0 and worst <= timeout + 1.5,
        f"{len(cut)}/{count} cut, slowest after {worst:.2f} s (frame timeout {timeout:g} s)",
    )


@attack(
    "connect-reset",
    "N connections opened and reset at once (SO_LINGER 0), both ports",
    full={"conns": 10_000},
    quick={"conns": 2_000},
    expects=("no descriptor leak",),
)
def connect_reset(ctx: Ctx) -> None:
    count = ctx.n("conns")
    ctx.begin()
    ports = (ctx.daemon.master_port, ctx.daemon.slave_port)
    linger = (socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    done = 0
    for i in range(count):
        if ctx.left() <= 0:
            break
        with socket.socket() as sock:
            sock.setsockopt(*linger)
            try:
                sock.connect((HOST, ports[i % 2]))
            except OSError:
                pass
        done += 1
    ctx.measured["resets"] = done
    base = ctx.baseline_fds
    settle = time.monotonic() + 3.0
    while count_fds(ctx.daemon.pid) > base + 4 and time.monotonic() < settle:
        time.sleep(0.05)
    now = count_fds(ctx.daemon.pid)
    ctx.check(
        "no descriptor leak",
        0 <= now <= base + 4,
        f"{now} fds after {done:,} resets (before: {base})",
    )


def _frames(fmt: bytes, numbers: Iterable[int]) -> bytes:
    """One frame per number, its payload `fmt` with every %d the number."""
    out = bytearray()
    for i in numbers:
        out += raw_frame(fmt.replace(b"%d", b"%d" % i))
    return bytes(out)


@attack(
    "stats-flood",
    "460 B of stats requests in one send, with N types queued",
    full={"types": 100_000},
    quick={"types": 30_000},
    caps={"max_frame": 1 * MiB, "max_outbuf": 8 * MiB},
)
def stats_flood(ctx: Ctx) -> None:
    types = ctx.n("types")
    holder = ctx.master(timeout=30)
    batch = 5_000
    for first in range(0, types, batch):
        ids = range(first, min(first + batch, types))
        holder.send_raw(_frames(b'{"action":"submit","id":%d,"type":"type-%d","body":null}', ids))
        got, _, eof = holder.drain(len(ids), timeout=max(ctx.left(), 1))
        if got < len(ids) or eof:
            ctx.note(f"setup stopped at {first + got} types")
            break
    ctx.conns = 2
    ctx.begin()
    one = frame({"action": "stats"})
    count = math.ceil(460 / len(one))
    flood = ctx.master(timeout=30)
    flood.send_raw(one * count)
    t0 = time.monotonic()
    got, size, eof = flood.drain(count, timeout=min(30, max(ctx.left(), 1)))
    ctx.measured.update(
        requests=count, request_bytes=len(one) * count, answers=got, answer_bytes=size
    )
    ctx.note(
        f"{count} stats requests ({len(one) * count} B): {got} answers, {size / 1e6:.0f} MB"
        f"{', then EOF' if eof else ''} in {time.monotonic() - t0:.1f} s"
    )
    flood.close()
    holder.close()


@attack(
    "result-flood",
    "7.2 KB of result requests for a detached 1 MB result, in one send",
    full={"bytes": 7200},
    quick={"bytes": 7200},
    caps={"max_frame": 2 * MiB, "max_outbuf": 8 * MiB, "max_result_bytes": 32 * MiB},
)
def result_flood(ctx: Ctx) -> None:
    master = ctx.master(timeout=30)
    slave = ctx.slave(timeout=30)
    slave.request({"action": "join", "type": "bigres"})
    master.send({"action": "submit", "id": "big", "type": "bigres", "body": None, "detach": True})
    job = slave.recv(10)
    if job.get("action") == "job":
        slave.send({"action": "respond", "body": "r" * 1_000_000})
        slave.recv(10)
    master.drain(2, timeout=10)  # the ack and the result frame
    slave.close()
    ctx.conns = 1
    ctx.stores = ("results",)
    ctx.begin()
    one = frame({"action": "result", "id": "big"})
    count = math.ceil(ctx.size["bytes"] / len(one))
    master.send_raw(one * count)
    got, size, eof = master.drain(count, timeout=min(30, max(ctx.left(), 1)))
    ctx.measured.update(requests=count, answers=got, answer_bytes=size)
    ctx.note(
        f"{count} result requests ({len(one) * count} B): {got} answers, "
        f"{size / 1e6:.0f} MB{', then EOF' if eof else ''}"
    )
    master.close()


@attack(
    "progress-flood",
    "11 KB of progress frames on a job whose id is 1 MB, in one send",
    full={"bytes": 11_000},
    quick={"bytes": 11_000},
    caps={"max_frame": 2 * MiB, "max_outbuf": 8 * MiB, "max_id_bytes": 1 * KiB},
)
def progress_flood(ctx: Ctx) -> None:
    master = ctx.master(timeout=30)
    slave = ctx.slave(timeout=30)
    slave.request({"action": "join", "type": "prog"})
    master.send({"action": "submit", "id": "p" * 1_000_000, "type": "prog", "body": None})
    ack = master.recv_payload(10)
    try:
        job = slave.recv(1)
        ctx.note("setup: the slave holds the 1 MB-id job")
    except TimeoutError:
        job = None
        ctx.note(f"setup: the submit was answered {_short(ack)}")
    ctx.conns = 2
    ctx.begin()
    one = frame({"action": "progress", "body": 1})
    count = math.ceil(ctx.size["bytes"] / len(one))
    slave.send_raw(one * count)
    if job is not None:
        got, size, eof = master.drain(count, timeout=min(30, max(ctx.left(), 1)))
    else:
        got, size, eof = slave.drain(count, timeout=5)
    ctx.measured.update(frames=count, answers=got, answer_bytes=size)
    ctx.note(
        f"{count} progress frames ({len(one) * count} B): {got} frames back, {size / 1e6:.0f} MB"
        f"{', then EOF' if eof else ''}"
    )
    slave.close()
    master.close()


@attack(
    "big-frame-close",
    "N connections one after another, each sends 16 MiB - 1 bytes of a 16 MiB frame and closes",
    full={"conns": 60},
    quick={"conns": 20},
    caps={"max_frame": 16 * MiB},
    judge="end",
)
def big_frame_close(ctx: Ctx) -> None:
    count = ctx.n("conns")
    size = ctx.caps.max_frame
    data = raw_frame(b" " * size)[:-1]  # all but the frame's last byte
    ctx.conns = 0  # judged once nobody is connected
    ctx.begin()
    sent = 0
    for _ in range(count):
        if ctx.left() <= 0:
            break
        sock = ctx.connect(ctx.daemon.master_port, timeout=10)
        sock.sendall(data)
        sock.close()
        sent += 1
    ctx.measured["conns"] = sent
    ctx.note(f"{sent} connections x {(size - 1) / MiB:.0f} MiB sent and closed; RSS judged after")


@attack(
    "cancelled-big-ids",
    "N jobs with 1 MB ids submitted and cancelled; memory kept afterwards",
    full={"jobs": 300},
    quick={"jobs": 150},
    caps={
        "max_frame": 2 * MiB,
        "max_outbuf": 8 * MiB,
        "max_outcome_bytes": 16 * MiB,
        "max_id_bytes": 1 * KiB,
    },
    judge="end",
)
def cancelled_big_ids(ctx: Ctx) -> None:
    count = ctx.n("jobs")
    ctx.conns = 0
    ctx.stores = ("outcomes",)
    ctx.begin()
    master = ctx.master(timeout=30)
    pad = "c" * (1_000_000 - 8)
    answers: dict[str, int] = {}
    for i in range(count):
        if ctx.left() <= 0:
            break
        job_id = f"{i:07d}:{pad}"
        for request in (
            {"action": "submit", "id": job_id, "type": "nobody", "body": None},
            {"action": "cancel", "id": job_id},
        ):
            master.send(request)
            reply = master.recv_payload(10) or b"EOF"
            kind = "ok" if reply.startswith(b'{"ok":true') else _short(reply, 60)
            answers[kind] = answers.get(kind, 0) + 1
    master.close()
    ctx.note("answers: " + ", ".join(f"{k} x{v}" for k, v in answers.items()))


@attack(
    "detached-results",
    "N detached jobs answered with 1 MB results, their master gone; memory kept",
    full={"jobs": 600},
    quick={"jobs": 250},
    caps={
        "max_frame": 2 * MiB,
        "max_outbuf": 8 * MiB,
        "max_result_bytes": 32 * MiB,
        "max_outcome_bytes": 16 * MiB,
    },
    judge="end",
)
def detached_results(ctx: Ctx) -> None:
    count = ctx.n("jobs")
    ctx.conns = 0
    ctx.stores = ("results", "outcomes")
    ctx.begin()
    master = ctx.master(timeout=30)
    master.send_raw(
        _frames(b'{"action":"submit","id":%d,"type":"det","body":null,"detach":true}', range(count))
    )
    acked, _, _ = master.drain(count, timeout=30)
    master.close()
    slave = ctx.slave(timeout=30)
    slave.request({"action": "join", "type": "det"})
    result = {"action": "respond", "body": "r" * 1_000_000}
    answered = oks = 0
    while answered < acked and ctx.left() > 0:
        try:
            job = slave.recv(5)
        except TimeoutError:
            break
        if job.get("action") != "job":
            oks += 1
            continue
        slave.send(result)
        answered += 1
    slave.drain(answered - oks, timeout=5)  # the last oks
    slave.close()
    ctx.note(f"{acked} detached jobs acked, {answered} answered with 1 MB each")


@attack(
    "big-type-stats",
    "two slaves join with 9 MiB types, then a master asks for stats",
    caps={"max_frame": 16 * MiB, "max_outbuf": 32 * MiB, "max_type_bytes": 1 * KiB},
    expects=("stats answer readable",),
)
def big_type_stats(ctx: Ctx) -> None:
    ctx.conns = 3
    ctx.begin()
    slaves = []
    for letter in "ab":
        slave = ctx.slave(timeout=30)
        slave.send({"action": "join", "type": letter * (9 * MiB)})
        ctx.note(f"join {letter}: " + " | ".join(_first_frames(slave, 1, 10)))
        slaves.append(slave)
    master = ctx.master(timeout=30)
    master.send({"action": "stats"})
    payload = master.recv_payload(30)
    size = len(payload) if payload is not None else -1
    ctx.measured["stats_bytes"] = size
    ctx.check(
        "stats answer readable",
        0 <= size <= CLIENT_MAX_FRAME,
        f"stats answer {size / MiB:.1f} MiB (client frame cap {CLIENT_MAX_FRAME // MiB} MiB)",
    )
    for sock in (*slaves, master):
        sock.close()


def _filled(prefix: bytes, item: bytes, size: int) -> bytes:
    """`prefix` + item,item,... + `]}` padded with spaces to exactly `size` bytes."""
    room = size - len(prefix) - 2
    count = (room + 1) // (len(item) + 1)
    body = b",".join([item] * count)
    payload = prefix + body + b"]" + b" " * (room - len(body)) + b"}"
    assert len(payload) == size
    return payload


def _one_big_frame(ctx: Ctx, payload: bytes) -> None:
    ctx.conns = 1
    sock = ctx.master(timeout=60)
    ctx.begin()
    started = time.monotonic()
    sock.send_raw(raw_frame(payload))
    answer = _first_frames(sock, 1, min(60, max(ctx.left(), 1)))
    took = time.monotonic() - started
    ctx.measured["answer_s"] = round(took, 2)
    ctx.note(f"answer after {took:.1f} s: " + " | ".join(answer))
    sock.close()


@attack(
    "wide-frame",
    "one frame of [[],[],...] as large as --max-frame allows (16 MiB; 4 MiB quick)",
    caps={"max_frame": 16 * MiB},
    quick_caps={"max_frame": 4 * MiB},
)
def wide_frame(ctx: Ctx) -> None:
    _one_big_frame(ctx, _filled(b'{"action":"ping","x":[', b"[]", ctx.caps.max_frame))


@attack(
    "deep-frame",
    "one frame of 250-deep nests as large as --max-frame allows (16 MiB; 4 MiB quick)",
    caps={"max_frame": 16 * MiB},
    quick_caps={"max_frame": 4 * MiB},
)
def deep_frame(ctx: Ctx) -> None:
    nest = b"[" * 250 + b"]" * 250
    _one_big_frame(ctx, _filled(b'{"action":"ping","x":[', nest, ctx.caps.max_frame))


def _dropped(ctx: Ctx, port: int) -> bool:
    """Has the daemon let go of its connection to our local `port`?"""
    return not any(s.remote_port == port and s.state == 1 for s in daemon_sockets(ctx.daemon.pid))


@attack(
    "master-never-reads",
    "a master submits N jobs answered with 1 MB results and never reads",
    full={"jobs": 48},
    quick={"jobs": 24},
    caps={"max_frame": 2 * MiB, "max_outbuf": 64 * MiB, "write_timeout": 2.0},
    quick_caps={"write_timeout": 1.0},
    judge="end",
    expects=("dropped after --write-timeout",),
)
def master_never_reads(ctx: Ctx) -> None:
    count = ctx.n("jobs")
    slave = ctx.slave(timeout=30)
    slave.request({"action": "join", "type": "echo"})
    ctx.conns = 1  # the slave: the master is judged gone
    ctx.begin()
    sink = socket.socket()
    ctx.opened.append(sink)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
    sink.settimeout(10)
    sink.connect((HOST, ctx.daemon.master_port))
    sink_port = sink.getsockname()[1]
    if ctx.token is not None:
        sink.sendall(frame({"action": "auth", "token": ctx.token}))
    body = "b" * 1_000_000
    sink.settimeout(2)
    answered = 0
    try:
        for i in range(count):
            sink.sendall(frame({"action": "submit", "id": i, "type": "echo", "body": body}))
            job = slave.recv(2)
            slave.send({"action": "respond", "body": job.get("body")})
            slave.recv(2)
            answered += 1
    except (OSError, EOFError) as exc:
        # The daemon stopped reading the master (back-pressure) or dropped it: both
        # are defences; what counts is that it lets go of it in the end.
        ctx.note(f"submits stopped after {answered} results ({type(exc).__name__})")
    wait = ctx.caps.write_timeout + 2.0
    ends = time.monotonic() + wait
    while not _dropped(ctx, sink_port) and time.monotonic() < min(ends, ctx.deadline):
        time.sleep(0.1)
    dropped = _dropped(ctx, sink_port)
    ctx.check(
        "dropped after --write-timeout",
        dropped,
        f"{'dropped' if dropped else 'still held'} {wait:g} s after {answered} x 1 MB results "
        f"(write timeout {ctx.caps.write_timeout:g} s)",
    )
    sink.close()
    slave.close()


@attack(
    "refused-flood",
    "N connections over --max-connections, kept open: descriptors held for refused peers",
    full={"conns": 5_000},
    quick={"conns": 1_000},
    caps={"max_connections": 10, "max_outbuf": 1 * MiB, "max_frame": 1 * MiB},
    expects=("refused closed at once",),
)
def refused_flood(ctx: Ctx) -> None:
    count = ctx.n("conns")
    holders = [ctx.master() for _ in range(ctx.caps.max_connections - PROBE_CONNS)]
    ctx.conns = len(holders)
    ctx.begin()
    socks: list[socket.socket] = []
    for _ in range(count):
        if ctx.left() <= 0:
            break
        try:
            socks.append(ctx.connect(ctx.daemon.master_port, timeout=2))
        except OSError:
            break
    held = count_fds(ctx.daemon.pid)
    ctx.sampler.sample()
    peak = max(held, ctx.sampler.max_fds)
    if socks:
        ctx.note(f"refusal: {' | '.join(_first_frames(FrameSocket.wrap(socks[0]), 1, 2))}")
    for sock in socks:
        sock.close()
    for holder in holders:
        holder.close()
    base = ctx.baseline_fds
    ctx.measured.update(refused=len(socks), peak_fds=peak)
    ctx.check(
        "refused closed at once",
        peak <= base + 64,
        f"peak {peak:,} fds while {len(socks):,} refused peers stayed connected (before: {base})",
    )


@attack(
    "keepalive",
    "a slave holds a job without timeout (its host vanishes): TCP keepalive on accepted sockets",
    expects=("SO_KEEPALIVE on accepted sockets",),
)
def keepalive(ctx: Ctx) -> None:
    master, slave = ctx.master(), ctx.slave()
    slave.request({"action": "join", "type": "ka"})
    master.send({"action": "submit", "id": "ka", "type": "ka", "body": None})
    master.recv()
    slave.recv()  # the job: held, never answered
    ctx.conns = 2
    ctx.begin()
    ports = (ctx.daemon.master_port, ctx.daemon.slave_port)
    accepted = []
    settle = time.monotonic() + 2.0
    while time.monotonic() < settle:  # until no segment is unacknowledged
        accepted = [
            s for s in daemon_sockets(ctx.daemon.pid) if s.state == 1 and s.local_port in ports
        ]
        if not any(s.timer == 1 for s in accepted):
            break
        time.sleep(0.05)
    armed = [s for s in accepted if s.timer == 2]
    idle = max((s.timer_s for s in armed), default=0.0)
    ctx.measured.update(sockets=len(accepted), keepalive=len(armed), first_probe_s=round(idle))
    ctx.check(
        "SO_KEEPALIVE on accepted sockets",
        bool(accepted) and len(armed) == len(accepted),
        f"{len(armed)}/{len(accepted)} with a keepalive timer"
        + (f", first probe in {idle:.0f} s" if armed else ""),
    )
    ctx.note(
        "host loss itself is not simulated (it needs packet filtering); the check is the timer"
    )
    master.close()
    slave.close()


JOBS = {
    "__init__.py": "",
    "hold.py": '''\
"""Hold a job thread until the stop file appears or `hold` seconds pass (at most 60)."""
import os
import time


def run(job):
    ends = time.monotonic() + min(float(job.data.get("hold", 5)), 60.0)
    stop = job.data.get("stop_file", "")
    while time.monotonic() < ends and not os.path.exists(stop):
        time.sleep(0.05)
''',
}


@attack(
    "ws-idle",
    "N idle websocket connections under a 1,024 descriptor limit; do the Gloom ports still accept?",
    full={"conns": 1_010},
    quick={"conns": 1_010},
    caps={"ws_max_connections": 512, "ws_idle_timeout": 60.0},
    ws=True,
    nofile=1024,
    expects=("Gloom port accepts",),
)
def ws_idle(ctx: Ctx) -> None:
    count = ctx.n("conns")
    assert ctx.daemon.ws_port is not None
    ctx.conns = 0
    ctx.ws_conns = count
    ctx.begin()
    socks: list[socket.socket] = []
    request = WsClient.upgrade_request()
    for _ in range(count):
        try:
            sock = ctx.connect(ctx.daemon.ws_port, timeout=2)
            sock.sendall(request)
            socks.append(sock)
        except OSError:
            break
    pending = {sock: b"" for sock in socks}
    upgraded = 0
    ends = time.monotonic() + 5.0
    while pending and time.monotonic() < ends:
        for sock in readable(pending, 0.1):
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            got = pending[sock] + data
            if b"\r\n\r\n" in got or not data:
                upgraded += got.startswith(b"HTTP/1.1 101")
                del pending[sock]
            else:
                pending[sock] = got
    started = time.monotonic()
    try:
        answer = ctx.master(timeout=1.0).request({"action": "ping"}, timeout=1.0)
    except (OSError, EOFError) as exc:
        answer = type(exc).__name__
    took = time.monotonic() - started
    ctx.measured.update(
        ws_connected=len(socks), ws_upgraded=upgraded, fds=count_fds(ctx.daemon.pid)
    )
    ctx.check(
        "Gloom port accepts",
        answer == {"ok": True},
        f"a new master's ping: {_short(answer, 40)} after {took:.2f} s, beside {upgraded} upgraded"
        f" of {len(socks)} websocket connections",
    )
    for sock in socks:
        sock.close()


@attack(
    "ws-jobs-hangup",
    "N websocket clients each send a 1 MB job description and hang up at once",
    full={"jobs": 600, "bytes": 1_000_000},
    quick={"jobs": 250, "bytes": 1_000_000},
    caps={"ws_max_jobs": 64, "ws_max_connections": 512},
    ws=True,
    expects=("job threads capped",),
)
def ws_jobs_hangup(ctx: Ctx) -> None:
    count = ctx.n("jobs")
    assert ctx.daemon.ws_port is not None
    stop = os.path.join(ctx.work, "stop")
    ctx.conns = 0
    ctx.ws_conns = 1
    ctx.ws_jobs = count
    ctx.begin()
    sent = 0
    path = f"/?token={ctx.token}" if ctx.token else "/"
    for i in range(count):
        if ctx.left() <= 0:
            break
        description = {
            "ident": f"hold-{i}",
            "func": "hold.run",
            "progress": None,
            "hold": 30,
            "stop_file": stop,
            "pad": "",
        }
        pad = int(ctx.size["bytes"]) - len(json.dumps(description))
        description["pad"] = "x" * max(pad, 0)
        try:
            client = ctx.ws(path, timeout=5)
            client.send_text(json.dumps(description).encode())
            client.close()
            sent += 1
        except OSError as exc:
            ctx.note(f"client {i}: {exc!r}")
            break
    # Threads appear as the service reads each description; wait until they stop growing.
    last, still = -1, time.monotonic()
    ends = time.monotonic() + 5.0
    while time.monotonic() < ends:
        ctx.sampler.sample()
        if ctx.sampler.threads != last:
            last, still = ctx.sampler.threads, time.monotonic()
        elif time.monotonic() - still > 0.5:
            break
        time.sleep(0.05)
    threads = ctx.sampler.max_threads
    ctx.measured.update(sent=sent, peak_threads=threads)
    ctx.check(
        "job threads capped",
        threads <= ctx.caps.ws_max_jobs + 32,
        f"{threads} threads for {sent} jobs (job cap asked: {ctx.caps.ws_max_jobs})",
    )
    with open(stop, "w"):
        pass


@attack(
    "rejoin-flood",
    "one slave re-joins 10,000 times a second: log bytes per 10 s",
    full={"seconds": 10, "rate": 10_000},
    quick={"seconds": 2, "rate": 10_000},
    expects=("log rate-limited",),
)
def rejoin_flood(ctx: Ctx) -> None:
    seconds, rate = ctx.size["seconds"], ctx.n("rate")
    slave = ctx.slave(timeout=10)
    per_tick = rate // 10
    batch = frame({"action": "join", "type": "rejoin"}) * per_tick
    ctx.begin()
    log0, t0 = ctx.daemon.log_size(), time.monotonic()
    joins = 0
    tick = t0
    while time.monotonic() - t0 < seconds and ctx.left() > 0:
        slave.send_raw(batch)
        got, _, eof = slave.drain(per_tick, timeout=5)
        joins += got
        if eof or got < per_tick:
            break
        tick += 0.1
        if tick > time.monotonic():
            time.sleep(tick - time.monotonic())
    elapsed = time.monotonic() - t0
    logged = ctx.daemon.log_size() - log0
    per10 = logged * 10 / elapsed
    ctx.measured.update(
        joins=joins,
        joins_per_s=round(joins / elapsed),
        log_bytes=logged,
        log_bytes_per_10s=round(per10),
    )
    ctx.check(
        "log rate-limited",
        per10 <= LOG_TARGET_PER_10S,
        f"{per10 / 1e6:.2f} MB of log per 10 s at {joins / elapsed:,.0f} joins/s "
        f"(target <= {LOG_TARGET_PER_10S // KiB} KiB)",
    )
    slave.close()
