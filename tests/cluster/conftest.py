"""Fixtures of the cluster tests: a real Redis, and engines ("daemons") on it.

One redis-server serves the whole session; each test gets a cluster name of
its own (its own keys), so tests do not see each other.  Tests that stop or
kill Redis start their own (`redis_factory`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from gloomd.cluster.engine import ClusterEngine
from gloomd.cluster.settings import ClusterLimits, ClusterSettings
from gloomwire import codec
from tests.cluster.redis_server import REDIS_SERVER, RedisServer
from tests.support.daemon import spawn_gloomd

if not os.path.exists(REDIS_SERVER):
    if os.environ.get("CI"):
        # .ci/run installs it: missing there is a failure, never a silent skip.
        pytest.fail("redis-server is missing under CI: .ci/install-redis should have installed it")
    pytest.skip("no redis-server (bash .ci/install-redis)", allow_module_level=True)

_names = itertools.count(1)

#: coredis 6.9 leaves the anyio memory streams of a connection whose connect
#: or handshake failed (Redis down, a wrong password) to the garbage
#: collector, which warns; nothing else leaks.
COREDIS_STREAMS = "ignore:Unclosed <MemoryObject(Send|Receive)Stream:ResourceWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.filterwarnings(COREDIS_STREAMS))


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Servers of the test's own (restarted, killed); stopped at the end."""
    servers: list[RedisServer] = []

    def make(**options: Any) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", **options)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()


class Mailbox:
    """What an engine's inbox delivered, waited for without sleeping."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = trio.Event()

    def __call__(self, batch: list[Any]) -> None:
        self.items.extend(batch)
        self._changed.set()
        self._changed = trio.Event()

    async def take(self, count: int = 1, timeout: float = 5.0) -> list[Any]:
        """The next `count` deliveries, in order (fails after `timeout`)."""
        with trio.fail_after(timeout):
            while len(self.items) < count:
                await self._changed.wait()
        taken, self.items = self.items[:count], self.items[count:]
        return taken

    async def frames(self, count: int = 1, timeout: float = 5.0) -> list[tuple[int, Any]]:
        """The next `count` deliveries as (peer, decoded frame)."""
        return [(d.peer, decode(d.frame)) for d in await self.take(count, timeout)]


def decode(frame: bytes) -> Any:
    """A framed reply as JSON (checking the length prefix)."""
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    return codec.loads(frame[4:])


class Daemon:
    """An engine under test with its mailbox."""

    def __init__(self, engine: ClusterEngine, mailbox: Mailbox) -> None:
        self.engine = engine
        self.mailbox = mailbox


@pytest.fixture
def cluster_name() -> str:
    return f"t{os.getpid()}x{next(_names)}"


@pytest.fixture
def make_daemon(
    nursery: trio.Nursery, redis_server: RedisServer, cluster_name: str
) -> Callable[..., Awaitable[Daemon]]:
    """`await make_daemon()`: an engine on the session's Redis, in this
    test's cluster; `url=`, `limits=` and settings may be given."""

    async def start(
        *,
        url: str | None = None,
        limits: ClusterLimits | None = None,
        scope: trio.CancelScope | None = None,
        **settings: Any,
    ) -> Daemon:
        """`scope`: the engine runs inside it; cancelling it stops the
        "daemon" dead, as a SIGKILL would (no halt, its lease left to lapse)."""
        mailbox = Mailbox()
        engine = ClusterEngine(
            ClusterSettings(url or redis_server.url, name=cluster_name, **settings),
            limits,
            on_inbox=mailbox,
        )
        await nursery.start(_run_engine, engine, scope or trio.CancelScope())
        return Daemon(engine, mailbox)

    return start


async def _run_engine(
    engine: ClusterEngine,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[ClusterEngine] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        await engine.run(task_status=task_status)


@pytest.fixture
async def daemon(make_daemon: Callable[..., Awaitable[Daemon]]) -> AsyncIterator[Daemon]:
    yield await make_daemon()


# ---------------------------------------------------------------- gloomd daemons on one Redis


@pytest.fixture
def make_cluster_server(
    make_server: Callable[..., Awaitable[Any]], redis_server: RedisServer, cluster_name: str
) -> Callable[..., Awaitable[Any]]:
    """`await make_cluster_server()`: a gloomd server (`GloomServer`, in this
    test's trio run, on free ports) in this test's cluster on the session's
    Redis; `url=` another Redis, `lease=` its lease, other `Config` fields
    as keywords.  Call it N times for N daemons."""

    async def start(*, url: str | None = None, lease: float = 5.0, **config: Any) -> Any:
        settings = ClusterSettings(url or redis_server.url, name=cluster_name, lease=lease)
        return await make_server(cluster=settings, **config)

    return start


@pytest.fixture
def gloomd_cluster(
    redis_server: RedisServer, cluster_name: str
) -> Iterator[Callable[..., list[Any]]]:
    """`gloomd_cluster(n, *flags)`: n `gloomd` processes (tests.support.daemon
    `spawn_gloomd`) in this test's cluster on the session's Redis; their
    `master_port`/`slave_port`/`http_port` to connect to, `stop()` / `proc` to stop or
    kill one.  `url=` another Redis.  All are stopped when the test ends."""
    with contextlib.ExitStack() as stack:

        def start(count: int, *flags: str, url: str | None = None) -> list[Any]:
            cluster = ("--cluster", url or redis_server.url, "--cluster-name", cluster_name)
            return [stack.enter_context(spawn_gloomd(*cluster, *flags)) for _ in range(count)]

        yield start
