"""Reaching Redis: rediss://, a password in the URL or in a file."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trustme

from gloomd.cluster.errors import BackendUnavailable
from gloomd.cluster.settings import ClusterSettings, read_password
from gloomd.cluster.steps import JobSpec
from tests.cluster.conftest import Daemon
from tests.cluster.redis_server import RedisServer

MakeDaemon = Callable[..., Awaitable[Daemon]]


def test_settings_check_the_url_and_read_a_password_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="redis://"):
        ClusterSettings("http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="lease"):
        ClusterSettings("redis://127.0.0.1:6379", lease=0)
    secret = tmp_path / "pw"
    secret.write_text("s3cret\nignored\n")
    assert read_password(str(secret)) == "s3cret"
    options = ClusterSettings("redis://h:1/0", password_file=str(secret)).client_options()
    assert options["password"] == "s3cret"


async def test_tls_and_a_password_in_the_url(
    make_daemon: MakeDaemon, redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(files[0]))
    cert.private_key_pem.write_to_path(str(files[1]))
    ca.cert_pem.write_to_path(str(files[2]))
    server = redis_factory(password="pw-1", tls=files)
    assert server.url.startswith("rediss://:pw-1@")
    d = await make_daemon(url=server.url)
    assert (await d.engine.submit(1, JobSpec("over-tls", "t", None))).code == "ok"


async def test_a_password_from_a_file_and_a_wrong_one(
    make_daemon: MakeDaemon, redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_factory(password="pw-2")
    bare = f"redis://127.0.0.1:{server.port}/0"
    secret = tmp_path / "pw"
    secret.write_text("pw-2\n")
    d = await make_daemon(url=bare, password_file=str(secret))
    assert (await d.engine.submit(1, JobSpec("j", "t", None))).code == "ok"
    secret.write_text("wrong\n")
    with pytest.raises(BackendUnavailable):
        await make_daemon(url=bare, password_file=str(secret))
