"""Every plot kind, for every family, as PNG and SVG, from trials in real Optuna storage
(SQLite and PostgreSQL); the "nothing yet" states; the plot route's query parameters.

Trials are written through Optuna (ask/tell) the way the worker writes them: sampled
parameters (``<name>_is_zero`` first for ``include_zero`` ranges), ``epochs`` records with
per-layer flip ratios, and the ``filter`` record computed by ``bnn_core.filters`` from the
sampled configuration (the service only draws it).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import matplotlib
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.samplers import RandomSampler
from optuna.trial import TrialState, create_trial

from bnn_core.config import OptimizerConfig, Schedule
from bnn_core.filters import filter_summary, rate_to_cutoff
from service.db import make_engine, session_scope
from service.lifecycle import transition
from service.plots import PLOT_KINDS, StudyData, render_plot
from service.plots.filters import plot_filter
from service.plots.optuna_views import in_memory_study
from service.plots.params import plot_params
from service.spec import SPEC_EXAMPLES, ChoiceSpec, RangeSpec, StudySpec

optuna.logging.set_verbosity(optuna.logging.WARNING)

LAYERS = ["conv1", "conv2", "dense1", "dense2"]
STEPS_PER_EPOCH = 36
# bop2 with the threshold Optuna records as threshold_is_zero / threshold (include_zero).
BOP2_SPACE = {
    "gamma": {"low": 1e-6, "high": 1e-2, "log": True},
    "sigma": {"low": 1e-7, "high": 1e-2, "log": True},
    "threshold": {"low": 1e-9, "high": 1e-4, "log": True, "include_zero": True},
}
FAMILIES = {
    "bop": {},
    "bop2": {"search_space": BOP2_SPACE},
    "filter": {},  # two objectives: val_accuracy and flip_ratio
    "latent-sgd": {},
    "latent-adam": {},
}
FILTER_FIELDS = ("gamma", "threshold", "sigma", "alpha", "lr", "momentum", "weight_decay")


def make_spec(family: str, name: str | None = None, **overrides: Any) -> StudySpec:
    body = {**SPEC_EXAMPLES[family], **FAMILIES.get(family, {}), **overrides}
    return StudySpec.model_validate({**body, "name": name or f"plot-{family}"})


def _suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """The worker's sampling semantics: include_zero asks ``<name>_is_zero`` first."""
    values: dict[str, Any] = {}
    for name, param in spec.space.items():
        if isinstance(param, RangeSpec):
            if param.include_zero and trial.suggest_categorical(f"{name}_is_zero", [True, False]):
                values[name] = 0.0
            else:
                values[name] = trial.suggest_float(name, param.low, param.high, log=param.log)
        elif isinstance(param, ChoiceSpec):
            values[name] = trial.suggest_categorical(name, list(param.choices))
    return values


def _filter_record(family: str, values: dict[str, Any]) -> dict[str, Any] | None:
    if family == "latent-adam":
        return None
    fields = {k: float(v) for k, v in values.items() if k in FILTER_FIELDS}
    extra: dict[str, Any] = {"decoupled_weight_decay": True} if family == "latent-sgd" else {}
    if family == "filter":
        extra["alpha_schedule"] = Schedule()
        fields["alpha"] = min(fields["alpha"], fields["gamma"])
    if family == "latent-sgd" and fields.get("weight_decay", 0.0) == 0.0:
        return None  # a pure integrator: the worker records no filter
    config = OptimizerConfig(name=family, **fields, **extra)
    return filter_summary(config, STEPS_PER_EPOCH)


def _epochs(rng: random.Random, accuracy: float, n: int) -> list[dict[str, Any]]:
    records = []
    for epoch in range(1, n + 1):
        per_layer = {
            layer: 10 ** (-2 - i * 0.5 - epoch * 0.15 + rng.uniform(-0.1, 0.1))
            for i, layer in enumerate(LAYERS)
        }
        records.append(
            {
                "epoch": epoch,
                "val_accuracy": accuracy * (1 - math.exp(-epoch)) / (1 - math.exp(-n)),
                "flip_ratio": sum(per_layer.values()) / len(per_layer),
                "flip_ratio_per_layer": per_layer,
                "val_loss": "nan" if epoch == 1 and accuracy < 0.3 else 1.0 / epoch,
            }
        )
    return records


