"""The jobs directory: where job functions come from, and only from.

Every method may block (it imports), so the service calls them in a worker
thread.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias

from .errors import LoadingError

if TYPE_CHECKING:
    from .job import Job

__all__ = ["JobFunction", "JobsDirectory"]

JobFunction: TypeAlias = Callable[["Job"], Any]


class JobsDirectory:
    """The server-side directory that job functions are loaded from, and only from.

    The directory is imported as a package under a private name derived from its
    real path (``_gloomd_wsjobs_<hash>``), found through its own ``__path__``
    rather than ``sys.path``: ``func="a.b.run"`` can only ever mean
    ``<dir>/a/b.py`` (or ``<dir>/a/b/__init__.py``), function ``run``.  Together
    with the name rules of :func:`parse_request` (no ``_``-prefixed parts, so no
    dunders; no ``..``, slashes or keywords) and the check that the function was
    *defined* in the directory, a client cannot reach ``os.system`` even through a
    job module that imported it.  Job modules import their neighbours relatively
    (``from . import helpers``).

    As in pykit, modules are imported once and stay cached: edit a job module,
    restart the daemon.  Every method here may block (it imports), so the service
    calls them in a worker thread.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        real = os.path.realpath(os.fspath(path))
        if not os.path.isdir(real):
            raise NotADirectoryError(f"jobs directory {os.fspath(path)!r} is not a directory")
        self.path = real
        digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()
        self.package = f"_gloomd_wsjobs_{digest[:16]}"
        self._lock = threading.Lock()

    def _package_module(self) -> ModuleType:
        with self._lock:
            module = sys.modules.get(self.package)
            if module is not None:
                return module
            init = os.path.join(self.path, "__init__.py")
            spec: importlib.machinery.ModuleSpec | None
            if os.path.isfile(init):
                spec = importlib.util.spec_from_file_location(
                    self.package, init, submodule_search_locations=[self.path]
                )
            else:
                # No __init__.py: an empty package whose only content is its path.
                spec = importlib.machinery.ModuleSpec(self.package, None, is_package=True)
                spec.submodule_search_locations = [self.path]
            assert spec is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[self.package] = module
            if spec.loader is not None:
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[self.package]
                    raise
            return module

    def load_module(self, relative_name: str) -> ModuleType:
        """Import ``<dir>/<relative/name>.py``; the empty name is the directory's package."""
        package = self._package_module()
        if not relative_name:
            return package
        return importlib.import_module(f"{self.package}.{relative_name}")

    def _client_text(self, text: str) -> str:
        # Say "jobs.x" to the client, as pykit did, not the private package name.
        return text.replace(self.package, "jobs")

    def load_function(self, parts: Sequence[str]) -> JobFunction:
        """Resolve validated `func` parts to a plain or ``async`` function (else LoadingError)."""
        module_parts, name = parts[:-1], parts[-1]
        module_path = ".".join(("jobs", *module_parts))
        try:
            module = self.load_module(".".join(module_parts))
        except Exception as exc:  # ImportError, SyntaxError, anything the module raised
            raise LoadingError(
                f"failed to import {module_path}: {self._client_text(repr(exc))}"
            ) from exc
        missing = object()
        func = getattr(module, name, missing)
        # A submodule is an attribute of its package only once something imported
        # it; treating it as absent keeps the answer independent of that history.
        if func is missing or inspect.ismodule(func):
            raise LoadingError(f"function not found: {name!r}")
        if (
            not inspect.isfunction(func)
            or inspect.isgeneratorfunction(func)
            or inspect.isasyncgenfunction(func)
        ):
            raise LoadingError(f"{module_path}.{name} is not a function")
        defined_in = getattr(func, "__module__", None) or ""
        if defined_in != self.package and not defined_in.startswith(self.package + "."):
            # Imported into a job module from elsewhere (`from shutil import rmtree`).
            raise LoadingError(f"{module_path}.{name} is not defined in the jobs directory")
        return func
