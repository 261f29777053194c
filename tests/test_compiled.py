"""A build compiled with mypyc writes the same frames as pure Python (issue 20).

`hatch_build.py` compiles the modules listed in pyproject.toml when the
machine has a C compiler and ships pure Python otherwise, so both must
behave alike, frame for frame.  `tests.support.transcript` runs a fixed
script of frames through the core and digests every frame written; this
test runs it on a pure copy of the sources and on a compiled one, and
compares.  Compiled code checks declared types at run time, which is where
the two can part: a `float` field made 30 into 30.0 in a job frame.

The compiled side is the installed package when it is compiled (a wheel
built on a machine with a compiler); otherwise, with GLOOMD_TEST_MYPYC=1, a
scratch copy compiled here (35 s to a minute; CI sets it).  Else the test
is skipped: a pure-Python install has one path only.

`--cluster` runs `gloomd.cluster.broker.ClusterBroker`, a subclass of
`Broker`: compiled with it (an interpreted class cannot subclass a compiled
one), and run here as two compiled daemons on one Redis.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

import gloom
from tests.cluster.redis_server import RedisServer
from tests.support.across import square_across
from tests.support.daemon import spawn_gloomd

ROOT = Path(__file__).resolve().parent.parent


def compiled_modules() -> list[str]:
    """The modules the build hook compiles (pyproject.toml), as paths."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    hook = config["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]
    return list(hook["include"])


def installed_compiled() -> bool:
    spec = importlib.util.find_spec("gloomd.broker")
    return spec is not None and str(spec.origin).endswith(".so")


def can_compile() -> bool:
    """A C compiler and the interpreter's headers: what the build hook needs too."""
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which("cc") is not None and headers.exists()


def copy_sources(where: Path) -> None:
    """gloomwire/ and gloomd/ as .py files only, and the transcript beside them."""
    for package in ("gloomwire", "gloomd"):
        shutil.copytree(
            ROOT / package,
            where / package,
            ignore=lambda _dir, names: [n for n in names if n.endswith((".so", ".pyc"))],
        )
    shutil.copy(ROOT / "tests" / "support" / "transcript.py", where / "transcript.py")


