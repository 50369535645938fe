"""``python -m service.cli``: the same as ``bnn-tune`` (``demo`` starts its API so)."""

import sys

from service.cli import main

sys.exit(main())
