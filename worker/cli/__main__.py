"""``python -m worker.cli``: the same as ``bnn-tune`` (``demo`` starts its API and workers so)."""

import sys

from worker.cli import main

sys.exit(main())
