"""The conformance tests run against the embedded broker and the cluster alike.

Issue 16: "one set of rules ... the conformance tests run against the
embedded broker and the cluster alike".  The modules in `CONFORMANCE` take
`gloomd_server` / `make_server` twice: once as the embedded daemon, once as
a cluster of two daemons on the session's Redis with the test's peers
spread over both: masters connect to daemon 1 and slaves to daemon 2, so
every job, result, progress and failure crosses from one daemon to the
other through Redis.  The tests themselves do not change: a rule that holds
for one daemon must hold for the cluster, frame for frame.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from gloomd.cluster.settings import ClusterSettings
from gloomd.config import Config
from gloomd.server import GloomServer
from tests.cluster.redis_server import RedisServer

#: The protocol's and the lifecycle's end-to-end tests.
CONFORMANCE = frozenset(
    {
        "test_protocol_e2e",
        "test_lifecycle_e2e",
        "test_lifecycle_edges_e2e",
        "test_failures_e2e",
        "test_faults_e2e",
    }
)
BROKERS = ("embedded", "cluster")

_names = itertools.count(1)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    uses = {"gloomd_server", "make_server"} & set(metafunc.fixturenames)
    if module in CONFORMANCE and uses:
        metafunc.parametrize("broker", BROKERS, indirect=True)


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """Which broker the test's daemon runs: "embedded" unless parametrized."""
    return str(getattr(request, "param", "embedded"))


class ClusterPair:
    """Two daemons of one cluster seen as one server: masters on the first,
    slaves on the second."""

    def __init__(self, masters: GloomServer, slaves: GloomServer) -> None:
        self.daemons = (masters, slaves)
        self.master_port = masters.master_port
        self.slave_port = slaves.slave_port


@pytest.fixture
def make_server(
    nursery: trio.Nursery, wire_peers: None, broker: str, request: pytest.FixtureRequest
) -> Callable[..., Awaitable[Any]]:
    """`await make_server(**config)`: the embedded daemon, or (broker
    "cluster") a `ClusterPair` on the session's Redis in a cluster of the
    test's own, both daemons with the same settings."""

    async def one(**settings: Any) -> GloomServer:
        config = Config(master_port=0, slave_port=0, **settings)
        server: GloomServer = await nursery.start(GloomServer(config).run)
        return server

    if broker == "embedded":
        return one
    redis: RedisServer = request.getfixturevalue("redis_server")
    name = f"e2e{os.getpid()}x{next(_names)}"

    async def pair(**settings: Any) -> ClusterPair:
        cluster = ClusterSettings(redis.url, name=name)
        return ClusterPair(
            await one(cluster=cluster, **settings), await one(cluster=cluster, **settings)
        )

    return pair


@pytest.fixture
async def gloomd_server(make_server: Callable[..., Awaitable[Any]]) -> AsyncIterator[Any]:
    """A daemon (or a `ClusterPair`) on free loopback ports, stopped at the end."""
    yield await make_server()
