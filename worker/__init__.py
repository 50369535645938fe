"""BNN-Tune worker: claims trials of active studies from the database and trains them.

Kept free of torch at import time so that ``bnn-tune`` (whose ``worker`` and ``train`` commands
come from :mod:`worker.commands`) works in the API image; the entry points
are :func:`worker.loop.run_worker` (``python -m worker``) and :func:`worker.loop.run_study`.
"""
