"""The house's layers hold: no import runs upward, and no import circle exists.

    gloomwire   the wire: imports neither gloomd, nor gloom, nor trio
      <- core       gloomd/*.py, the daemon's flat modules, and the packages the
                    core drives (gloomd/journal/: the broker's records, their
                    writer and replay, which the server hands work to)
      <- services   gloomd/wsjobd/, gloomd/scheduler/, gloomd/http/: each
                    imports the wire, the core and itself, never another service
      <- cli        gloomd.cli, gloomd.__main__

A new package under gloomd/ must be given its layer here (the first test says so).

Read from the source, not by importing it: every `import` and `from ... import`
of every module under gloomwire/ and gloomd/ is an edge, wherever it stands (at
the top, inside a function, under `if TYPE_CHECKING:`), so that a lazy import
cannot hide a wrong arrow.  gloomd imports the client package `gloom` only in
the modules it contributes to `gloom`'s command line (pyproject's entry point
group `gloom.commands`): they plug into it.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGES = ("gloomwire", "gloomd")
CLI = frozenset({"gloomd.cli", "gloomd.__main__"})
SERVICE_PACKAGES = frozenset({"gloomd.wsjobd", "gloomd.scheduler", "gloomd.http"})
CORE_PACKAGES = frozenset({"gloomd.journal", "gloomd.cluster"})
WIRE, CORE, SERVICES, TOP = 0, 1, 2, 3
LAYER_NAMES = {WIRE: "wire", CORE: "core", SERVICES: "services", TOP: "cli"}


def module_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = module_files()


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def imports_of(module: str) -> Iterator[str]:
    """Every module `module` names in an import statement, resolved to its full name."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    here = module if is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # `from pkg import submodule` names the submodule itself.
                submodule = f"{target}.{alias.name}"
                yield submodule if submodule in MODULES else target


def internal(name: str) -> str | None:
    """The module of ours that `name` is, or lies in (None: a third party's)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def layer(module: str) -> int:
    """gloomwire.* is the wire; gloomd/X.py and CORE_PACKAGES the core;
    SERVICE_PACKAGES the services."""
    parts = module.split(".")
    if parts[0] == "gloomwire":
        return WIRE
    if module in CLI:
        return TOP
    if ".".join(parts[:2]) in SERVICE_PACKAGES:
        return SERVICES
    return CORE


def service_of(module: str) -> str | None:
    """The service package a module belongs to (gloomd.wsjobd, ...), if any."""
    parts = module.split(".")
    return ".".join(parts[:2]) if layer(module) == SERVICES else None


def edges() -> Iterator[tuple[str, str]]:
    for module in MODULES:
        for name in imports_of(module):
            yield module, name


def gloom_plugins() -> set[str]:
    """The modules of gloomd named by the entry point group `gloom.commands`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    group = project.get("entry-points", {}).get("gloom.commands", {})
    return {value.partition(":")[0] for value in group.values()}


def test_every_package_of_the_daemon_has_a_layer() -> None:
    packages = {m for m in MODULES if m.count(".") == 1 and is_package(m)}
    assert packages - SERVICE_PACKAGES - CORE_PACKAGES == set()
    assert packages >= SERVICE_PACKAGES


def test_the_layers_are_what_the_tree_says() -> None:
    assert layer("gloomwire.codec") == WIRE
    assert layer("gloomd.broker") == layer("gloomd.ingest") == layer("gloomd.service") == CORE
    assert layer("gloomd.wsjobd") == layer("gloomd.scheduler.engine") == SERVICES
    assert layer("gloomd.http.service") == SERVICES
    assert service_of("gloomd.http.admin") == "gloomd.http" and service_of("gloomd.ingest") is None
    assert layer("gloomd.cli") == TOP
    assert gloom_plugins() == {"gloomd.scheduler.listing"}
    # The walk sees lazy and type-only imports too.
    assert ("gloomd.cli", "gloomd.wsjobd.service") in set(edges())
    assert ("gloomd.local", "gloomd.server") in set(edges())


def test_no_import_runs_to_a_higher_layer() -> None:
    wrong = []
    for source, name in edges():
        target = internal(name)
        if target is None:
            continue
        if layer(target) > layer(source):
            wrong.append(f"{source} ({LAYER_NAMES[layer(source)]}) imports {target}")
        elif layer(source) == layer(target) == SERVICES and service_of(source) != service_of(
            target
        ):
            wrong.append(f"{source} imports another service's {target}")
    assert wrong == []


def test_the_wire_imports_neither_daemon_nor_client_nor_trio() -> None:
    wrong = [
        f"{source} imports {name}"
        for source, name in edges()
        if source.startswith("gloomwire") and name.split(".")[0] in ("gloomd", "gloom", "trio")
    ]
    assert wrong == []


def test_the_daemon_imports_the_client_only_in_its_plugins() -> None:
    plugins = gloom_plugins()
    wrong = [
        f"{source} imports {name}"
        for source, name in edges()
        if name.split(".")[0] == "gloom" and source not in plugins
    ]
    assert wrong == []


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module, or a self-loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for source, name in edges():
        target = internal(name)
        if target is not None:
            graph[source].add(target)
    return graph


def test_no_import_circles() -> None:
    assert strongly_connected(import_graph()) == []


@pytest.mark.parametrize(
    "graph,circles",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"a"}}, [["a"]]),
        (
            {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}},
            [["a", "b", "c"], ["d", "e"]],
        ),
    ],
)
def test_the_circle_finder_finds_circles(
    graph: dict[str, set[str]], circles: list[list[str]]
) -> None:
    assert sorted(strongly_connected(graph)) == circles
