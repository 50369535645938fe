"""BinaryNet training throughput: naive baseline vs our single-trial path vs N stacked trials.

Measures, in one run and on one device:

(a) naive: one trial, a torch ``DataLoader`` over a CPU ``TensorDataset`` with per-sample
    augmentation (pad 4, crop, flip), fp32, eager, ``.item()`` every step;
(b) ours, single trial: ``bnn_core.train.train`` (device-resident data, GPU augmentation,
    bf16 autocast + channels_last on CUDA);
(c) ours, stacked: ``bnn_core.stacked.StackedTrainer`` with N trials; the per-model epoch
    time is the group epoch time / N.

Every case trains ``--epochs`` epochs and reports the fastest epoch after the first (which
includes warm-up), scaled to a 50k-image epoch; ours include the per-epoch validation pass.
The floor is the model's training FLOPs (3 x forward) at the H100's measured 798 TFLOP/s
bf16 (185 TFLOP per epoch for the Courbariaux BinaryNet; the models.py variant with an
unpadded first conv is 154 TFLOP). Trials/GPU-hour are extrapolated
to the 100-epoch Bop 5.1 recipe from the epoch time at the smallest batch size measured.
Data are random uint8 images of CIFAR-10 shape (same cost as the real ones).

    python benchmarks/throughput.py                # full size (GPU)
    python benchmarks/throughput.py --quick        # CPU smoke run, < 2 min
    python benchmarks/throughput.py --profile --skip-naive --batch-sizes 256 --slots ""
                                                   # top kernels of each case (torch.profiler)

At full size a run takes several minutes on an H100 (every case trains two epochs of 50k
images); ``--images 20000`` shortens it. Each case prints a line as it finishes.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnn_core.config import OptimizerConfig, TrainConfig  # noqa: E402
from bnn_core.data import Dataset, random_cifar10  # noqa: E402
from bnn_core.models import build_model  # noqa: E402
from bnn_core.optim import build_optimizer  # noqa: E402
from bnn_core.stacked import (  # noqa: E402
    CAPTURE_MODES,
    CONV_IMPLS,
    STACKABLE_FAMILIES,
    StackedTrainer,
    choose_slots,
)
from bnn_core.train import train  # noqa: E402

PEAK_FLOPS = 798e12  # dense bf16 FLOP/s measured on an H100 with large matmuls
EPOCH_IMAGES = 50_000
RECIPE_EPOCHS = 100  # the Bop paper's CIFAR-10 recipe


def forward_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass of one image (convs and linears)."""
    total = 0

    def hook(module: nn.Module, _: object, output: torch.Tensor) -> None:
        nonlocal total
        weight = module.weight
        if output.dim() == 4:  # conv: every output pixel costs Cin/groups * k * k per channel
            total += output[0].numel() * weight[0].numel()
        else:
            total += weight.numel()

    hooks = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if hasattr(m, "weight") and m.weight is not None and m.weight.dim() in (2, 4)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    for handle in hooks:
        handle.remove()
    return total


class AugmentedTensors(TorchDataset):
    """The naive pipeline: per-sample zero-pad 4, random crop, random flip, normalise."""

    def __init__(self, x: np.ndarray, y: np.ndarray, seed: int) -> None:
        self.x = torch.from_numpy(x)
        self.y = torch.from_numpy(y)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.pad(self.x[index], (4, 4, 4, 4))
        dy, dx = self.rng.integers(0, 9, 2)
        img = img[:, dy : dy + 32, dx : dx + 32]
        if self.rng.random() < 0.5:
            img = img.flip(-1)
        return img.float() / 127.5 - 1.0, self.y[index]


