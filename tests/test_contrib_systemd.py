"""contrib/gloomd.service: systemd accepts it, and it keeps its hardening.

`systemd-analyze verify` needs the ExecStart binary to exist, so the test
points it at this environment's `gloomd` script; it reports unknown keys
and bad values only as messages (exit status 0), so any message fails.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gloomd.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "gloomd.service"
INSTALLED_AT = "/usr/local/bin/gloomd"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key, []).append(value)
    return found


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    gloomd = Path(sys.executable).with_name("gloomd")
    assert gloomd.exists()
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_AT} " in text
    unit = tmp_path / "gloomd.service"
    unit.write_text(text.replace(INSTALLED_AT, str(gloomd)))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "" and done.stdout.strip() == "", done.stderr + done.stdout


def test_unit_is_hardened() -> None:
    found = directives()
    expected = {
        "DynamicUser": "yes",
        "StateDirectory": "gloomd",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
        "KillSignal": "SIGTERM",
    }
    for key, value in expected.items():
        assert found.get(key) == [value], key
    assert int(found["LimitNOFILE"][0]) > 10_000  # above the default --max-connections


def test_exec_start_flags() -> None:
    """Every flag parses; the journal lives in the StateDirectory."""
    (command,) = directives()["ExecStart"]
    argv = shlex.split(command)
    assert argv[0] == INSTALLED_AT
    args = build_parser().parse_args(argv[1:])
    assert args.host == "127.0.0.1"
    assert (args.http_host, args.http_port, args.no_http) == ("127.0.0.1", 9997, False)
    assert str(args.journal).startswith("/var/lib/gloomd/")
    assert args.sync == "full"
    journal = argv[argv.index("--journal") + 1]
    assert journal.startswith("/var/lib/gloomd/")  # StateDirectory=gloomd: writable there only
