#!/bin/sh
# Worker container start: the torch.compile self-check first, so that a fallback to eager is
# printed at every start (`docker compose logs worker`), then the command (one worker per GPU).
# BNN_TUNE_SELFCHECK=0 skips it; with BNN_TUNE_COMPILE=on a failing check stops the container.
set -e
if [ "${BNN_TUNE_SELFCHECK:-1}" != "0" ]; then
    python -m worker.selfcheck
fi
exec "$@"
