"""gloomd: a job distribution daemon speaking the Gloom protocol, on trio.

The version is written once, in `gloomwire` (the daemon, the client and the
wire are released together); it is re-exported here.
"""

from gloomwire import __version__

__all__ = ["__version__"]
