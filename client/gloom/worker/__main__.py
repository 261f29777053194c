"""``python -m gloom.worker ...`` is ``gloom worker ...``."""

import sys

from .cli import worker_main

sys.exit(worker_main(sys.argv[1:]))
