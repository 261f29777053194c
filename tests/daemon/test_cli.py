"""The `gloomd` process: start-up, signals, HALTED at shutdown, bad ports."""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys

import pytest

from tests.support.daemon import spawn_gloomd
from tests.support.wire import frame

pytestmark = pytest.mark.timeout(60)


def recv_frame(sock: socket.socket) -> dict | None:
    def read(n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    header = read(4)
    if header is None:
        return None
    payload = read(struct.unpack(">I", header)[0])
    assert payload is not None
    return json.loads(payload)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_shutdown_halts_unanswered_jobs_and_exits_zero(sig: int) -> None:
    with spawn_gloomd() as daemon:
        with connect(daemon.slave_port) as slave, connect(daemon.master_port) as master:
            slave.sendall(frame({"action": "join", "type": "t"}))
            assert recv_frame(slave) == {"ok": True}
            for job_id in ("running", "queued"):
                master.sendall(frame({"action": "submit", "id": job_id, "type": "t", "body": None}))
                assert recv_frame(master) == {"ok": True, "id": job_id}
            assert recv_frame(slave)["id"] == "running"  # type: ignore[index]
            assert daemon.stop(sig) == 0
            halted = [recv_frame(master), recv_frame(master)]
            assert sorted(f["id"] for f in halted) == ["queued", "running"]  # type: ignore[index]
            assert all(
                f == {"error": "job_failed", "reason": f["id"], "id": f["id"], "category": "HALTED"}
                for f in halted
            )  # type: ignore[index]
            assert recv_frame(master) is None  # then a clean EOF
            assert recv_frame(slave) is None


def test_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "gloomd", "--master-port", str(port), "--slave-port", "0"],
            capture_output=True,
            timeout=30,
        )
    assert proc.returncode == 1
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "event=fatal" in lines[0] and "Address already in use" in lines[0]


def test_help_lists_the_limits() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gloomd", "--help"], capture_output=True, timeout=30, text=True
    ).stdout
    for flag in (
        "--host",
        "--master-port",
        "--slave-port",
        "--max-frame",
        "--max-queued",
        "--max-connections",
        "--log-level",
    ):
        assert flag in out


def test_version_has_one_place() -> None:
    import gloomwire
    from gloomd import __version__
    from gloomd.http.buildinfo import version

    out = subprocess.run(
        [sys.executable, "-m", "gloomd", "--version"], capture_output=True, timeout=30, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"gloomd {gloomwire.__version__}"
    assert __version__ == version() == gloomwire.__version__
    from importlib import metadata

    assert metadata.version("gloomd") == gloomwire.__version__  # pyproject reads it from there


def test_structured_log_lines() -> None:
    with spawn_gloomd("--log-level", "debug", capture_logs=True) as daemon:
        with connect(daemon.slave_port) as slave, connect(daemon.master_port) as master:
            slave.sendall(frame({"action": "join", "type": "t"}))
            recv_frame(slave)
            master.sendall(frame({"action": "submit", "id": 1, "type": "t", "body": None}))
            recv_frame(master)
            recv_frame(slave)
            slave.close()  # lost mid-job: the daemon requeues and logs it
            requeued = 0
            while requeued != 1:  # each round trip is bounded by the socket timeout
                master.sendall(frame({"action": "stats"}))
                requeued = recv_frame(master)["stats"]["totals"]["requeued"]  # type: ignore[index]
        assert daemon.stop() == 0
        assert daemon.proc.stderr is not None
        log = daemon.proc.stderr.read().decode()
    for event in (
        "event=listening",
        "event=connect role=slave",
        "event=join",
        "event=submit",
        "event=requeue",
        "event=disconnect",
        "event=shutdown",
    ):
        assert event in log, event


def test_gc_policy_freezes_startup_heap_and_defers_full_collections() -> None:
    code = (
        "import gc; from gloomd.cli import _tune_gc; _tune_gc(); "
        "print(gc.get_threshold()[2], gc.get_freeze_count() > 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["1000000", "True"]


def test_gc_interval_must_be_positive() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gloomd", "--gc-interval", "0"], capture_output=True, timeout=30
    )
    assert proc.returncode == 2
    assert b"--gc-interval must be positive" in proc.stderr


#: Every flag of issue 18, the Config / BrokerLimits field it sets, and a value.
HARDENING_FLAGS = [
    ("--output-high-water", "output_high_water", 4096),
    ("--write-timeout", "write_timeout", 2.5),
    ("--keepalive-idle", "keepalive_idle", 30),
    ("--keepalive-interval", "keepalive_interval", 5),
    ("--keepalive-count", "keepalive_count", 4),
    ("--max-frame-values", "limits.max_values", 5000),
    ("--max-id-size", "limits.max_id", 64),
    ("--max-type-size", "limits.max_type", 32),
    ("--max-after", "limits.max_after", 7),
    ("--max-result-bytes", "limits.max_result_bytes", 1 << 20),
    ("--max-outcome-bytes", "limits.max_outcome_bytes", 1 << 19),
    ("--max-stats-types", "limits.max_stats_types", 12),
    ("--log-rate", "limits.log_rate", 2.0),
    ("--log-burst", "limits.log_burst", 9),
]


@pytest.mark.parametrize("flag,field,value", HARDENING_FLAGS)
def test_every_cap_has_a_flag_and_a_documented_default(
    flag: str, field: str, value: object
) -> None:
    from pathlib import Path

    from gloomd.cli import build_parser, config_from_args

    args = build_parser().parse_args([flag, str(value)])
    target: object = config_from_args(args)
    for part in field.split("."):
        target = getattr(target, part)
    assert target == value
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    limits = readme.split("### Limits against broken")[1]
    assert f"`{flag}`" in limits


@pytest.mark.parametrize(
    "argv",
    [
        ["--write-timeout", "nan"],
        ["--write-timeout", "inf"],
        ["--result-ttl", "0"],
        ["--max-id-size", "0"],
        ["--output-high-water", "0"],
        ["--max-after", "-1"],
        ["--log-rate", "-1"],
        ["--shutdown-grace", "nan"],
    ],
)
def test_bad_limits_are_refused_at_start(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from gloomd.cli import main

    assert main([*argv, "--master-port", "0", "--slave-port", "0"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"gloomd: {argv[0]} must ")