def digest(where: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "transcript.py"],
        cwd=where,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ""},
    )
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def compile_copy(where: Path) -> None:
    copy_sources(where)
    (where / "setup_mypyc.py").write_text(
        "from setuptools import setup\n"
        "from mypyc.build import mypycify\n"
        f"setup(name='scratch', py_modules=[], ext_modules=mypycify({compiled_modules()!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "setup_mypyc.py", "build_ext", "--inplace"],
        cwd=where,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    # mypyc's own errors (a construct it cannot compile) are the useful part.
    errors = [line for line in done.stdout.splitlines() if "error" in line.lower()]
    assert done.returncode == 0, "\n".join(errors[-20:]) or done.stderr[-4000:]


def test_the_transcript_covers_the_protocol() -> None:
    from tests.support.transcript import transcript

    frames = [frame for _, frame in transcript()]
    text = b"\n".join(frames)
    words = [b"invalid_json", b"missing_field", b"invalid_action", b"unknown_action"]
    words += [b"invalid_state", b'"TIMEOUT"', b"job_error", b'"timeout":30', b'"stats"']
    words += [b'"kicked"', b'"jobs"', b'"attached"', b'"attempt":2', b'"reason":"delay"']
    words += [b'"id":"slow","type":"slow","priority":0,"state":"delayed"']
    for word in words:
        assert word in text
    assert transcript() == transcript()  # deterministic, or no digest could be compared


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where `python transcript.py` and `python -m gloomd` import the
    compiled gloomd: the installed one (an empty folder but the transcript),
    or a copy compiled here once for this module's tests."""
    if installed_compiled():
        where = tmp_path_factory.mktemp("installed")
        shutil.copy(ROOT / "tests" / "support" / "transcript.py", where / "transcript.py")
    elif os.environ.get("GLOOMD_TEST_MYPYC"):
        if not can_compile():
            pytest.skip("GLOOMD_TEST_MYPYC=1 but no C compiler or no Python.h (python3-dev)")
        where = tmp_path_factory.mktemp("compiled")
        compile_copy(where)
        assert list(where.glob("gloomd/broker*.so")), "mypyc built nothing"
    else:
        pytest.skip("a pure-Python install (set GLOOMD_TEST_MYPYC=1 to compile a copy)")
    return where


#: The first test to use `compiled` compiles it (35 s idle, minutes on a busy
#: machine): pytest-timeout counts a fixture's setup in the test's time.
COMPILING = pytest.mark.timeout(900)


@COMPILING
def test_compiled_and_pure_write_the_same_frames(tmp_path: Path, compiled: Path) -> None:
    pure = tmp_path / "pure"
    copy_sources(pure)
    assert digest(compiled) == digest(pure)


def test_the_build_installs_what_mypyc_reads() -> None:
    """mypy follows the compiled modules' imports into coredis, an extra:
    the build hook must install it, or mypyc fails and the wheel is pure."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    hook = config["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]
    cluster = config["project"]["optional-dependencies"]["cluster"]
    assert set(cluster) <= set(hook["dependencies"])
    assert "gloomd/cluster/broker.py" in hook["include"]


@COMPILING
async def test_a_compiled_cluster(compiled: Path, redis_server: RedisServer) -> None:
    """`--cluster` on the compiled build (an interpreted class cannot subclass
    the compiled `Broker`, so `ClusterBroker` is compiled too): a job submitted
    on one compiled daemon runs on a slave of another, over one Redis."""
    where = subprocess.run(
        [sys.executable, "-c", "import gloomd.cluster.broker as b; print(b.__file__)"],
        cwd=compiled,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert where.stdout.strip().endswith(".so"), where.stdout
    cluster = ("--cluster", redis_server.url, "--cluster-name", f"compiled{os.getpid()}")
    env = {"PYTHONPATH": ""}
    with (
        spawn_gloomd(*cluster, cwd=compiled, env=env) as one,
        spawn_gloomd(*cluster, cwd=compiled, env=env) as two,
    ):
        await square_across(one.master_port, two.slave_port)
        assert one.stop() == 0 and two.stop() == 0


@COMPILING
async def test_a_compiled_daemon_restores_its_journal(compiled: Path, tmp_path: Path) -> None:
    """Replay builds jobs outside the compiled modules (`gloomd.records`): a
    compiled `Job` must be built through its `__init__` there too.  Killed
    with jobs queued, dead and detached-with-retries, a compiled daemon comes
    back with every one of them."""
    journal = str(tmp_path / "j.db")
    env = {"PYTHONPATH": ""}
    with spawn_gloomd("--journal", journal, cwd=compiled, env=env) as daemon:
        async with gloom.open_master("127.0.0.1", daemon.master_port) as master:
            await master.submit("later", {"n": 1}, id="q1", detach=True, priority=3)
            await master.submit("later", 2, id="q2", detach=True, retries=2, backoff=0.5)
            await master.submit("later", 3, id="q3", detach=True)
        daemon.stop(signal.SIGKILL)
    with spawn_gloomd("--journal", journal, cwd=compiled, env=env) as daemon:
        async with (
            gloom.open_master("127.0.0.1", daemon.master_port) as master,
            gloom.open_slave("127.0.0.1", daemon.slave_port) as slave,
        ):
            await slave.join("later")
            seen = []
            for _ in range(3):
                work = await slave.next_job()
                seen.append((work.id, work.body))
                await work.respond(None)
            assert seen == [("q1", {"n": 1}), ("q2", 2), ("q3", 3)]
            stats = await master.stats()
            assert stats["totals"]["completed"] == 3, stats
        assert daemon.stop() == 0
