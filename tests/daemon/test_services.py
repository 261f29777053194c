"""The HTTP port as one of gloomd's services: flags, ready line, TLS, token, shutdown.

End to end, a real `gloomd` process (`--http-port 0`, as spawn_gloomd passes);
in process, the services `gloomd.cli` builds from its flags.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import h11
import pytest
import trio
import trustme

from gloomd.cli import (
    build_parser,
    config_from_args,
    configured_services,
    shut_down,
    start_services,
)
from gloomd.config import Config
from gloomd.http import HttpService
from gloomd.server import GloomServer
from tests.support import WSJOBS
from tests.support.daemon import READY, spawn_gloomd
from tests.support.httpkit import fetch
from tests.support.wire import Peer, join

pytestmark = pytest.mark.timeout(60)

JOBS_DIR = WSJOBS


def test_ready_line_names_the_http_port_and_it_answers() -> None:
    with spawn_gloomd() as daemon:
        assert daemon.http_port is not None
        assert daemon.ready_line.endswith(f" http=127.0.0.1:{daemon.http_port}")

        async def check() -> None:
            health = await fetch(daemon.http_port, "GET", "/healthz")  # type: ignore[arg-type]
            assert (health.status, health.body) == (200, b"ok\n")
            stats = await fetch(daemon.http_port, "GET", "/api/stats")  # type: ignore[arg-type]
            assert stats.status == 200 and stats.json()["stats"]["connections"]["masters"] == 0

        trio.run(check)
        assert daemon.stop() == 0


def test_no_http_and_the_order_of_the_ready_line() -> None:
    with spawn_gloomd("--no-http") as daemon:
        assert daemon.http_port is None and " http=" not in daemon.ready_line
    with spawn_gloomd("--ws-port", "0", "--jobs-dir", str(JOBS_DIR)) as daemon:
        match = READY.search(daemon.ready_line.encode())
        assert match and match.group("ws") and match.group("http")
        assert daemon.ready_line.index(" ws=") < daemon.ready_line.index(" http=")

        async def ws_counted() -> None:
            metrics = await fetch(daemon.http_port, "GET", "/metrics")  # type: ignore[arg-type]
            assert b'gloomd_connections{port="ws"} 0.0' in metrics.body

        trio.run(ws_counted)


def test_the_http_port_takes_the_daemons_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with spawn_gloomd("--token-file", str(token)) as daemon:
        port = daemon.http_port
        assert port is not None

        async def check() -> None:
            assert (await fetch(port, "GET", "/api/stats")).status == 401
            auth = {"Authorization": "Bearer s3cret"}
            assert (await fetch(port, "GET", "/api/stats", headers=auth)).status == 200

        trio.run(check)


def test_the_http_port_takes_the_daemons_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with spawn_gloomd("--tls-cert", str(cert_file), "--tls-key", str(key_file)) as daemon:
        port = daemon.http_port
        assert port is not None

        async def check() -> None:
            reply = await fetch(port, "GET", "/healthz", ssl_context=client_ctx)
            assert (reply.status, reply.body) == (200, b"ok\n")
            # Plaintext HTTP on the TLS port: closed without an HTTP answer.
            with pytest.raises((EOFError, h11.RemoteProtocolError)):
                await fetch(port, "GET", "/healthz")

        trio.run(check)


def test_http_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "gloomd", "--master-port", "0", "--slave-port", "0",
             "--http-port", str(port)],
            capture_output=True,
            timeout=30,
        )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.decode().strip().splitlines()
    assert "event=fatal" in lines[-1] and "Address already in use" in lines[-1]


def test_metrics_max_types_must_be_at_least_one() -> None:
    argv = [sys.executable, "-m", "gloomd", "--metrics-max-types", "0"]
    proc = subprocess.run(argv, capture_output=True, timeout=30)
    assert proc.returncode == 2 and b"--metrics-max-types must be at least 1" in proc.stderr


# ------------------------------------------------------------------ in process


def parse(*argv: str) -> tuple[argparse.Namespace, Config]:
    args = build_parser().parse_args(["--master-port", "0", "--slave-port", "0", *argv])
    return args, config_from_args(args)


def test_the_services_the_flags_ask_for(tmp_path: Path) -> None:
    def names(*argv: str) -> list[str]:
        args, config = parse(*argv)
        return [s.name for s in configured_services(args, config, GloomServer(config))]

    schedule = tmp_path / "jobs.toml"
    schedule.write_text("")
    assert names() == ["gloom", "http"]
    assert names("--no-http") == ["gloom"]
    everything = ("--ws-port", "0", "--jobs-dir", str(JOBS_DIR), "--schedule", str(schedule))
    assert names(*everything) == ["gloom", "ws", "scheduler", "http"]


async def test_shutdown_drains_the_http_port_before_the_gloom_ports_halt(
    nursery: trio.Nursery,
) -> None:
    args, config = parse("--http-port", "0", "--http-host", "127.0.0.1", "--metrics-max-types", "7")
    server = GloomServer(config)
    services = configured_services(args, config, server)
    http = services[-1]
    assert isinstance(http, HttpService) and http.settings.metrics_max_types == 7
    ready = await start_services(nursery, services)
    assert ready == (
        f"gloomd ready master=127.0.0.1:{server.master_port} slave=127.0.0.1:{server.slave_port}"
        f" http=127.0.0.1:{http.port}"
    )
    slave = await join(server.slave_port, "t")
    master = await Peer.connect(server.master_port)
    assert await master.request({"action": "submit", "id": 1, "type": "t", "body": 0}) == {
        "ok": True,
        "id": 1,
    }
    await slave.recv()
    seen: list[tuple[bool, bool]] = []
    real_shutdown = server.shutdown

    async def shutdown_watched() -> None:
        # When the Gloom ports start to halt, the HTTP port already says so.
        seen.append((http.draining, server.broker is not None and server.broker.halted))
        await real_shutdown()

    server.shutdown = shutdown_watched  # type: ignore[method-assign]
    with trio.fail_after(10):
        await shut_down(services)
        assert seen == [(True, False)]
        reply = await fetch(http.port, "GET", "/healthz")
        assert (reply.status, reply.body) == (503, b"draining\n")
        assert await master.recv() == {
            "error": "job_failed", "reason": 1, "id": 1, "category": "HALTED"
        }  # fmt: skip
    await slave.aclose()
