#!/usr/bin/env bash
# GPU checks in one go, for a CUDA machine (a lent GPU box, or your own). Uses the machine's
# python3 and torch as they are (nothing is installed); every log goes to $OUT. About 8-10
# minutes on an H200; each section has its own timeout, so one slow section cannot eat the rest.
#
#   OUT=gpu-out bash scripts/gpu_checks.sh            # everything
#   SECTIONS="tests e2e" bash scripts/gpu_checks.sh   # a subset (names below)
#
# Sections and what each measures:
#   tests    CUDA-only tests (tests/core/test_core_cuda.py, the CUDA variants in
#            test_core_stacked_isolation.py / test_core_stacked_speed.py: isolation of a diverging trial,
#            captured step == eager step, choose_slots by throughput, measure_slot_bytes) and
#            the optimizer's CUDA-graph test -> pytest.txt
#   e2e      benchmarks/e2e_study.py: a real API + worker on SQLite, BinaryNet, batch 50,
#            naive worker (trials_per_gpu 1, eager, fp32) vs stacked (trials_per_gpu 16,
#            compile auto): trials per GPU-hour, time split, GPU utilisation, % of floor
#            -> e2e.txt (worker logs in $OUT/e2e/)
#   steps    benchmarks/throughput.py, stacked N=16 at batch 50: eager vs torch.compile vs
#            torch.compile + CUDA-graph capture; and one trial at batch 256 fp32 and bf16
#            -> steps.txt
#   profile  torch.profiler top kernels: one trial at batch 256 bf16 vs fp32, stacked N=16 at
#            batch 50 bf16 vs fp32 -> profile-*.txt
#   slots    choose_slots by throughput: seconds per step and peak memory (cuDNN benchmark
#            off) at N = 1, 2, 4, ..., 32, the N picked, and the memory-only bound -> slots.txt
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SECTIONS=${SECTIONS:-tests e2e steps profile slots}
# The project's pytest settings name optuna's warning class; bnn_core's tests do not need optuna.
PYTEST=("$PY" -m pytest -q -rs -p no:cacheprovider -o "filterwarnings=default")
THROUGHPUT=("$PY" benchmarks/throughput.py --skip-naive)
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

echo "== environment"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__,
        'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
} | tee "$OUT/env.txt"

if want tests; then
    echo "== CUDA tests"
    timeout "${TEST_TIMEOUT:-180}" "${PYTEST[@]}" tests/core/test_core_cuda.py \
        tests/core/test_core_stacked_isolation.py tests/core/test_core_stacked_speed.py \
        "tests/core/test_core_optimizers.py::test_step_never_syncs_and_can_be_captured_in_a_cuda_graph" \
        2>&1 | tee "$OUT/pytest.txt"
fi

if want e2e; then
    echo "== end to end: naive vs stacked worker on a real study"
    timeout "${E2E_TIMEOUT:-240}" "$PY" benchmarks/e2e_study.py --device cuda \
        --images "${E2E_IMAGES:-10000}" --trials "${E2E_TRIALS:-16}" --epochs 2 --slots 16 \
        --output "$OUT/e2e" 2>&1 | tee "$OUT/e2e.txt"
fi

if want steps; then
    echo "== stacked N=16 batch 50: eager / compiled / compiled + CUDA graph; single batch 256"
    STACKED16=(--images 10000 --skip-single --batch-sizes 50 --slots 16)
    T=${STEPS_TIMEOUT:-60}  # per run
    {
        timeout "$T" "${THROUGHPUT[@]}" "${STACKED16[@]}"
        timeout "$T" "${THROUGHPUT[@]}" "${STACKED16[@]}" --compile
        timeout "$T" "${THROUGHPUT[@]}" "${STACKED16[@]}" --compile --capture graph
        timeout "$T" "${THROUGHPUT[@]}" --images 20000 --batch-sizes 256 --slots "" --fp32-single
    } 2>&1 | tee "$OUT/steps.txt"
fi

if want profile; then
    echo "== profiles: bf16 vs fp32"
    for precision in bf16 fp32; do
        timeout "${PROFILE_TIMEOUT:-60}" "${THROUGHPUT[@]}" --profile --images 2560 \
            --precision "$precision" --no-fp32-single --batch-sizes 256 --slots "" 2>&1 |
            tee "$OUT/profile-single256-$precision.txt" | grep -E "done:|Self CUDA time"
        timeout "${PROFILE_TIMEOUT:-60}" "${THROUGHPUT[@]}" --profile --images 2560 \
            --precision "$precision" --skip-single --batch-sizes 50 --slots 16 2>&1 |
            tee "$OUT/profile-stacked16-$precision.txt" | grep -E "done:|Self CUDA time"
    done
fi

if want slots; then
    echo "== choose_slots by throughput (BinaryNet, batch 50)"
    timeout "${SLOTS_TIMEOUT:-90}" "$PY" - <<'EOF' 2>&1 | tee "$OUT/slots.txt"
import torch

from bnn_core.stacked import choose_slots, measure_slot_bytes, measure_step_seconds, pick_slots
from bnn_core.stacked.memory import candidate_slots

device = torch.device("cuda")
torch.backends.cudnn.benchmark = True
for precision in ("fp32", "bf16"):
    per_slot, fixed = measure_slot_bytes("binarynet", (3, 32, 32), 50, device, precision=precision)
    free, _ = torch.cuda.mem_get_info(device)
    print(f"{precision}: measure_slot_bytes {per_slot / 2**20:.1f} MiB/slot + {fixed / 2**20:.1f} "
          f"MiB fixed; free {free / 2**30:.1f} GiB")
    rows = []
    for n in candidate_slots(32):
        seconds, peak = measure_step_seconds("binarynet", (3, 32, 32), 50, device, n,
                                             precision=precision)
        rows.append((n, seconds, peak))
        print(f"  N={n:>2}: {1e3 * seconds:7.2f} ms/step, peak {peak / 2**20:8.1f} MiB, "
              f"{n / seconds:8.1f} model-steps/s")
        torch.cuda.empty_cache()
    print(f"  pick_slots -> {pick_slots(rows, free * 0.8)}; choose_slots -> "
          f"{choose_slots('binarynet', (3, 32, 32), 50, device, 32, precision=precision)} "
          f"(memory only: {choose_slots('binarynet', (3, 32, 32), 50, device, 32, precision=precision, by_throughput=False)})")
EOF
fi
echo "== done"
