"""`python -m opensips_fs`: the same as the `opensips-fs` command."""

from .cli import main

raise SystemExit(main())
