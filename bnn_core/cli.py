"""``bnn-train`` / ``python -m bnn_core``: train one binary network and print a per-epoch table.

``--recipe NAME`` runs one of the papers' protocols (``bnn_core.recipes``; ``--list-recipes``);
options given with it override the recipe (epochs, data root, device, optimizer values ...).
Every scheduled hyperparameter has a ``--<name>-schedule KIND[:key=value,...]`` option
(``bnn_core.config.Schedule.parse``). Bad input (unknown model, negative gamma, missing data
set ...) gives a one-line message on stderr and exit code 2; a diverged run exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .config import (
    EVAL_PROTOCOLS,
    LATENT_LR_SCALINGS,
    OPTIMIZER_NAMES,
    SCHEDULE_KINDS,
    SCHEDULED_HYPERPARAMETERS,
    ConfigError,
    EpochMetrics,
    OptimizerConfig,
    Schedule,
    TrainConfig,
)
from .data import DATASET_NAMES
from .models import MODEL_NAMES
from .recipes import RECIPE_NAMES, RECIPES, get_recipe
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
    "decoupled_weight_decay",
    "bias_correction",
)
# Defaults of the options that a recipe sets itself (None in the parser, so that a recipe can
# tell which ones were given).
RUN_DEFAULTS = {"model": "mlp", "dataset": "digits", "epochs": 10, "batch_size": 50}
# TrainConfig fields a recipe takes from the command line when given.
RECIPE_OVERRIDES = (
    "epochs", "batch_size", "data_root", "download", "seed", "precision",
    "max_train_samples", "augment", "channels_last", "compile", "eval_protocol", "val_fraction",
)  # fmt: skip


def _schedule(text: str) -> Schedule:
    try:
        return Schedule.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train a binary neural network (Bop, CEMA, latent).")
    p.add_argument(
        "--recipe",
        choices=RECIPE_NAMES,
        help="run a paper's published protocol (see --list-recipes); other options override it",
    )
    p.add_argument("--list-recipes", action="store_true", help="list the recipes and exit")
    p.add_argument("--model", default=None, choices=MODEL_NAMES, help="default mlp")
    p.add_argument("--dataset", default=None, choices=DATASET_NAMES, help="default digits")
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
    p.add_argument("--epochs", type=int, default=None, help="default 10")
    p.add_argument("--batch-size", type=int, default=None, help="default 50")
    p.add_argument("--optimizer", default=None, choices=OPTIMIZER_NAMES, help="default bop")
    p.add_argument("--gamma", type=float, help="Bop/Bop2 adaptivity, CEMA first EMA rate")
    p.add_argument("--threshold", "--tau", type=float, dest="threshold", help="Bop threshold")
    p.add_argument("--sigma", type=float, help="Bop2ndOrder second-moment rate")
    p.add_argument("--alpha", type=float, help="CEMA second EMA rate (see --alpha-schedule)")
    p.add_argument(
        "--bias-correction", action="store_true", default=None, help="Bop2ndOrder 'unbiased'"
    )
    p.add_argument("--lr", type=float, help="latent-weight learning rate")
    p.add_argument("--momentum", type=float, help="latent SGD momentum")
    p.add_argument("--weight-decay", type=float, help="latent weight decay")
    p.add_argument(
        "--decoupled-weight-decay",
        action="store_true",
        default=None,
        help="decoupled weight decay (SGDW/AdamW) instead of L2 in the gradient; latent-sgd "
        "with it is exactly the cascaded filter with gamma = 1 - momentum, alpha = lr * wd",
    )
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
    schedules = p.add_argument_group(
        "schedules",
        f"KIND[:key=value,...], KIND one of {', '.join(SCHEDULE_KINDS)}; keys factor, "
        "every_epochs (staircase), end_value (linear, cosine, linear-epoch, polynomial), "
        "power (polynomial). Evaluated per step. E.g. staircase:factor=0.1,every_epochs=100",
    )
    for name in SCHEDULED_HYPERPARAMETERS:
        flags = [f"--{name.replace('_', '-')}-schedule"]
        if name == "threshold":
            flags.append("--tau-schedule")
        schedules.add_argument(*flags, dest=f"{name}_schedule", type=_schedule, metavar="SCHEDULE")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"))
    p.add_argument(
        "--eval-protocol",
        default=None,
        choices=EVAL_PROTOCOLS,
        help="holdout (default): validate on a held-out 10%% of the training set; test: "
        "REPRODUCTION MODE, train on the whole training set and report the test set as val "
        "(choosing hyperparameters on it is tuning on the test set)",
    )
    p.add_argument("--val-fraction", type=float, default=None, help="default 0.1 (holdout)")
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--width", type=float, default=None, help="channel multiplier (conv nets)")
    p.add_argument("--hidden", type=int, default=None, help="hidden units (mlp)")
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--test", action="store_true", help="report test accuracy at the end")
    p.add_argument("--json", metavar="PATH", help="write the TrainResult as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the TrainConfig (raises ConfigError naming the field).

    Without ``--recipe``: the options, with ``RUN_DEFAULTS`` and the optimizer family's
    defaults for what is not given. With it: the recipe, overridden by the options given.
    """
    schedules = tuple(f"{name}_schedule" for name in SCHEDULED_HYPERPARAMETERS)
    optimizer_values = _given(args, OPTIMIZER_OPTIONS + schedules)
    run_values = _given(args, RECIPE_OVERRIDES)
    common = {"device": args.device or "auto", "evaluate_test": args.test}
    if args.recipe is None:
        run = {**RUN_DEFAULTS, **_given(args, ("model", "dataset")), **run_values}
        run.update(common)
        optimizer = OptimizerConfig(name=args.optimizer or "bop", **optimizer_values)
        return TrainConfig(optimizer=optimizer, **run)
    run_values.update(common)
    fixed = [f"--{name}" for name in ("model", "dataset", "optimizer") if getattr(args, name)]
    if fixed:
        raise ConfigError("recipe", f"{args.recipe} fixes {', '.join(fixed)}; leave them out")
    base = get_recipe(args.recipe).build()
    optimizer = dataclasses.replace(base.optimizer, **optimizer_values)
    return dataclasses.replace(base, optimizer=optimizer, **run_values)


def list_recipes() -> str:
    """One line per recipe: name, published top-1 it should reach, summary."""
    lines = []
    for recipe in RECIPES.values():
        target = "no number" if recipe.target is None else f"{recipe.target:.1%}"
        lines.append(f"{recipe.name:26} {target:>11}  {recipe.summary}")
    return "\n".join(lines)


def _model_options(args: argparse.Namespace, model: str) -> dict[str, Any]:
    if model == "mlp":
        if args.width is not None:
            raise ConfigError("width", "mlp has no width; use --hidden")
        return {} if args.hidden is None else {"hidden": args.hidden}
    if args.hidden is not None:
        raise ConfigError("hidden", f"{model} has no hidden size; use --width")
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
    options = _model_options(args, config.model)
    print(
        f"{PROG}: {config.model} on {config.dataset}, optimizer {config.optimizer.name}, "
        f"{config.epochs} epochs, batch {config.batch_size}, seed {config.seed}"
        + (f" (recipe {args.recipe})" if args.recipe else ""),
        flush=True,
    )
    if config.eval_protocol == "test":
        print(
            f"{PROG}: eval protocol 'test' (reproduction mode): trained on the whole training "
            "set; val_* columns are the TEST set, do not tune on them",
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
    if args.list_recipes:
        print(list_recipes())
        return 0
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