def run_naive(args, data: Dataset, batch: int, device: torch.device) -> float:  # noqa: ANN001
    """Seconds of the last epoch of the naive baseline (training only)."""
    torch.manual_seed(0)
    model = build_model("binarynet", (3, 32, 32), 10, **args.model_options).to(device)
    n_train = int(len(data.y_train) * 0.9)
    loader = DataLoader(
        AugmentedTensors(data.x_train[:n_train], data.y_train[:n_train], 0),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    optimizer = build_optimizer(model, optimizer_config(args.family, 1), len(loader), 2)
    times = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # per-step logging, as naive scripts do
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return timed(times)


def timed(times: list[float]) -> float:
    """The fastest epoch after the first (warm-up); the only one if there is one."""
    return min(times[1:]) if len(times) > 1 else times[0]


def optimizer_config(family: str, seed: int) -> OptimizerConfig:
    """One of a few typical settings of ``family`` (trials differ, as in a study)."""
    rate = 10 ** -(2 + seed % 3)
    if family in ("latent-adam", "latent-sgd"):
        return OptimizerConfig(name=family, lr=rate, weight_decay=1e-5, momentum=0.9)
    if family == "filter":
        return OptimizerConfig(name=family, alpha=rate / 10, gamma=rate)
    return OptimizerConfig(name=family, gamma=rate, threshold=1e-6)


def trial_config(
    args,
    batch: int,
    seed: int,
    device: torch.device,
    precision: str | None = None,  # noqa: ANN001
) -> TrainConfig:
    cuda = device.type == "cuda"
    if precision is None:
        precision = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
    return TrainConfig(
        model="binarynet",
        dataset="cifar10",
        epochs=args.epochs,
        batch_size=batch,
        seed=seed,
        device=str(device),
        precision=precision,
        channels_last=cuda,
        compile=args.compile,
        optimizer=optimizer_config(args.family, seed),
    )


def run_single(
    args,
    data: Dataset,
    batch: int,
    device: torch.device,
    precision: str | None = None,  # noqa: ANN001
) -> float:
    config = trial_config(args, batch, 0, device, precision)
    result = train(config, dataset=data, model_options=args.model_options)
    return timed([e.seconds for e in result.epochs])


def run_stacked(args, data: Dataset, batch: int, n: int, device: torch.device) -> float:  # noqa: ANN001
    queue = [trial_config(args, batch, seed, device) for seed in range(n)]
    trainer = StackedTrainer(
        n, dataset=data, model_options=args.model_options, conv_impl=args.conv_impl,
        capture=args.capture,
    )  # fmt: skip
    results = trainer.run(lambda: (queue.pop(0), None) if queue else None)
    if trainer.oom_backoffs:
        raise RuntimeError(f"out of memory at N={n}")
    timings = ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in trainer.conv_timings.items())
    print(f"  stacked N={n} batch {batch}: convs {trainer.conv_impl_chosen}"
          f"{f' (fwd+bwd {timings})' if timings else ''}")  # fmt: skip
    return timed([e.seconds for e in results[0].epochs])


