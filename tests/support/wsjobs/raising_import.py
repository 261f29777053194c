"""A job module that raises something other than ImportError while being imported."""

raise RuntimeError("refusing to be imported")
