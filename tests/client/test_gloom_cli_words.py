"""What the commands say: versions, usage, variables, refusals, and jobs left behind.

Every command runs as a user runs it, in its own process, against a real
gloomd.  Each message is checked for what it must tell: what failed, why,
and what to do instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

import gloom
import gloomwire
from tests.support.daemon import Daemon, spawn_gloomd

from .test_gloom_cli import GLOOM, T, env_for, free_port, gloom_cmd, serve_in_thread

pytestmark = pytest.mark.timeout(60)

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with spawn_gloomd(env={"GLOOMD_TEST_QUIET_LOGS": "1"}) as d:
        yield d


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=30, env=env, check=False
    )


def stats(daemon: Daemon) -> dict[str, object]:
    with gloom.Master(daemon.master_addr, timeout=T) as master:
        return master.stats()  # type: ignore[no-any-return]


def queued(daemon: Daemon, job_type: str) -> int:
    rows = [r for r in stats(daemon)["types"] if r["type"] == job_type]  # type: ignore[attr-defined]
    return int(rows[0]["queued"]) if rows else 0


def wait_until(predicate: object, timeout: float = T) -> None:
    """Poll the daemon's state (one round trip a try), bounded in time."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "state not reached in time"
        time.sleep(0.02)


# ------------------------------------------------------------------ versions and usage


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        ([str(BIN / "gloom"), "--version"], "gloom"),
        ([str(BIN / "gloomd"), "--version"], "gloomd"),
        ([sys.executable, "-m", "gloom.worker", "--version"], "gloom"),
    ],
)
def test_version_from_one_place(argv: list[str], name: str) -> None:
    done = run(*argv)
    assert done.returncode == 0
    assert done.stdout == f"{name} {gloomwire.__version__}\n"


@pytest.mark.parametrize(
    ("argv", "usage", "unknown"),
    [
        (["gloom", "submit", "--prio", "3", "t", "1"], "usage: gloom submit", "--prio"),
        (["gloom", "stats", "--wat"], "usage: gloom stats", "--wat"),
        (["gloom", "schedule", "list", "--sched", "x"], "usage: gloom schedule list", "--sched"),
        (["gloom", "worker", "--typ", "t", "--handler", "m:f"], "usage: gloom worker", "--typ"),
        (
            ["gloomd", "--max-q", "5", "--master-port", "0", "--slave-port", "0", "--no-http"],
            "usage: gloomd",
            "--max-q",
        ),
    ],
)
def test_abbreviations_are_refused_with_the_commands_own_usage(
    argv: list[str], usage: str, unknown: str
) -> None:
    done = run(str(BIN / argv[0]), *argv[1:])
    assert done.returncode == 2
    assert done.stderr.startswith(usage), done.stderr
    assert f"unrecognized arguments: {unknown}" in done.stderr


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (["submit", "t", "1", "--count", "2", "--id", "x"], "usage: gloom submit"),
        (["stats", "--json", "--watch"], "usage: gloom stats"),
        (["slave", "t"], "usage: gloom slave"),
    ],
)
def test_a_subcommands_usage_error_shows_its_usage(args: list[str], usage: str) -> None:
    done = gloom_cmd(None, *args)
    assert done.returncode == 2
    assert done.stderr.startswith(usage), done.stderr
    assert "usage: gloom [-h]" not in done.stderr


# ------------------------------------------------------------------ variables


