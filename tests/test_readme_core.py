"""The README's protocol example runs as written (against a daemon on free ports)."""

from __future__ import annotations

import pathlib
import re

import pytest

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
