"""`python -m server` is the same as the `gemma-serve` console script."""

from server.cli import main

raise SystemExit(main())
