"""Trials per GPU-hour of a real study, end to end: naive worker vs stacked worker.

    python benchmarks/e2e_study.py                       # BinaryNet, CUDA, full-size data
    python benchmarks/e2e_study.py --quick               # tiny CPU version (seconds; CI)
    python benchmarks/e2e_study.py --database-url postgresql+psycopg://.../db

It migrates a database (SQLite in the output folder unless ``--database-url``), starts the
real API (``python -m service.cli serve``, uvicorn), submits per mode a Bop study (batch 50,
``--epochs`` epochs, ``--trials`` trials, random sampler, no pruner) and runs one real
worker process (``python -m worker --once``) on a generated data folder:
CIFAR-10-shaped random images written in the CIFAR-10 python-pickle format
(``bnn_core.data.write_cifar10``; no download). The modes:

* ``naive``: ``trials_per_gpu: 1``, ``--compile off``, fp32: one eager trial at a time;
* ``stacked``: ``trials_per_gpu: --slots``, ``--compile auto`` (torch.compile for stacked CUDA
  groups), ``--precision`` (fp32 by default).

The clock runs from the worker's start to its exit, so every overhead is included: process
start and imports, data loading, group builds, compiling, training, validation, and the
service's claim / report / tell round trips. It prints trials per GPU-hour both ways and
their ratio, a time split (compile, build, train, eval, service: from the stacked trainer's
``stacked run timings`` log lines and the trials' ``seconds`` / per-epoch ``seconds``
attributes; "service" is the rest of the wall time: process start-up and imports, data
loading, slot sizing, and the claim / report / tell round trips), GPU utilisation
(``nvidia-smi`` sampled every 0.5 s, when present) and the fraction of the floor: the
floor's seconds per model-epoch (``--floor-s`` for 50,000 training images, scaled to the
images used) over the measured wall seconds per model-epoch.

The compile cache lives in ``<output>/inductor-cache`` (``TORCHINDUCTOR_CACHE_DIR``,
``TORCHINDUCTOR_FX_GRAPH_CACHE=1``), fresh per run unless ``--keep-cache``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.cli.processes import background, free_port, wait_until  # noqa: E402
from service.cli.server import cmd_migrate  # noqa: E402
from service.client import Client  # noqa: E402

FLOOR_IMAGES = 50_000  # the floor is quoted per 50,000-image training epoch
TIMINGS_LINE = re.compile(r"stacked run timings (\{.*\})")


@dataclass
class ModeResult:
    mode: str
    wall_s: float
    trials: int  # finished (complete or pruned)
    failed: int
    model_epochs: int
    split: dict[str, float] = field(default_factory=dict)
    gpu_util: float | None = None

    @property
    def trials_per_hour(self) -> float:
        return self.trials * 3600 / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def seconds_per_model_epoch(self) -> float:
        return self.wall_s / self.model_epochs if self.model_epochs else float("inf")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny CPU run (seconds)")
    p.add_argument("--database-url", help="PostgreSQL URL (default: SQLite per mode)")
    p.add_argument("--device", default="cuda", help="worker device (default %(default)s)")
    p.add_argument("--model", default="binarynet")
    p.add_argument("--trials", type=int, default=32, help="trials per mode")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--images", type=int, default=50_000, help="training images generated")
    p.add_argument("--slots", type=int, default=16, help="trials_per_gpu of the stacked mode")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--modes", default="naive,stacked", help="comma-separated, in this order")
    p.add_argument("--floor-s", type=float, default=0.193, help="floor s per 50k-image epoch")
    p.add_argument("--output", help="folder for logs, data, databases (default: a temp dir)")
    p.add_argument("--keep-cache", action="store_true", help="reuse <output>/inductor-cache")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per mode")
    args = p.parse_args(argv)
    if args.quick:
        args.device, args.model, args.trials, args.epochs = "cpu", "mlp", 2, 1
        args.images, args.slots = 100, 2
    for name in ("trials", "epochs", "images", "slots"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("naive", "stacked") for m in modes):
        p.error("--modes: a comma-separated list of naive, stacked")
    args.modes = modes
    return args


def write_data(root: Path, images: int) -> None:
    """A CIFAR-10-shaped data folder, ``<root>/cifar10/cifar-10-batches-py``."""
    from bnn_core.data import random_cifar10, write_cifar10

    write_cifar10(random_cifar10(images, max(images // 5, 10), seed=0), root / "cifar10")


def study_spec(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    stacked = mode == "stacked"
    return {
        "name": f"e2e-{mode}-{uuid.uuid4().hex[:8]}",
        "optimizer": "bop",
        "model": args.model,
        "dataset": "cifar10",
        "epochs": args.epochs,
        "batch_size": 50,
        "n_trials": args.trials,
        "max_train_samples": args.images,
        "seed": 0,
        "device": "cpu" if args.device == "cpu" else "cuda",
        "trials_per_gpu": args.slots if stacked else 1,
        "precision": args.precision if stacked else "fp32",
        "search_space": {
            "gamma": {"low": 1e-5, "high": 1e-2, "log": True},
            "threshold": {"low": 1e-9, "high": 1e-5, "log": True},
            "real_lr": 0.01,
        },
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
    }


class GpuSampler:
    """Mean GPU utilisation from ``nvidia-smi`` every 0.5 s while running (None without it)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


