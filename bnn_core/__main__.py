"""``python -m bnn_core``: the ``bnn-train`` command."""

from .cli import main

raise SystemExit(main())