def profiled(name: str, batch: int, fn: Callable[[], float], device: torch.device) -> float:
    """``fn()`` under torch.profiler; prints the top kernels by device (or CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        seconds = fn()
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(f"  profile: {name} batch {batch}, top kernels by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))
    return seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=50_000, help="training images (+10%% val)")
    parser.add_argument("--batch-sizes", default="50,256")
    parser.add_argument("--slots", default="4,16,32", help="N values for the stacked runs")
    parser.add_argument("--width", type=float, default=1.0, help="BinaryNet width multiplier")
    parser.add_argument("--dense", type=int, default=1024, help="BinaryNet dense units")
    parser.add_argument(
        "--epochs", type=int, default=2, help="the fastest after the first is reported"
    )
    parser.add_argument("--workers", type=int, default=None, help="naive DataLoader workers")
    parser.add_argument("--compile", action="store_true", help="torch.compile our paths")
    parser.add_argument(
        "--conv-impl", default="auto", choices=("auto", *CONV_IMPLS),
        help="stacked binary convs: grouped, split, or auto (time both on CUDA)",
    )  # fmt: skip
    parser.add_argument(
        "--family", default="bop", choices=STACKABLE_FAMILIES, help="optimizer family (bop)"
    )
    parser.add_argument("--skip-naive", action="store_true", help="no naive baseline rows")
    parser.add_argument("--skip-single", action="store_true", help="no single-trial rows")
    parser.add_argument(
        "--fp32-single", action=argparse.BooleanOptionalAction, default=None,
        help="also time our single trial in fp32 (default: on CUDA, where ours is bf16)",
    )  # fmt: skip
    parser.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16"),
        help="ours single and stacked (auto: bf16 on CUDA, fp32 on the CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--capture", default="off", choices=CAPTURE_MODES,
        help="stacked: the whole step as a CUDA graph (graph/auto, CUDA only)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true",
        help="run each case under torch.profiler and print its top kernels",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="CPU smoke sizes (< 2 min)")
    parser.add_argument("--tiny", action="store_true", help="with --quick: the tiniest run")
    args = parser.parse_args(argv)
    if args.quick:
        args.device = "cpu" if args.device == "auto" else args.device
        args.images, args.width, args.dense, args.epochs = 1000, 0.0625, 64, 3
        args.batch_sizes, args.slots = "50,256", "2,4"
        if args.tiny:
            args.images, args.width, args.dense, args.epochs = 200, 0.0625, 32, 1
            args.batch_sizes, args.slots = "50", "2"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.workers is None:
        args.workers = 4 if device.type == "cuda" else 0
    if args.fp32_single is None:
        args.fp32_single = device.type == "cuda"
    tag = " compiled" if args.compile else ""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.model_options = {"width": args.width, "dense_units": args.dense}
    batches = [int(b) for b in args.batch_sizes.split(",")]
    slots = [int(n) for n in args.slots.split(",") if n.strip()]
    data = random_cifar10(int(args.images / 0.9))
    n_train = len(data.y_train) - max(1, round(0.1 * len(data.y_train)))
    model = build_model("binarynet", (3, 32, 32), 10, **args.model_options)
    flop_per_image = 6 * forward_macs(model, (3, 32, 32))  # train = 3 x forward, 2 FLOP/MAC
    floor = flop_per_image * EPOCH_IMAGES / PEAK_FLOPS
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    cudnn = torch.backends.cudnn.version()
    print(f"device: {device} ({gpu or 'cpu'}), torch {torch.__version__}, cudnn {cudnn}, "
          f"threads {torch.get_num_threads()}")  # fmt: skip
    tflop = flop_per_image * EPOCH_IMAGES / 1e12
    print(f"BinaryNet width {args.width}, dense {args.dense}: {flop_per_image / 1e9:.3f} "
          f"GFLOP/train image, {tflop:.1f} TFLOP/50k epoch, H100 floor {floor:.3f} s/epoch; "
          f"{n_train} train images/epoch, best of epochs 2..{args.epochs}")  # fmt: skip
    rows = []
    for batch in batches:
        cases = []
        if not args.skip_naive:
            cases.append(("naive", 1, lambda b=batch: run_naive(args, data, b, device)))
        if args.fp32_single and not args.skip_single:
            cases.append((f"single fp32{tag}", 1,
                          lambda b=batch: run_single(args, data, b, device, "fp32")))  # fmt: skip
        if not args.skip_single:
            cases.append(
                (f"ours single{tag}", 1, lambda b=batch: run_single(args, data, b, device))
            )
        for n in slots:
            fits = choose_slots(  # the memory bound only: the table times each N itself
                "binarynet", (3, 32, 32), batch, device, n, model_options=args.model_options,
                family=args.family, precision="bf16" if device.type == "cuda" else "fp32",
                by_throughput=False,
            )  # fmt: skip
            cases.append((f"stacked N={fits}{tag}", fits, lambda b=batch, k=fits: run_stacked(
                args, data, b, k, device)))  # fmt: skip
        for name, n, fn in cases:
            try:
                seconds = profiled(name, batch, fn, device) if args.profile else fn()
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                print(f"  {name} batch {batch}: failed ({exc})")
                continue
            per_model = seconds / n * EPOCH_IMAGES / n_train
            rows.append((name, batch, n, seconds, per_model, n * n_train / seconds))
            print(f"  done: {name} batch {batch}: {seconds:.2f} s, {per_model:.3f} s/model-epoch, "
                  f"{n * n_train / seconds:.0f} images/s", flush=True)  # fmt: skip
    print()
    header = (f"{'case':<22}{'batch':>6}{'N':>4}{'group s':>9}{'s/model-epoch':>15}"
              f"{'images/s':>11}{'x naive':>9}{'% floor':>9}")  # fmt: skip
    print(header)
    print("-" * len(header))
    naive = {b: r[4] for r in rows for b in [r[1]] if r[0] == "naive"}
    for name, batch, n, seconds, per_model, ips in rows:
        speedup = naive[batch] / per_model if batch in naive else math.nan
        print(f"{name:<22}{batch:>6}{n:>4}{seconds:>9.2f}{per_model:>15.3f}{ips:>11.0f}"
              f"{speedup:>9.2f}{100 * floor / per_model:>8.1f}%")  # fmt: skip
    small = min(batches)
    at_small = [r for r in rows if r[1] == small]
    if at_small and small in naive:
        best = min(at_small, key=lambda r: r[4])
        per_trial = {"naive": naive[small], best[0]: best[4]}
        print()
        print(f"trials/GPU-hour, {RECIPE_EPOCHS}-epoch Bop 5.1 recipe (from batch {small}, "
              "training only, no per-trial start-up):")  # fmt: skip
        for name, epoch_s in per_trial.items():
            print(f"  {name:<22}{3600 / (RECIPE_EPOCHS * epoch_s):>10.2f}")
        print(f"  ratio                 {naive[small] / best[4]:>10.2f}x")


if __name__ == "__main__":
    main()
