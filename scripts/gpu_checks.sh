#!/usr/bin/env bash
# GPU checks in one go, for a CUDA machine (a lent GPU box, or your own): the CUDA-only tests,
# the throughput table (benchmarks/throughput.py), the compiled variant and stacked latent-adam. Uses the machine's
# python3 and torch as they are (nothing is installed); every log goes to $OUT.
#
#   OUT=gpu-out bash scripts/gpu_checks.sh            # full run, about 5-8 minutes on an H100
#   THROUGHPUT_ARGS="--quick --tiny" bash scripts/gpu_checks.sh   # smoke run (CPU is fine)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
THROUGHPUT_ARGS=${THROUGHPUT_ARGS:---images 20000}
# The project's pytest settings name optuna's warning class; bnn_core's tests do not need optuna.
PYTEST=("$PY" -m pytest -q -rs -p no:cacheprovider -o "filterwarnings=default")

echo "== environment"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__,
        'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
} | tee "$OUT/env.txt"

echo "== CUDA-only tests"
timeout "${TEST_TIMEOUT:-200}" "${PYTEST[@]}" tests/core/test_cuda.py \
    "tests/core/test_optimizers.py::test_step_never_syncs_and_can_be_captured_in_a_cuda_graph" \
    2>&1 | tee "$OUT/pytest.txt"

echo "== throughput (GPU utilisation sampled once a second into util.csv)"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 \
    >"$OUT/util.csv" 2>&1 &
sampler=$!
# shellcheck disable=SC2086  # THROUGHPUT_ARGS is a list of flags
timeout "${BENCH_TIMEOUT:-300}" "$PY" benchmarks/throughput.py $THROUGHPUT_ARGS 2>&1 |
    tee "$OUT/throughput.txt"
kill "$sampler" 2>/dev/null

echo "== compiled (torch.compile) single and stacked, batch 50"
# shellcheck disable=SC2086
timeout "${COMPILE_TIMEOUT:-120}" "$PY" benchmarks/throughput.py $THROUGHPUT_ARGS --compile \
    --skip-naive --no-fp32-single --batch-sizes 50 --slots 16 2>&1 | tee "$OUT/compiled.txt"
echo "== stacked latent-weight baseline (latent-adam), batch 50"
# shellcheck disable=SC2086
timeout "${LATENT_TIMEOUT:-90}" "$PY" benchmarks/throughput.py $THROUGHPUT_ARGS --family latent-adam \
    --skip-naive --skip-single --batch-sizes 50 --slots 16 2>&1 | tee "$OUT/latent.txt"
echo "== done"