def test_gloomd_variables_point_every_command_at_the_daemon(daemon: Daemon) -> None:
    env = {**os.environ, "GLOOMD_HOST": "127.0.0.1", "GLOOMD_MASTER_PORT": str(daemon.master_port)}
    done = run(str(GLOOM), "stats", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_old_spellings_still_work_with_a_note(daemon: Daemon, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLOOM")}
    env["GLOOM_MASTER_PORT"] = str(daemon.master_port)
    done = run(str(GLOOM), "stats", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        "gloom: note: GLOOM_MASTER_PORT is deprecated: set GLOOMD_MASTER_PORT instead\n"
    )
    # GLOOM_TOKEN used to be ignored: now the daemon and the client read it too.
    token = tmp_path / "token"
    token.write_text("t0k\n")
    with spawn_gloomd("--token-file", str(token)) as secured:
        env["GLOOM_MASTER_PORT"] = str(secured.master_port)
        env["GLOOM_TOKEN"] = "t0k"
        done = run(str(GLOOM), "stats", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert "GLOOM_TOKEN is deprecated: set GLOOMD_TOKEN instead" in done.stderr


# ------------------------------------------------------------------ refusals, in words


def test_cancel_says_why_it_cannot(daemon: Daemon) -> None:
    unknown = gloom_cmd(daemon, "cancel", "never-was")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("gloom: cannot cancel never-was: ")
    assert "(unknown_id)" in unknown.stderr and "->" not in unknown.stderr

    holding = threading.Event()
    release = threading.Event()

    def hold(slave: gloom.Slave, job: gloom.SyncJob) -> None:
        holding.set()
        release.wait(T)
        slave.respond(None)

    thread = serve_in_thread(daemon, "cli-held", hold, 1)
    assert gloom_cmd(daemon, "submit", "cli-held", "1", "--detach", "--id", "held").returncode == 0
    assert holding.wait(T)
    running = gloom_cmd(daemon, "cancel", "held")
    release.set()
    thread.join(T)
    assert running.returncode == 1
    assert running.stderr == (
        "gloom: cannot cancel held: it is running (invalid_state: running);"
        " only a queued job can be cancelled\n"
    )


def test_the_wrong_port_is_named(daemon: Daemon) -> None:
    done = gloom_cmd(None, "stats", "--master-port", str(daemon.slave_port))
    assert done.returncode == 1
    assert done.stderr.startswith("gloom: this is gloomd's slave port, not its master port")
    assert "--master-port" in done.stderr


def test_a_plaintext_client_on_a_tls_port_gets_the_hint(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "chain.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    with spawn_gloomd(
        "--tls-cert", str(tmp_path / "chain.pem"), "--tls-key", str(tmp_path / "key.pem")
    ) as tls:
        done = gloom_cmd(None, "stats", "--master-port", str(tls.master_port))
    assert done.returncode == 3
    assert done.stderr.strip().endswith("closed the connection (is it TLS-only? try --tls)")


def test_failures_say_what_failed_and_why(daemon: Daemon) -> None:
    def refuse(slave: gloom.Slave, job: gloom.SyncJob) -> None:
        slave.fail("ERROR", {"type": "ValueError", "message": "no"})

    thread = serve_in_thread(daemon, "cli-fails", refuse, 1)
    with gloom.Master(daemon.master_addr, timeout=T) as master:
        master.submit("fetch-1", "cli-fails", 1)
        with pytest.raises(gloom.JobError):
            master.receive()
    thread.join(T)
    after = gloom_cmd(
        daemon, "submit", "cli-after", "1", "--id", "parse-1", "--after", "fetch-1", "-q"
    )
    assert after.returncode == 1
    assert after.stderr.startswith(
        "gloom: job 'parse-1' failed (DEPENDENCY): job 'fetch-1' in its after failed,"
        " so it never ran"
    )

    def sleepy(slave: gloom.Slave, job: gloom.SyncJob) -> None:
        time.sleep(0.5)  # past the job's own 0.1 s limit; its late answer is dropped
        slave.respond(None)

    thread = serve_in_thread(daemon, "cli-slow", sleepy, 1)
    slow = gloom_cmd(daemon, "submit", "cli-slow", "1", "--id", "s-1", "--timeout", "0.1", "-q")
    thread.join(T)
    assert slow.returncode == 1
    assert slow.stderr.startswith("gloom: job 's-1' failed (TIMEOUT): it ran past its timeout")


# ------------------------------------------------------------------ jobs left behind


def start_submit(daemon: Daemon, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(GLOOM), "submit", *args, "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(daemon),
    )


def test_ctrl_c_says_the_job_is_withdrawn(daemon: Daemon) -> None:
    proc = start_submit(daemon, "cli-ctrl-c", "1", "--id", "c-1")
    wait_until(lambda: queued(daemon, "cli-ctrl-c") == 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=T)
    assert proc.returncode == 130
    assert err.startswith("gloom: interrupted (SIGINT): job c-1 withdrawn, as gloom leaves")
    assert "--detach" in err and "Traceback" not in err
    wait_until(lambda: queued(daemon, "cli-ctrl-c") == 0)  # and it is


def test_a_detached_job_stays_queued_and_says_so(daemon: Daemon) -> None:
    proc = start_submit(daemon, "cli-kept", "1", "--id", "k-1", "--detach", "--wait-timeout", "60")
    wait_until(lambda: queued(daemon, "cli-kept") == 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=T)
    assert proc.returncode == 130
    assert err == (
        "gloom: interrupted (SIGINT): job k-1 still queued, detached:"
        " `gloom result k-1` fetches its result later\n"
    )
    timed = gloom_cmd(daemon, "submit", "cli-kept", "2", "--id", "k-2", "--detach",
                      "--wait-timeout", "0.2", "-q")  # fmt: skip
    assert timed.returncode == 1
    assert timed.stderr.startswith("gloom: stopped waiting after 0.2 s: job k-2 still queued")
    assert queued(daemon, "cli-kept") == 2
    with gloom.Master(daemon.master_addr, timeout=T) as master:
        assert master.cancel("k-1") and master.cancel("k-2")


# ------------------------------------------------------------------ stats --watch


def test_stats_watch_reconnects_across_a_restart(tmp_path: Path) -> None:
    """The watch draws on a terminal (TTY_COMPATIBLE, wide so no line wraps),
    captured in a file: the test sees the first table, since only a watch that
    was answered once knows the daemon and waits for it (one never answered is
    a wrong address, exit 3), and the notices rich prints above the table."""
    port = free_port()
    args = ("--master-port", str(port), "--no-http")
    env = {**os.environ, "GLOOMD_TEST_QUIET_LOGS": "1"}
    screen = tmp_path / "screen"
    where = f"gloomd at 127.0.0.1:{port}"

    def notices() -> list[str]:
        text = screen.read_bytes().decode(errors="replace")
        return [line.split("\x1b")[0] for line in text.split("gloom: ")[1:]]

    with spawn_gloomd(*args, env=env) as first, screen.open("ab") as out:
        watch = subprocess.Popen(
            [str(GLOOM), "stats", "--watch", "--interval", "0.1", "--master-port", str(port)],
            stdout=out,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1", "TTY_COMPATIBLE": "1", "COLUMNS": "400"},
        )
        try:
            wait_until(lambda: "queued" in screen.read_text(errors="replace"))
            assert first.stop() == 0
            wait_until(notices)
            lost = notices()[0]
            assert lost.startswith(f"{where} lost ("), lost
            assert "reconnecting in 1 s" in lost
            with spawn_gloomd(*args, env=env):
                wait_until(lambda: any(n.startswith("reconnected") for n in notices()), 40)
                *waiting, back = notices()
                assert all(f"{where} still unreachable" in n for n in waiting[1:]), waiting
                assert back.strip() == f"reconnected to {where}"
                assert watch.poll() is None  # still watching
            watch.send_signal(signal.SIGINT)
            assert watch.wait(T) == 0
        finally:
            if watch.poll() is None:
                watch.kill()
            watch.wait()
