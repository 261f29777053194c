"""The client's imports: gloom stands on gloomwire, trio and rich, never on gloomd.

Read from the source (ast), so that an import hidden in a function or behind
a flag counts too: a client-only install has no gloomd to import.  The pool
process modules (`worker/child.py`, `worker/handler.py`, `worker/retry.py`)
are loaded without the gloom package at all, so they may use only the
standard library, gloomwire and each other (plus trio, imported only for
async handlers).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "client" / "gloom"
#: Third-party packages the client may import (orjson comes through gloomwire).
ALLOWED = {"gloom", "gloomwire", "trio", "rich"}
POOL_MODULES = ("child.py", "handler.py", "retry.py")


def imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every import: level 0 is absolute, >0 relative."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((0, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


SOURCES = sorted(CLIENT.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(CLIENT)) for p in SOURCES])
def test_client_module_imports_no_daemon(path: Path) -> None:
    for level, module in imports(path):
        if level:
            continue
        top = module.split(".")[0]
        assert top in ALLOWED or top in sys.stdlib_module_names, f"{path.name} imports {module}"


@pytest.mark.parametrize("name", POOL_MODULES)
def test_pool_process_modules_do_not_need_the_gloom_package(name: str) -> None:
    for level, module in imports(CLIENT / "worker" / name):
        if level:
            assert level == 1 and module in {"handler", "retry"}, f"{name} imports .{module}"
            continue
        top = module.split(".")[0]
        assert top in {"gloomwire", "trio"} or top in sys.stdlib_module_names, f"{name}: {module}"


def test_the_check_sees_a_daemon_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def later():\n    from gloomd.scheduler import schedule_list_main\n")
    assert (0, "gloomd.scheduler") in imports(bad)