def fill_study(
    study: optuna.Study, spec: StudySpec, n_trials: int, seed: int = 0, n_epochs: int = 6
) -> None:
    """``n_trials`` finished trials (one in eight pruned, one in ten failed) of ``spec``."""
    rng = random.Random(seed)
    for i in range(n_trials):
        trial = study.ask()
        values = _suggest(trial, spec)
        accuracy = rng.uniform(0.3, 0.95)
        trial.set_user_attr("epochs", _epochs(rng, accuracy, n_epochs))
        if spec.optimizer != "latent-adam":
            trial.set_user_attr("filter", _filter_record(spec.optimizer, values))
        if i % 10 == 9:
            trial.set_user_attr("error", "FloatingPointError: training diverged")
            study.tell(trial, state=TrialState.FAIL)
        elif i % 8 == 7:
            if not spec.is_multi_objective:
                trial.report(accuracy / 2, 1)
            study.tell(trial, state=TrialState.PRUNED)
        elif spec.is_multi_objective:
            study.tell(trial, [accuracy, 10 ** rng.uniform(-4, -1)])
        else:
            study.tell(trial, accuracy)


def new_study(url: str, spec: StudySpec, name: str) -> optuna.Study:
    return optuna.create_study(storage=url, study_name=name, directions=spec.directions)


def svg_text(svg: bytes) -> str:
    """The text of an SVG rendered with text as text, tags dropped."""
    return " ".join(re.sub(r"<[^>]+>", " ", svg.decode()).split())


def render_both(kind: str, spec: StudySpec, trials: list, **kwargs: Any) -> str:
    png = render_plot(kind, spec, trials, "png", **kwargs)
    assert png.startswith(b"\x89PNG") and len(png) > 5000, kind
    svg = render_plot(kind, spec, trials, "svg", **kwargs)
    assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg, kind
    return svg_text(svg)


# Every family from SQLite; the include_zero and two-objective ones from PostgreSQL as well
# (what differs between the backends is how the trials come back, not how they are drawn).
STORED = [("sqlite", f) for f in FAMILIES] + [("postgres", "bop2"), ("postgres", "filter")]


@pytest.mark.parametrize(("backend", "family"), STORED)
def test_every_kind_renders_png_and_svg(
    backend: str, family: str, request: pytest.FixtureRequest, unique_name: Callable[..., str]
) -> None:
    spec = make_spec(family)
    url = request.getfixturevalue(f"{backend}_url")
    study = new_study(url, spec, unique_name(family))
    fill_study(study, spec, n_trials=12)
    trials = study.get_trials(deepcopy=False)
    texts = {kind: render_both(kind, spec, trials, status="completed") for kind in PLOT_KINDS}

    # every sampled parameter has a panel; include_zero ranges a "0" strip
    for name, param in spec.space.items():
        if isinstance(param, RangeSpec | ChoiceSpec):
            assert name in texts["params"], (family, name)
    if family == "bop2":
        assert "threshold (0 at left)" in texts["params"]
    if spec.is_multi_objective:
        assert "Pareto front" in texts["pareto"] and "flip_ratio" in texts["pareto"]
    else:
        assert "needs two objectives" in texts["pareto"]
    if family == "latent-adam":
        assert "latent Adam has no filter view" in texts["filter"]
    else:
        assert "pass band of #" in texts["filter"] and "steps" in texts["filter"]
        assert f"period (epochs of {STEPS_PER_EPOCH} steps)" in texts["filter"]
    if family == "latent-sgd":
        assert "equivalent cascaded filter" in texts["filter"]
    assert "dense2" in texts["layer-flips"] and "all layers" in texts["layer-flips"]
    assert "importance" in texts["importance"].lower()


