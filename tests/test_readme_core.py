"""README's quick start and protocol example run as written (a daemon on free ports)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

import gloomwire
from tests.support.daemon import spawn_gloomd

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_protocol_example_in_readme_runs() -> None:
    text = README.read_text()
    section = text.split("The same in Python, with nothing but the standard library:", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "README lost its protocol example"
    with spawn_gloomd() as daemon:
        source = (
            code.group(1)
            .replace("9999", str(daemon.slave_port))
            .replace("9998", str(daemon.master_port))
        )
        namespace: dict[str, object] = {}
        exec(compile(source, "README.md", "exec"), namespace)
        for name in ("slave", "master"):
            namespace[name].close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["make serve", "make test"])
def test_quick_start_commands_are_documented(command: str) -> None:
    assert command in README.read_text()


def test_the_activation_block_puts_the_commands_on_path(tmp_path: pathlib.Path) -> None:
    """Quick start's `. .venv/bin/activate` block, run in a checkout whose .venv is this one."""
    text = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(\. \.venv/bin/activate\n.*?)```", text, re.S)
    assert block, "README's quick start lost the activation block"
    (tmp_path / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/bin:/bin"  # nothing of the venv's on it before activation
    done = subprocess.run(
        ["bash", "-e", "-c", block.group(1)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"gloom {gloomwire.__version__}"


def test_headings_are_unique() -> None:
    """Merged branches must not leave two sections of one name (anchors would clash)."""
    headings = re.findall(r"^#{2,3} (.+)$", README.read_text(), re.M)
    assert sorted({h for h in headings if headings.count(h) > 1}) == []


def test_the_lifecycle_section_names_every_word_of_the_wire() -> None:
    """One section holds the lifecycle's failure semantics: every key, action, state,
    stats field and flag of durability-and-operations.md section 2 is named there."""
    from gloomwire.vocabulary import JOB_STATES, LIFECYCLE_ACTIONS

    text = README.read_text()
    title = "## Job lifecycle: delays, retries, unique ids, dead letters, pause\n"
    assert text.count(title) == 1
    section = text.split(title)[1].split("\n## ")[0]
    words = [
        *(f'"{key}"' for key in ("delay", "retries", "backoff", "unique", "attached", "attempt")),
        *(f'"action":"{action}"' for action in sorted(LIFECYCLE_ACTIONS)),
        *(f"`{state}`" for state in JOB_STATES),
        *("`retried`", "`withdrawn`", "`paused`", "`--max-dead`", "`--max-retries`"),
        *("`event=dead_dropped`", "`event=retry`", "`invalid_state`", "`id_exists`", "cursor"),
    ]
    assert [word for word in words if word not in section] == []
