"""Which gloomd this is: for gloomd_build_info, the Server header and the page."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

import trio

__all__ = ["build_labels", "version"]


@functools.cache
def version() -> str:
    """The installed distribution's version ("unknown" when run from a bare tree)."""
    try:
        return metadata.version("gloomd")
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def build_labels() -> dict[str, str]:
    return {
        "version": version(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "trio": trio.__version__,
    }
