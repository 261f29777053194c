"""The environment variables gloomd and gloom read: one set, one prefix.

Every variable is named after the daemon it describes, ``GLOOMD_``: its
token, its host, its ports.  The daemon reads the token; the commands (`gloom`,
`gloom worker`) read all four, so one shell points them at one daemon; the
Python client reads the token only (a program passes its daemon's address as
an argument, so no variable can redirect it unseen).  The spellings of
earlier versions (``GLOOM_HOST``, ``GLOOM_MASTER_PORT``, ``GLOOM_SLAVE_PORT``,
and ``GLOOM_TOKEN``, which was ignored) are still read when the new name is
not set, with a `FutureWarning` that says which name to use; the commands
print it as one ``note:`` line (`print_notes`).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from typing import TextIO

__all__ = [
    "HOST",
    "MASTER_PORT",
    "OLD_NAMES",
    "SERVERS",
    "SLAVE_PORT",
    "TOKEN",
    "DeprecatedName",
    "lookup",
    "print_notes",
]

TOKEN = "GLOOMD_TOKEN"
HOST = "GLOOMD_HOST"
MASTER_PORT = "GLOOMD_MASTER_PORT"
SLAVE_PORT = "GLOOMD_SLAVE_PORT"
#: Several independent daemons for the commands that spread over them
#: (``--servers``): "h1,h2" or "h1:PORT,h2:PORT".
SERVERS = "GLOOMD_SERVERS"

#: The documented name of each variable -> the old spelling still accepted.
OLD_NAMES = {
    TOKEN: "GLOOM_TOKEN",
    HOST: "GLOOM_HOST",
    MASTER_PORT: "GLOOM_MASTER_PORT",
    SLAVE_PORT: "GLOOM_SLAVE_PORT",
}


class DeprecatedName(FutureWarning):
    """A variable was found under its old spelling only."""


def lookup(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of variable `name`, else of its old spelling (with a warning), else None."""
    env = os.environ if environ is None else environ
    value = env.get(name)
    if value is not None:
        return value
    old = OLD_NAMES.get(name)
    if old is not None and old in env:
        warnings.warn(f"{old} is deprecated: set {name} instead", DeprecatedName, stacklevel=2)
        return env[old]
    return None


def print_notes(prog: str, stream: TextIO | None = None) -> None:
    """Show deprecated names as one line each, ``PROG: note: ...``, once per name.

    For the commands' `main`s; other warnings are shown as before.
    """
    shown: set[str] = set()
    previous = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if not issubclass(category, DeprecatedName):
            previous(message, category, filename, lineno, file, line)
            return
        text = str(message)
        if text not in shown:
            shown.add(text)
            print(f"{prog}: note: {text}", file=stream or sys.stderr)

    warnings.showwarning = show
    warnings.simplefilter("always", DeprecatedName)