@contextlib.contextmanager
def api_server(url: str, output: Path) -> Iterator[Client]:
    """A migrated database and the real API on a free port (stopped on exit)."""
    cmd_migrate(argparse.Namespace(database_url=url))
    env = {"BNN_TUNE_DATABASE_URL": url, "PYTHONUNBUFFERED": "1"}
    port = free_port()
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    with (
        background([*command, "--log-level", "warning"], output / "api.log", env),
        Client(f"http://127.0.0.1:{port}") as client,
    ):
        wait_until(client.healthy, 60, "the API to answer /health")
        yield client


def run_mode(
    args: argparse.Namespace, mode: str, client: Client, url: str, output: Path, data_root: Path
) -> ModeResult:
    """Submit the mode's study, run one worker until it has no work left, read the trials."""
    study_id = int(client.submit(study_spec(args, mode))["id"])
    env = {
        "BNN_TUNE_DATABASE_URL": url,
        "PYTHONUNBUFFERED": "1",
        "BNN_TUNE_STACK_ON_CPU": "true",  # --quick stacks on the CPU as a GPU worker would
        "TORCHINDUCTOR_CACHE_DIR": str(output / "inductor-cache"),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
    }
    worker = [
        sys.executable, "-m", "worker", "--device", args.device, "--data-root", str(data_root),
        "--compile", "auto" if mode == "stacked" else "off", "--once", "--poll-interval", "0.2",
        "--worker-id", f"e2e-{mode}",
    ]  # fmt: skip
    log = output / f"worker-{mode}.log"
    with GpuSampler() as gpu, background(worker, log, env) as process:
        start = time.perf_counter()
        try:
            process.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{mode}: the worker ran past --timeout; see {log}") from None
        wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{mode}: the worker exited {process.returncode}; see {log}")
    trials = client.trials(study_id)
    return summarise(mode, wall, trials, log.read_text(errors="replace"), gpu.mean)


