"""The worker runner against a daemon that wants a token and/or TLS.

Every connection the runner opens (the start-up probe, one slave link per
pool slot, the master connection that reads the backlog for burst and
scaling) must present the token and speak TLS; a refused token is a clear,
final error, at startup and after a reconnect.  Real in-process GloomServers
on 127.0.0.1, trustme certificates, real pool processes.
"""

from __future__ import annotations

import socket
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

import gloom
from gloom import TransportError, Unauthorized
from gloom.worker import Runner, WorkerOptions, serve
from gloom.worker.link import socket_stream
from gloomd.config import Config
from gloomd.server import GloomServer

from .workerjobs.support import (
    TESTS_DIR,
    StartWorker,
    gone,
    wait_gone,
    worker_options,
)

pytestmark = pytest.mark.timeout(30)

TOKEN = "worker-s3cret"
HOST = "127.0.0.1"
GLOOM = Path(sys.executable).with_name("gloom")


@dataclass
class Certs:
    server: ssl.SSLContext
    client: ssl.SSLContext
    ca_file: Path


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    ca = trustme.CA()
    cert = ca.issue_cert(HOST, "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Certs(server_ctx, client_ctx, ca_file)


@pytest.fixture
def no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLOOMD_TOKEN", raising=False)


async def check_gone(runner: Runner) -> None:
    for pid in runner.pids_ever:
        await wait_gone(pid)
        assert gone(pid), f"pool process {pid} outlived its runner"


# ---------------------------------------------------------------- the happy path


async def test_token_and_tls_runner_completes_jobs(
    make_server: Any, certs: Certs, start_worker: StartWorker, no_env_token: None
) -> None:
    server = await make_server(token=TOKEN, ssl_context=certs.server)
    runner = await start_worker(
        "echo_job", server=server, concurrency=2, token=TOKEN, ssl_context=certs.client
    )
    async with gloom.open_master(
        HOST, server.master_port, token=TOKEN, ssl_context=certs.client
    ) as master:
        jobs = [await master.submit("w", {"n": i}) for i in range(6)]
        results = [await job.wait(10) for job in jobs]
        assert [r["body"] for r in results] == [{"n": i} for i in range(6)]
        assert {r["pid"] for r in results} <= set(runner.live_pids())
        stats = await master.stats()
        assert stats["connections"]["slaves"] == 2
    assert runner.stats.succeeded == 6 and runner.stats.reconnects == 0
    # Each slot's link is TLS over a TCP socket that still has NODELAY and
    # keepalive set (the options live on the socket under the TLS layer).
    for slot in runner.slots.values():
        assert slot.link is not None
        inner = slot.link.stream
        assert isinstance(getattr(inner, "stream", None), trio.SSLStream)
        tcp = socket_stream(inner)
        assert tcp is not None
        assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert tcp.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


async def test_burst_and_scaling_read_the_backlog_over_tls_with_the_env_token(
    make_server: Any, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Burst and scaling talk to the master port too: that connection must
    # authenticate as well, here with $GLOOMD_TOKEN and a CA file.
    server = await make_server(token=TOKEN, ssl_context=certs.server)
    monkeypatch.setenv("GLOOMD_TOKEN", TOKEN)
    async with gloom.open_master(HOST, server.master_port, tls_ca=certs.ca_file) as master:
        jobs = await master.submit_many([{"type": "w", "body": i} for i in range(5)])
        options = worker_options(server, min=1, max=2, scale_interval=0.05)
        del options["concurrency"]
        with trio.fail_after(20):
            stats = await serve(
                "w", "workerjobs.jobs:echo", burst=True, tls_ca=certs.ca_file, **options
            )
        assert stats.succeeded == 5
        assert [await job.wait(1) for job in jobs] == list(range(5))
        assert (await master.stats())["connections"]["slaves"] == 0


# ---------------------------------------------------------------- refusals at startup


@pytest.mark.parametrize("token", ["wrong-token", None], ids=["wrong", "missing"])
async def test_refused_token_fails_fast_at_startup(
    make_server: Any, no_env_token: None, token: str | None
) -> None:
    server = await make_server(token=TOKEN)
    runner = Runner(
        WorkerOptions(
            **worker_options(server, type="w", handler="workerjobs.jobs:echo", token=token)
        )
    )
    with trio.fail_after(10):
        with pytest.raises(Unauthorized) as info:
            await runner.run()
    assert info.value.reason == "auth"
    assert "refused the token" in str(info.value)
    assert not runner.slots and runner.stats.joins == 0
    await check_gone(runner)


async def test_tls_without_the_ca_is_a_clear_transport_error(
    make_server: Any, certs: Certs
) -> None:
    server = await make_server(token=TOKEN, ssl_context=certs.server)
    # TLS on, but trusting only the system's CAs: the trustme certificate fails.
    runner = Runner(
        WorkerOptions(
            **worker_options(
                server, type="w", handler="workerjobs.jobs:echo", token=TOKEN, tls=True
            )
        )
    )
    with trio.fail_after(10):
        with pytest.raises(TransportError) as info:
            await runner.run()
    assert "TLS handshake" in str(info.value) and "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    await check_gone(runner)


@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
async def test_plaintext_runner_on_a_tls_port_is_told_so(
    make_server: Any, certs: Certs, no_env_token: None, token: str | None
) -> None:
    # Without a token the TCP connect succeeds, so only the probe's ping can
    # tell that the daemon will never answer in plaintext; with one, the auth
    # exchange is where the daemon hangs up.
    server = await make_server(ssl_context=certs.server, token=token)
    runner = Runner(
        WorkerOptions(
            **worker_options(server, type="w", handler="workerjobs.jobs:echo", token=token)
        )
    )
    with trio.fail_after(10):
        with pytest.raises(TransportError) as info:
            await runner.run()
    assert "TLS-only? try --tls" in str(info.value)
    assert runner.stats.joins == 0
    await check_gone(runner)


# ---------------------------------------------------------------- refusal after a reconnect


@pytest.mark.parametrize(
    ("first_token", "second_token"),
    [(TOKEN, "rotated"), (None, TOKEN)],
    ids=["rotated", "token-added"],
)
async def test_token_refused_on_reconnect_stops_the_runner(
    nursery: trio.Nursery, no_env_token: None, first_token: str | None, second_token: str
) -> None:
    async with trio.open_nursery() as first_run:
        first_server = GloomServer(Config(master_port=0, slave_port=0, token=first_token))
        first: GloomServer = await first_run.start(first_server.run)
        ports = {"master_port": first.master_port, "slave_port": first.slave_port}
        finished = trio.Event()
        outcome: list[BaseException] = []

        async def worker(task_status: trio.TaskStatus[Runner]) -> None:
            try:
                await serve(
                    "w",
                    "workerjobs.jobs:echo",
                    token=first_token,
                    task_status=task_status,
                    **worker_options(first),
                )
            except BaseException as exc:
                outcome.append(exc)
            finally:
                finished.set()

        runner: Runner = await nursery.start(worker)
        assert runner.stats.joins == 2
        first_run.cancel_scope.cancel()
    # The daemon comes back on the same ports with another token.
    await nursery.start(GloomServer(Config(**ports, token=second_token)).run)
    with trio.fail_after(15):
        await finished.wait()
    assert len(outcome) == 1 and isinstance(outcome[0], Unauthorized), outcome
    kinds = [e.kind for e in runner.events]
    assert "unauthorized" in kinds and "stopping" in kinds
    # It gave up on the first refusal per slot instead of retrying forever.
    assert kinds.count("unauthorized") <= 2
    assert runner.stats.joins == 2 and not runner.slots
    await check_gone(runner)


# ---------------------------------------------------------------- the command


def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / f"token-{token}"
    path.write_text(token + "\n")
    return path


def worker_command(server: GloomServer, *extra: str) -> list[str]:
    return [
        str(GLOOM), "worker", "--type", "cli", "--handler", "workerjobs.jobs:echo",
        "--import-path", TESTS_DIR, "--concurrency", "1", "--grace", "1", "--log-level", "WARNING",
        "--slave-port", str(server.slave_port), "--master-port", str(server.master_port), *extra,
    ]  # fmt: skip


async def test_gloom_worker_with_token_file_and_tls_completes_a_job(
    make_server: Any, certs: Certs, tmp_path: Path, no_env_token: None
) -> None:
    server = await make_server(token=TOKEN, ssl_context=certs.server)
    async with gloom.open_master(
        HOST, server.master_port, token=TOKEN, tls_ca=certs.ca_file
    ) as master:
        job = await master.submit("cli", {"from": "cli"})
        cmd = worker_command(
            server,
            "--burst",
            "--token-file",
            str(token_file(tmp_path, TOKEN)),
            "--tls",
            "--tls-ca",
            str(certs.ca_file),
        )
        with trio.fail_after(20):
            proc = await trio.run_process(cmd, capture_stderr=True, check=False)
        assert proc.returncode == 0, proc.stderr.decode()
        assert await job.wait(1) == {"from": "cli"}


async def test_gloom_worker_with_a_wrong_token_exits_1_with_one_line(
    make_server: Any, certs: Certs, tmp_path: Path, no_env_token: None
) -> None:
    server = await make_server(token=TOKEN, ssl_context=certs.server)
    cmd = worker_command(
        server, "--token-file", str(token_file(tmp_path, "nope")), "--tls-ca", str(certs.ca_file)
    )
    with trio.fail_after(20):
        proc = await trio.run_process(cmd, capture_stderr=True, check=False)
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1, lines
    assert len(lines) == 1 and lines[0].startswith("gloom worker: gloomd refused the token"), lines


async def test_gloom_worker_with_a_missing_token_file_is_a_usage_error(
    make_server: Any, tmp_path: Path
) -> None:
    server = await make_server(token=TOKEN)
    cmd = worker_command(server, "--token-file", str(tmp_path / "absent"))
    with trio.fail_after(20):
        proc = await trio.run_process(cmd, capture_stderr=True, check=False)
    assert proc.returncode == 2
    assert "cannot read token file" in proc.stderr.decode()
