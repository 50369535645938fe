"""Plot rendering cost against study size: every plot kind on a small and a large study.

Builds two bop2 studies in memory (``--small`` and ``--large`` trials, ``--epochs`` epoch
records each, per-layer flip ratios, the worker's ``filter`` record from
``bnn_core.filters.filter_summary``), renders every kind of ``service.plots`` as PNG from the
trials (what the API route does after its one storage read), and prints the CPU seconds of
each and the large/small ratio. The storage read itself is measured by
``benchmarks/api_latency.py --trials N``.

    python benchmarks/plot_kinds.py                  # 20 vs 2000 trials, 20 epochs
    python benchmarks/plot_kinds.py --large 5000 --format svg
"""

from __future__ import annotations

import argparse
import random
import time

from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from bnn_core.config import OptimizerConfig
from bnn_core.filters import filter_summary
from service.plots import PLOT_KINDS, render_plot
from service.spec import SPEC_EXAMPLES, StudySpec

SPACE = {
    "gamma": {"low": 1e-6, "high": 1e-2, "log": True},
    "sigma": {"low": 1e-7, "high": 1e-2, "log": True},
    "threshold": {"low": 1e-9, "high": 1e-4, "log": True, "include_zero": True},
}
LAYERS = [f"layer{i}" for i in range(9)]


def trials(n: int, epochs: int, seed: int = 0) -> list[FrozenTrial]:
    rng = random.Random(seed)
    out = []
    for number in range(n):
        gamma, sigma = 10 ** rng.uniform(-6, -2), 10 ** rng.uniform(-7, -2)
        params: dict = {"gamma": gamma, "sigma": sigma}
        dists: dict = {
            "gamma": FloatDistribution(1e-6, 1e-2, log=True),
            "sigma": FloatDistribution(1e-7, 1e-2, log=True),
            "threshold_is_zero": CategoricalDistribution([True, False]),
        }
        params["threshold_is_zero"] = rng.random() < 0.3
        if not params["threshold_is_zero"]:
            params["threshold"] = 10 ** rng.uniform(-9, -4)
            dists["threshold"] = FloatDistribution(1e-9, 1e-4, log=True)
        accuracy = rng.uniform(0.3, 0.95)
        records = [
            {
                "epoch": e,
                "val_accuracy": accuracy * e / epochs,
                "flip_ratio": 10 ** (-2 - e * 0.1),
                "flip_ratio_per_layer": {
                    k: 10 ** (-2 - e * 0.1 - i * 0.2) for i, k in enumerate(LAYERS)
                },
            }  # fmt: skip
            for e in range(1, epochs + 1)
        ]
        config = OptimizerConfig(name="bop2", gamma=gamma, sigma=sigma,
                                 threshold=params.get("threshold", 0.0))  # fmt: skip
        trial = create_trial(
            state=TrialState.COMPLETE,
            value=accuracy,
            params=params,
            distributions=dists,
            user_attrs={"epochs": records, "filter": filter_summary(config, 390)},
        )
        trial.number = number
        out.append(trial)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--format", choices=("png", "svg"), default="png")
    args = parser.parse_args()
    spec = StudySpec.model_validate(
        {**SPEC_EXAMPLES["bop2"], "name": "bench", "search_space": SPACE}
    )
    studies = {size: trials(size, args.epochs) for size in (args.small, args.large)}
    for kind in PLOT_KINDS:  # imports, fonts, caches
        render_plot(kind, spec, studies[args.small], args.format)
    print(f"{'kind':<12} {args.small:>8} trials {args.large:>8} trials   ratio  (CPU s)")
    for kind in PLOT_KINDS:
        seconds = []
        for size in (args.small, args.large):
            start = time.process_time()
            render_plot(kind, spec, studies[size], args.format)
            seconds.append(time.process_time() - start)
        print(
            f"{kind:<12} {seconds[0]:>15.3f} {seconds[1]:>15.3f} {seconds[1] / seconds[0]:>7.1f}"
        )


if __name__ == "__main__":
    main()
