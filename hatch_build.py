"""Build hook: compile the hot path with mypyc when the machine can, else ship pure Python.

`pip install .` (a wheel) on a machine with a C compiler builds the modules
listed in pyproject.toml (the hook's `include`) as C extensions beside their
.py files (CPython imports an extension before a source file of the same
name); on a machine without one,
or when the compile fails, or with GLOOMD_PURE_PYTHON=1, it warns and builds
the pure-Python wheel, which passes the same tests (tests/test_compiled.py
compares the frames both write).  An editable install (`make install`) is
always pure Python: a developer's edits take effect without a rebuild.

What it buys, measured (issue 20, benchmarks/callgrind_jobs.py, server
instructions per job): 100 B bodies 147k -> 89k (-39%), 1 KiB 166k -> 117k.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sysconfig
from typing import Any

from hatch_mypyc.plugin import MypycBuildHook


def _compiler() -> str | None:
    command = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    words = shlex.split(command)
    return shutil.which(words[0]) if words else None


class CompileIfPossible(MypycBuildHook):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    @property
    def package_source(self) -> str:
        # hatch-mypyc takes the first of the wheel's sources for the root of
        # what it compiles: `client/` here (client/gloom is a package of the
        # wheel); the compiled modules live at the top of the tree.
        return ""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        if os.environ.get("GLOOMD_PURE_PYTHON"):
            self.app.display_info("gloomd: GLOOMD_PURE_PYTHON is set: a pure-Python wheel")
        elif _compiler() is None:
            self.app.display_warning("gloomd: no C compiler found: a pure-Python wheel")
        else:
            try:
                super().initialize(version, build_data)
                return
            except Exception as exc:  # the compile failed: the pure wheel still works
                self.app.display_warning(f"gloomd: mypyc failed, a pure-Python wheel: {exc}")
                build_data["pure_python"] = True
                build_data["infer_tag"] = False
        # Extensions an earlier build left in the tree would ship in a pure wheel.
        self.clean([version])

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        # hatch-mypyc builds in place; in a developer's tree (pip builds there)
        # the extensions would then shadow the sources being edited.
        if self.target_name == "wheel" and version != "editable":
            self.clean([version])


def get_build_hook() -> type[CompileIfPossible]:
    """hatch's choice among the hook classes this file defines or imports."""
    return CompileIfPossible