def test_nothing_yet_states_say_why() -> None:
    """Empty, running-only and failed studies: every kind says why it draws nothing."""
    spec = make_spec("bop2")
    study = optuna.create_study(directions=spec.directions)
    per_epoch = ("curves", "flips", "layer-flips")
    for kind in PLOT_KINDS:
        text = svg_text(render_plot(kind, spec, [], "svg", status="queued"))
        expected = "needs two objectives" if kind == "pareto" else "no completed trials yet"
        assert expected in text, kind
    running = study.ask()
    _suggest(running, spec)
    for kind in PLOT_KINDS:
        text = svg_text(render_plot(kind, spec, study.get_trials(), "svg", status="running"))
        if kind in per_epoch:
            assert "1 trial running, no epoch finished yet" in text, kind
        elif kind != "pareto":
            assert "1 trial running, none completed yet" in text, kind
    error = "all 3 trials failed; first: FileNotFoundError: no data set in /data/cifar10 " * 4
    for kind in PLOT_KINDS:
        text = svg_text(
            render_plot(kind, spec, study.get_trials(), "svg", status="failed", error=error)
        )
        if kind != "pareto":
            assert "study failed: all 3 trials failed; first: FileNotFoundError" in text, kind
            assert "learning curves" not in text and len(text) < 4000


def test_a_failed_study_without_an_error_names_its_first_failed_trial() -> None:
    spec = make_spec("bop")
    study = optuna.create_study(directions=spec.directions)
    trial = study.ask()
    trial.set_user_attr("error", "ConfigError: model mlp needs a flat input\nTraceback ...")
    study.tell(trial, state=TrialState.FAIL)
    text = svg_text(render_plot("curves", spec, study.get_trials(), "svg", status="failed"))
    assert "study failed: ConfigError: model mlp needs a flat input" in text
    assert "Traceback" not in text


def test_many_trials_get_a_colour_bar_not_a_truncated_legend() -> None:
    spec = make_spec("bop")
    study = optuna.create_study(directions=spec.directions)
    fill_study(study, spec, n_trials=40, n_epochs=3)
    trials = study.get_trials(deepcopy=False)
    for kind in ("curves", "flips", "params"):
        text = svg_text(render_plot(kind, spec, trials, "svg"))
        assert "trial number" in text, kind  # the colour bar's label
        assert "#3 complete" not in text, kind  # no per-trial legend entries
    few = svg_text(render_plot("curves", spec, trials[:4], "svg"))
    # a legend: the best trial in black, each other one by number
    assert len(re.findall(r"#\d+ complete", few)) == 3 and "best: #" in few
    assert "trial number" not in few


