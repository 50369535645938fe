#!/usr/bin/env bash
# The one command for a fresh machine: create .venv, install BNN-Tune with the CPU build of
# torch, then run the demo study end to end (SQLite + CPU, under a minute on two cores).
#   bash scripts/demo.sh            # the default study, examples/digits-bop.yaml
#   bash scripts/demo.sh examples/bop2-mlp-digits.yaml
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

echo "==> installing torch==2.13.0 (CPU build)"
# Pinned on purpose: a looser range pulls a multi-GB CUDA build.
# Exact versions from requirements/constraints.txt, as scripts/test.sh and the images install.
"${PIP[@]}" -c requirements/constraints.txt torch==2.13.0
echo "==> installing bnn-tune with the train and dev extras"
"${PIP[@]}" -c requirements/constraints.txt -e '.[train,dev]'

echo "==> bnn-tune demo $*"
exec .venv/bin/bnn-tune demo "$@"
