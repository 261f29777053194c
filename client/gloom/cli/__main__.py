"""``python -m gloom.cli ...`` is ``gloom ...``."""

import sys

from . import main

sys.exit(main())