def _api_study(client: Any, backend_url: str, spec: StudySpec, n_trials: int) -> dict[str, Any]:
    body = {**spec.model_dump(mode="json", exclude_none=True), "n_trials": 50}
    response = client.post("/api/v1/studies", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    if n_trials:
        study = optuna.load_study(
            study_name=created["optuna_study_name"],
            storage=backend_url,
            sampler=optuna.samplers.RandomSampler(seed=0),  # the same trials on every run
        )
        fill_study(study, spec, n_trials, n_epochs=3)
    return created


def test_the_route_serves_every_kind_with_trial_and_compare(
    client: Any, backend_url: str, unique_name: Callable[..., str]
) -> None:
    # Weight decay never 0 here: a latent SGD without it has no filter view, and the overlay
    # below needs this study's filters.
    space = {
        "lr": {"low": 1e-3, "high": 1.0, "log": True},
        "momentum": {"choices": [0.0, 0.9]},
        "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    }
    sgd_spec = make_spec("latent-sgd", unique_name("sgd"), search_space=space)
    sgd = _api_study(client, backend_url, sgd_spec, 6)
    cascade = _api_study(client, backend_url, make_spec("filter", unique_name("cema")), 6)
    base = sgd["links"]["self"]
    for kind in PLOT_KINDS:
        png = client.get(f"{base}/plots/{kind}")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png", kind
        assert png.content.startswith(b"\x89PNG")
    compared = client.get(
        f"{base}/plots/filter", params={"format": "svg", "compare": cascade["id"]}
    )
    assert compared.headers["content-type"] == "image/svg+xml"
    text = svg_text(compared.content)
    assert f"{sgd['name']} vs {cascade['name']}" in text and f"{cascade['name']} #" in text
    one = svg_text(client.get(f"{base}/plots/layer-flips?trial=2&format=svg").content)
    assert "trial #2" in one and "conv1" in one

    missing_trial = client.get(f"{base}/plots/layer-flips", params={"trial": 99})
    assert missing_trial.status_code == 404 and "trial" in missing_trial.json()["detail"]
    missing_study = client.get(f"{base}/plots/filter", params={"compare": 2_000_000_000})
    assert missing_study.status_code == 404
    assert missing_study.json()["detail"].startswith("compare: study")
    for params in ({"trial": -1}, {"compare": 0}, {"trial": "x"}, {"format": "gif"}):
        bad = client.get(f"{base}/plots/layer-flips", params=params)
        assert bad.status_code == 422, params
        assert next(iter(params)) in bad.text
    unknown = client.get(f"{base}/plots/violin")
    assert unknown.status_code == 404 and "layer-flips" in unknown.json()["detail"]


def test_the_route_names_a_failed_study_and_its_error(
    client: Any, backend_url: str, unique_name: Callable[..., str]
) -> None:
    created = _api_study(client, backend_url, make_spec("bop", unique_name("failing")), 0)
    engine = make_engine(backend_url)
    with session_scope(engine) as session:
        error = "all 24 trials failed; first: FileNotFoundError: cifar10 not found in /data"
        assert transition(session, created["id"], "failed", error=error)
    engine.dispose()
    text = svg_text(client.get(f"{created['links']['self']}/plots/curves?format=svg").content)
    assert "study failed: all 24 trials failed; first: FileNotFoundError" in text


def test_optuna_plots_leave_no_style_behind_and_threads_get_the_same_picture() -> None:
    """Optuna's matplotlib plots switch pyplot to ggplot while drawing; a curves plot drawn at
    the same time in another thread must come out exactly as when drawn alone."""
    spec = make_spec("filter")
    study = optuna.create_study(directions=spec.directions)
    fill_study(study, spec, n_trials=8, n_epochs=3)
    trials = study.get_trials(deepcopy=False)
    before = dict(matplotlib.rcParams)
    alone = render_plot("curves", spec, trials, "png")
    render_plot("importance", spec, trials, "png")
    assert dict(matplotlib.rcParams) == before
    with ThreadPoolExecutor(4) as pool:
        jobs = [
            pool.submit(render_plot, kind, spec, trials, "png")
            for kind in ("importance", "curves", "pareto", "curves")
        ]
        outputs = [job.result() for job in jobs]
    assert outputs[1] == alone and outputs[3] == alone


def test_a_failed_study_with_results_draws_them_and_says_it_failed() -> None:
    spec = make_spec("filter")
    study = optuna.create_study(directions=spec.directions)
    fill_study(study, spec, n_trials=4, n_epochs=2)
    error = "all 24 trials failed; first: FileNotFoundError: cifar10 not found"
    for kind in ("curves", "params", "pareto", "filter"):
        text = svg_text(
            render_plot(kind, spec, study.get_trials(), "svg", status="failed", error=error)
        )
        assert f"study failed: {error}" in text, kind
        assert "completed trials" in text or "per epoch" in text or "best trials" in text, kind


def test_include_zero_trials_sit_in_the_zero_strip_and_the_axis_stays_log() -> None:
    """bop2's threshold: trials with threshold_is_zero=True are drawn at "0" beside a log axis
    that holds exactly the others (nothing squashed to 0, no trial lost)."""
    spec = make_spec("bop2")
    study = optuna.create_study(directions=spec.directions, sampler=RandomSampler(seed=1))
    fill_study(study, spec, n_trials=30, n_epochs=1)
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    zeros = [t for t in done if t.params["threshold_is_zero"]]
    others = sorted(t.params["threshold"] for t in done if not t.params["threshold_is_zero"])
    assert zeros and others  # the seed gives both kinds
    fig = plot_params(StudyData(spec, study.get_trials()))
    strip = next(ax for ax in fig.axes if [t.get_text() for t in ax.get_xticklabels()] == ["0"])
    main = next(ax for ax in fig.axes if ax.get_xlabel() == "threshold (0 at left)")
    assert main.get_xscale() == "log" and strip.get_shared_y_axes().joined(strip, main)
    # first collection: the points (the red ring of the best trial comes after)
    assert len(strip.collections[0].get_offsets()) == len(zeros)
    xs = sorted(float(x) for x, _ in main.collections[0].get_offsets())
    assert xs == pytest.approx(others)
    low, high = main.get_xlim()
    assert low < 1e-9 and high > 1e-4  # the whole searched range of the log axis


@pytest.mark.filterwarnings("ignore:.*to achieve low `target` values")
def test_importance_of_a_maximized_objective_ranks_what_makes_trials_good() -> None:
    """PED-ANOVA ranks the parameters of the best trials. Accuracy is high only near a = 0.5
    and falls with b elsewhere, so for the top trials a matters; read as "low is good" (the
    evaluator's default for each objective of a two-objective study) b would."""
    spec = make_spec("filter")
    rng = random.Random(0)
    dists = {"a": FloatDistribution(0, 1), "b": FloatDistribution(0, 1)}
    trials = []
    for _ in range(300):
        a, b = rng.random(), rng.random()
        accuracy = 0.95 if abs(a - 0.5) < 0.05 else 0.2 + 0.5 * b
        trials.append(
            create_trial(params={"a": a, "b": b}, distributions=dists, values=[accuracy, 0.1])
        )
    copy = in_memory_study(StudyData(spec, trials), trials, all_minimized=True)
    importances = optuna.importance.get_param_importances(copy, target=lambda t: t.values[0])
    assert importances["a"] > importances["b"]
    naive = in_memory_study(StudyData(spec, trials), trials)
    wrong = optuna.importance.get_param_importances(naive, target=lambda t: t.values[0])
    assert wrong["b"] > wrong["a"]


def test_filter_view_marks_each_best_trials_cutoff_and_labels_the_pass_band() -> None:
    """Bop's filter is one EMA of rate gamma: its cutoff (the closed form of
    ``rate_to_cutoff``) must be where the plot marks it, and the pass band label must give
    the cutoff's period in steps and in epochs of STEPS_PER_EPOCH steps."""
    spec = make_spec("bop")
    study = optuna.create_study(directions=spec.directions, sampler=RandomSampler(seed=2))
    fill_study(study, spec, n_trials=12, n_epochs=1)
    fig = plot_filter(StudyData(spec, study.get_trials()))
    ax = fig.axes[0]
    best = sorted(
        (t for t in study.get_trials() if t.state == TrialState.COMPLETE),
        key=lambda t: -t.values[0],
    )[:5]
    expected = sorted(rate_to_cutoff(t.params["gamma"]) for t in best)
    vertical = sorted(
        float(line.get_xdata()[0])
        for line in ax.lines
        if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
    )
    assert vertical == pytest.approx(expected, rel=1e-5)  # stored with 6 digits
    period = 1.0 / rate_to_cutoff(best[0].params["gamma"])
    band = next(t.get_text() for t in ax.texts if t.get_text().startswith("pass band"))
    assert f"#{best[0].number}" in band and f"{period:.3g} steps" in band
    assert f"{period / STEPS_PER_EPOCH:.3g} epochs" in band
