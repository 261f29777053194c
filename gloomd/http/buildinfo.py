"""Which gloomd this is: for gloomd_build_info, the Server header and the page."""

from __future__ import annotations

import functools
import platform

import trio

from gloomwire import __version__

__all__ = ["build_labels", "version"]


def version() -> str:
    """gloomd's version, from its one place (`gloomwire.__version__`)."""
    return __version__


@functools.cache
def build_labels() -> dict[str, str]:
    return {
        "version": version(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "trio": trio.__version__,
    }
