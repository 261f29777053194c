"""gloomwire: the Gloom wire protocol as gloomd speaks it, with no I/O and no trio.

Framing (a 32-bit big-endian length, then JSON), the JSON codec and its one
decoding policy, the vocabulary of actions, errors and frames, and the token
rules.  The daemon (`gloomd`), the client (`gloom`) and the worker's pool
children all import it; it imports none of them, so a client-only install
carries the wire and nothing of the daemon.
"""

from __future__ import annotations

#: The version of gloomd, gloom and gloomwire: the one place it is written
#: (pyproject.toml reads it; `gloomd --version` and `gloom --version` print it).
__version__ = "0.2.0"

__all__ = ["__version__"]
