"""``bnn-train`` / ``python -m bnn_core``: train one binary network and print a per-epoch table.

Bad input (unknown model, negative gamma, missing data directory ...) gives a one-line message
on stderr and exit code 2; a diverged run exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .config import (
    LATENT_LR_SCALINGS,
    OPTIMIZER_NAMES,
    ConfigError,
    EpochMetrics,
    OptimizerConfig,
    TrainConfig,
)
from .data import DATASET_NAMES
from .models import MODEL_NAMES
from .train import TrainingDiverged, train

__all__ = ["main", "build_parser", "config_from_args"]

PROG = "bnn-train"

# hyperparameter columns shown per optimizer family (keys of EpochMetrics.hyperparameters)
HYPER_COLUMNS = {
    "bop": ("gamma", "threshold"),
    "bop2": ("gamma", "sigma", "threshold"),
    "filter": ("alpha", "gamma"),
    "latent-adam": ("lr",),
    "latent-sgd": ("lr",),
}
HYPER_TITLES = {"threshold": "tau"}
# CLI option -> OptimizerConfig field (only passed when given)
OPTIMIZER_OPTIONS = (
    "gamma",
    "threshold",
    "sigma",
    "alpha",
    "lr",
    "momentum",
    "weight_decay",
    "latent_init_scale",
    "latent_weight_clip",
    "latent_lr_scaling",
    "real_lr",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train a binary neural network (Bop, CEMA, latent).")
    p.add_argument("--model", default="mlp", choices=MODEL_NAMES)
    p.add_argument("--dataset", default="digits", choices=DATASET_NAMES)
    p.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="folder holding one sub-folder per data set (default: $BNN_TUNE_DATA_ROOT, "
        "else ~/.cache/bnn-tune); the data set is read from DIR/<dataset>",
    )
    p.add_argument(
        "--download", action="store_true", help="fetch the dataset into the data root if missing"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--optimizer", default="bop", choices=OPTIMIZER_NAMES)
    p.add_argument("--gamma", type=float, help="Bop/Bop2 adaptivity, CEMA first EMA rate")
    p.add_argument("--threshold", "--tau", type=float, dest="threshold", help="Bop threshold")
    p.add_argument("--sigma", type=float, help="Bop2ndOrder second-moment rate")
    p.add_argument("--alpha", type=float, help="CEMA second EMA rate (decays linearly)")
    p.add_argument("--lr", type=float, help="latent-weight learning rate")
    p.add_argument("--momentum", type=float, help="latent SGD momentum")
    p.add_argument("--weight-decay", type=float, help="latent weight decay")
    p.add_argument("--latent-init-scale", type=float, help="U(-s, s) latent init")
    p.add_argument(
        "--latent-weight-clip",
        type=float,
        metavar="FLOAT",
        help="clamp latent weights to [-clip, clip] after each update (default: no clipping)",
    )
    p.add_argument(
        "--latent-lr-scaling",
        choices=LATENT_LR_SCALINGS,
        help="per-layer latent lr multiplier: none (default) or xavier (BinaryConnect)",
    )
    p.add_argument("--real-lr", type=float, help="Adam lr of the real parameters")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--width", type=float, default=None, help="channel multiplier (conv nets)")
    p.add_argument("--hidden", type=int, default=None, help="hidden units (mlp)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--test", action="store_true", help="report test accuracy at the end")
    p.add_argument("--json", metavar="PATH", help="write the TrainResult as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the TrainConfig (raises ConfigError naming the field)."""
    given = {k: getattr(args, k) for k in OPTIMIZER_OPTIONS if getattr(args, k) is not None}
    return TrainConfig(
        model=args.model,
        dataset=args.dataset,
        data_root=args.data_root,
        download=args.download,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=OptimizerConfig(name=args.optimizer, **given),
        seed=args.seed,
        val_fraction=args.val_fraction,
        augment=args.augment,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        max_train_samples=args.max_train_samples,
        evaluate_test=args.test,
    )


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.model == "mlp":
        if args.width is not None:
            raise ConfigError("width", "mlp has no width; use --hidden")
        return {} if args.hidden is None else {"hidden": args.hidden}
    if args.hidden is not None:
        raise ConfigError("hidden", f"{args.model} has no hidden size; use --width")
    if args.width is not None and not args.width > 0:
        raise ConfigError("width", f"must be > 0, got {args.width!r}")
    return {} if args.width is None else {"width": args.width}


class _Table:
    """Fixed-width per-epoch table on stdout."""

    def __init__(self, optimizer: str) -> None:
        self.keys = HYPER_COLUMNS[optimizer]
        titles = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "flip_ratio"]
        titles += [HYPER_TITLES.get(k, k) for k in self.keys] + ["seconds"]
        self.widths = [max(len(t), 10) for t in titles]
        self.widths[0] = 5
        self.header = self._line(titles)

    def _line(self, cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) for c, w in zip(cells, self.widths, strict=True))

    def row(self, m: EpochMetrics) -> None:
        if self.header:
            print(self.header, flush=True)
            self.header = ""
        cells = [str(m.epoch), f"{m.train_loss:.4f}", f"{m.train_accuracy:.4f}"]
        cells += [f"{m.val_loss:.4f}", f"{m.val_accuracy:.4f}", f"{m.flip_ratio:.3e}"]
        cells += [f"{m.hyperparameters.get(k, float('nan')):.3g}" for k in self.keys]
        cells.append(f"{m.seconds:.2f}")
        print(self._line(cells), flush=True)


class _Progress:
    """A tqdm bar over the batches of the current epoch (stderr; off when not a terminal)."""

    def __init__(self, disabled: bool) -> None:
        self.disabled = disabled
        self.bar: Any = None

    def batch(self, epoch: int, index: int, batches: int) -> None:
        if self.disabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=batches, desc=f"epoch {epoch}", leave=False, disable=None)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    options = _model_options(args)
    print(
        f"{PROG}: {config.model} on {config.dataset}, optimizer {config.optimizer.name}, "
        f"{config.epochs} epochs, batch {config.batch_size}, seed {config.seed}",
        flush=True,
    )
    table = _Table(config.optimizer.name)
    progress = _Progress(args.no_progress)

    def on_epoch_end(metrics: EpochMetrics) -> None:
        progress.close()
        table.row(metrics)

    try:
        result = train(config, on_epoch_end, on_batch_end=progress.batch, model_options=options)
    finally:
        progress.close()
    summary = f"best val_acc {result.best_val_accuracy:.4f}"
    if result.test_accuracy is not None:
        summary += f", test_acc {result.test_accuracy:.4f}"
    print(f"{summary}, {result.seconds:.1f} s", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(dataclasses.asdict(result), handle, indent=2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
