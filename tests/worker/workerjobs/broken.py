"""A handler module that fails while being imported."""

raise RuntimeError("this module refuses to import")
