"""A sub-package of the jobs directory: ``func="sub.deep.run"``."""
