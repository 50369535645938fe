#!/usr/bin/env bash
# The one command that installs everything and runs the whole test suite plus ruff.
# Exit status: non-zero when anything fails (pytest's "no tests collected" counts as failure).
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh tests/test_cli.py -x   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# Exact versions from requirements/constraints.txt (the ones the images use too).
echo "==> installing torch==2.13.0 (CPU build) and bnn-tune[train,dev] under requirements/constraints.txt"
"${PIP[@]}" -c requirements/constraints.txt torch==2.13.0
"${PIP[@]}" -c requirements/constraints.txt -e '.[train,dev]'

# Debian packages some tests use: Fashion-MNIST files, docker-compose v1 (offline validation of
# docker-compose.yml, no daemon needed), kubectl (renders deploy/k8s) and Chromium (dashboard
# screenshot). Tests that need a missing one are skipped, so a non-root run still works.
missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)  # kubectl kustomize deploy/k8s
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        if ! { apt-get update -qq >/dev/null &&
            apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
            echo "warning: apt-get failed; tests that need ${missing[*]} will be skipped" >&2
        fi
    else
        echo "==> not root: skipping apt-get install ${missing[*]} (their tests will be skipped)"
    fi
fi

# PostgreSQL on 127.0.0.1:5432 (the postgres tests use database `test`).
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if [ -d /etc/postgresql ] && command -v pg_ctlcluster >/dev/null 2>&1; then
        echo "==> starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
        for _ in $(seq 1 30); do
            pg_isready -q -h 127.0.0.1 -p 5432 && break
            sleep 1
        done
    fi
fi

echo "==> pytest"
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: treating that as a failure" >&2
    status=1
fi

echo "==> ruff check"
.venv/bin/ruff check . || status=1

exit "$status"