def summarise(
    mode: str, wall: float, trials: list[dict[str, Any]], log: str, gpu: float | None
) -> ModeResult:
    finished = [t for t in trials if t.get("state") in ("COMPLETE", "PRUNED")]
    failed = sum(t.get("state") == "FAIL" for t in trials)
    epochs = [len(_epochs(t)) for t in finished]
    result = ModeResult(mode, wall, len(finished), failed, sum(epochs), gpu_util=gpu)
    trial_seconds = sum(float((t.get("user_attrs") or {}).get("seconds") or 0) for t in trials)
    groups = [json.loads(m.group(1)) for m in TIMINGS_LINE.finditer(log)]
    if groups:  # stacked: the trainer's own split; trials overlap, so the groups' sum
        compile_s = sum(g.get("compile", 0.0) for g in groups)
        train_s = sum(g.get("train", 0.0) for g in groups) - compile_s
        eval_s = sum(g.get("eval", 0.0) for g in groups)
        build_s = sum(g.get("build", 0.0) for g in groups)
        busy = compile_s + train_s + eval_s + build_s
    else:  # one trial at a time: per-epoch seconds (train + validation) and the rest
        compile_s = 0.0
        epoch_s = sum(float(e.get("seconds") or 0) for t in trials for e in _epochs(t))
        train_s, eval_s = epoch_s, 0.0  # the solo loop times train + validation together
        build_s = max(trial_seconds - epoch_s, 0.0)
        busy = trial_seconds
    result.split = {
        "compile": compile_s,
        "build": build_s,
        "train": train_s,
        "eval": eval_s,
        "service": max(wall - busy, 0.0),
    }
    return result


def _epochs(trial: dict[str, Any]) -> list[dict[str, Any]]:
    epochs = trial.get("epochs")
    if epochs is None:
        epochs = (trial.get("user_attrs") or {}).get("epochs")
    return list(epochs or [])


def report(args: argparse.Namespace, results: list[ModeResult]) -> None:
    floor = args.floor_s * args.images * 0.9 / FLOOR_IMAGES  # 10 % are held out
    print(f"\nend-to-end study: {args.model} on CIFAR-shaped data ({args.images} images), "
          f"batch 50, {args.trials} trials x {args.epochs} epochs, {args.device}")  # fmt: skip
    print(f"{'mode':<9}{'wall s':>9}{'trials':>8}{'failed':>8}{'trials/GPU-h':>14}"
          f"{'s/model-ep':>12}{'% floor':>9}{'GPU %':>7}")  # fmt: skip
    for r in results:
        gpu = f"{r.gpu_util:.0f}" if r.gpu_util is not None else "n/a"
        # The floor is a GPU's peak FLOP rate: on the CPU the fraction means nothing.
        share = 100 * floor / r.seconds_per_model_epoch
        share_text = "n/a" if args.device == "cpu" else f"{share:.1f}%"
        print(f"{r.mode:<9}{r.wall_s:>9.1f}{r.trials:>8}{r.failed:>8}{r.trials_per_hour:>14.1f}"
              f"{r.seconds_per_model_epoch:>12.3f}"
              f"{share_text:>9}{gpu:>7}")  # fmt: skip
    print(f"\ntime split (s){'':<1}" + "".join(f"{k:>10}" for k in results[0].split))
    for r in results:
        print(f"{r.mode:<15}" + "".join(f"{v:>10.1f}" for v in r.split.values()))
    by_mode = {r.mode: r for r in results}
    if "naive" in by_mode and "stacked" in by_mode and by_mode["naive"].trials_per_hour > 0:
        ratio = by_mode["stacked"].trials_per_hour / by_mode["naive"].trials_per_hour
        print(f"\nstacked / naive: {ratio:.2f}x trials per GPU-hour (target >= 10x on a GPU)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.output:
            output = Path(args.output).resolve()
            output.mkdir(parents=True, exist_ok=True)
        else:
            output = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="e2e-")))
        if not args.keep_cache:
            shutil.rmtree(output / "inductor-cache", ignore_errors=True)
        data_root = output / "data"
        write_data(data_root, args.images)
        url = args.database_url or f"sqlite:///{output / 'e2e.db'}"
        if not args.database_url:
            (output / "e2e.db").unlink(missing_ok=True)
        client = stack.enter_context(api_server(url, output))
        results = []
        for mode in args.modes:
            print(f"==> {mode}: running {args.trials} trials", flush=True)
            results.append(run_mode(args, mode, client, url, output, data_root))
        report(args, results)
        if any(r.trials == 0 for r in results):
            print("a mode finished no trial; see the worker logs", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
