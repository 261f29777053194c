"""`python -m gloomd`: the same as the `gloomd` command."""

from .cli import main

raise SystemExit(main())
