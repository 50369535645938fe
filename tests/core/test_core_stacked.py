"""Stacked trials (bnn_core.stacked) against the same trials trained alone."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnn_core.config import ConfigError, OptimizerConfig, Schedule, TrainConfig
from bnn_core.data import random_cifar10
from bnn_core.layers import split_parameters
from bnn_core.models import build_model
from bnn_core.optim import CEMA, Bop, Bop2ndOrder, build_optimizer
from bnn_core.stacked import (
    CONV_IMPLS,
    StackedOptimizer,
    StackedTrainer,
    choose_conv_impl,
    choose_slots,
    compile_cache,
    evaluation,
    stack_models,
    time_conv_impls,
    train_stacked,
    trial_view,
    unstack,
)
from bnn_core.train import train

ROOT = Path(__file__).resolve().parents[2]
N = 3

MODELS = {
    "mlp": ((1, 8, 8), {"hidden": 32}),
    "conv-small": ((1, 8, 8), {"width": 0.5}),
    "binarynet": ((3, 32, 32), {"width": 0.0625, "dense_units": 32}),
    "resnet": ((3, 16, 16), {"width": 0.5}),
}


def make_models(name: str, n: int = N) -> list[nn.Module]:
    shape, options = MODELS[name]
    torch.manual_seed(0)
    return [build_model(name, shape, 10, **options) for _ in range(n)]


def solo_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_and_gradients_equal_each_single_model(name: str) -> None:
    models = make_models(name)
    network = stack_models(models)
    shape = MODELS[name][0]
    x = torch.randn(8, N, *shape)
    y = torch.randint(0, 10, (8, N))
    logits = network(x)
    F.cross_entropy(logits.permute(0, 2, 1), y, reduction="none").mean(0).sum().backward()
    stacked = dict(network.body.named_parameters())
    buffers = dict(network.body.named_buffers())
    for n, model in enumerate(models):
        out = model(x[:, n])
        F.cross_entropy(out, y[:, n]).backward()
        torch.testing.assert_close(logits[:, n], out, atol=1e-5, rtol=1e-5)
        for key, grad in solo_grads(model).items():
            mine = trial_view(stacked[key].grad, N)[n].reshape(grad.shape)
            torch.testing.assert_close(mine, grad, atol=1e-5, rtol=1e-4)
        for key, buffer in model.named_buffers():
            if not key.endswith("num_batches_tracked"):
                mine = trial_view(buffers[key], N)[n].reshape(buffer.shape)
                torch.testing.assert_close(mine, buffer, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_unstack_round_trips(name: str) -> None:
    models = make_models(name)
    back = unstack(stack_models(models))
    for original, copy_ in zip(models, back, strict=True):
        a, b = original.state_dict(), copy_.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_flatten_keeps_single_model_order_with_channels_last() -> None:
    models = make_models("conv-small")
    network = stack_models(models).to(memory_format=torch.channels_last)
    network.channels_last = True
    x = torch.randn(4, N, 1, 8, 8)
    with torch.no_grad():
        fused = network.eval()(x)
        for n, model in enumerate(models):
            torch.testing.assert_close(fused[:, n], model.eval()(x[:, n]), atol=1e-5, rtol=1e-5)


def _binary_of(model: nn.Module) -> list[torch.Tensor]:
    return split_parameters(model)[0]


FAMILIES = {
    "bop": (
        lambda p, h: Bop(p, gamma=h["gamma"], threshold=h["threshold"]),
        {"gamma": [1e-1, 3e-2, 0.5], "threshold": [1e-3, 0.0, 1e-2]},
        ("m",),
    ),
    "bop2": (
        lambda p, h: Bop2ndOrder(p, gamma=h["gamma"], sigma=h["sigma"], threshold=h["threshold"]),
        {"gamma": [1e-1, 3e-2, 0.5], "sigma": [1e-2, 0.1, 0.3], "threshold": [0.5, 0.1, 1e-6]},
        ("m", "v"),
    ),
    "filter": (
        lambda p, h: CEMA(p, alpha=h["alpha"], gamma=h["gamma"]),
        {"alpha": [1e-2, 0.1, 0.05], "gamma": [0.5, 0.1, 1.0]},
        ("m", "x"),
    ),
    "bop2-unbiased": (
        lambda p, h: Bop2ndOrder(
            p, gamma=h["gamma"], sigma=h["sigma"], threshold=h["threshold"], bias_correction=True
        ),
        # tau is on the rescaled score (m/gamma)/sqrt(v/sigma) ~ 1
        {"gamma": [1e-1, 3e-2, 0.5], "sigma": [1e-2, 0.1, 0.3], "threshold": [0.5, 0.2, 0.9]},
        ("m", "v"),
    ),
    # Trial 0 biased, trials 1 and 2 unbiased in one stack (set_bias_correction per trial).
    "bop2-mixed": (
        lambda p, h: Bop2ndOrder(
            p,
            gamma=h["gamma"],
            sigma=h["sigma"],
            threshold=h["threshold"],
            bias_correction=bool(h["unbiased"]),
        ),
        {
            "gamma": [1e-1, 3e-2, 0.5],
            "sigma": [1e-2, 0.1, 0.3],
            "threshold": [0.5, 0.2, 0.9],
            "unbiased": [0, 1, 1],
        },
        ("m", "v"),
    ),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_stacked_flips_exactly_like_single_optimizer(family: str) -> None:
    build, hyper, state_names = FAMILIES[family]
    models = make_models("conv-small")
    network = stack_models(models)
    unbiased = family == "bop2-unbiased"
    stacked = StackedOptimizer(network, family.split("-")[0], bias_correction=unbiased)
    stacked.set_hyperparameters(
        {k: torch.tensor(v, dtype=torch.float64) for k, v in hyper.items() if k != "unbiased"}
    )
    for n, flag in enumerate(hyper.get("unbiased", [])):
        stacked.set_bias_correction(n, bool(flag))
    singles = [
        build(_binary_of(m), {k: v[n] for k, v in hyper.items()}) for n, m in enumerate(models)
    ]
    binary = split_parameters(network)[0]
    generator = torch.Generator().manual_seed(1)
    flipped = 0
    for _ in range(6):
        for param in binary:
            param.grad = torch.randn(param.shape, generator=generator) * 0.05
        for n, model in enumerate(models):
            for single, param in zip(_binary_of(model), binary, strict=True):
                single.grad = trial_view(param.grad, N)[n].clone()
        before = [p.detach().clone() for p in binary]
        stacked.step()
        for single in singles:
            single.step()
        flipped += sum(int((b != p).sum()) for b, p in zip(before, binary, strict=True))
        for n, (model, single) in enumerate(zip(models, singles, strict=True)):
            for index, (param, mine) in enumerate(zip(_binary_of(model), binary, strict=True)):
                assert torch.equal(trial_view(mine.detach(), N)[n], param.detach())
                for name in state_names:
                    ours = trial_view(stacked.state[name][index], N)[n]
                    assert torch.equal(ours, single.state[param][name])
    assert flipped > 0
    assert stacked.flip_counts.sum().item() == flipped


def test_stacked_adam_matches_torch_adam_per_trial_lr() -> None:
    models = make_models("resnet")
    network = stack_models(models)
    stacked = StackedOptimizer(network, "bop")
    lrs = [1e-2, 1e-3, 3e-2]
    real = split_parameters(network)[1]
    singles = [
        torch.optim.Adam(split_parameters(m)[1], lr=lr, eps=1e-7)
        for m, lr in zip(models, lrs, strict=True)
    ]
    generator = torch.Generator().manual_seed(2)
    for step in range(1, 5):
        for param in real:
            param.grad = torch.randn(param.shape, generator=generator)
        for n, model in enumerate(models):
            for single, param in zip(split_parameters(model)[1], real, strict=True):
                single.grad = trial_view(param.grad, N)[n].reshape(single.shape).clone()
        bc1 = 1 - 0.9**step
        stacked.set_hyperparameters(
            {},
            torch.tensor([lr / bc1 for lr in lrs], dtype=torch.float64),
            torch.full((N,), (1 - 0.999**step) ** 0.5, dtype=torch.float64),
        )
        stacked.step()
        for single in singles:
            single.step()
    for n, model in enumerate(models):
        for single, param in zip(split_parameters(model)[1], real, strict=True):
            mine = trial_view(param.detach(), N)[n].reshape(single.shape)
            torch.testing.assert_close(mine, single.detach(), atol=1e-7, rtol=1e-6)


def test_training_steps_stacked_equal_solo_with_identical_batches() -> None:
    """The whole step (network + per-trial Bop + Adam, schedules per trial) vs build_optimizer."""
    models = make_models("conv-small")
    configs = [
        OptimizerConfig(name="bop", gamma=g, threshold=t, real_lr=lr)
        for g, t, lr in [(1e-2, 1e-6, 0.01), (1e-1, 0.0, 0.001), (3e-3, 1e-5, 0.03)]
    ]
    singles = [copy.deepcopy(m) for m in models]
    pairs = [build_optimizer(m, c, 10, 1) for m, c in zip(singles, configs, strict=True)]
    network = stack_models(models)
    stacked = StackedOptimizer(network, "bop")
    generator = torch.Generator().manual_seed(3)
    for step in range(5):
        x = torch.randn(16, N, 1, 8, 8, generator=generator)
        y = torch.randint(0, 10, (16, N), generator=generator)
        logits = network(x)
        stacked.zero_grad()
        F.cross_entropy(logits.permute(0, 2, 1), y, reduction="none").mean(0).sum().backward()
        stacked.set_hyperparameters(
            {
                "gamma": torch.tensor([c.gamma for c in configs], dtype=torch.float64),
                "threshold": torch.tensor([c.threshold for c in configs], dtype=torch.float64),
            },
            torch.tensor([c.real_lr / (1 - 0.9 ** (step + 1)) for c in configs]),
            torch.full((N,), (1 - 0.999 ** (step + 1)) ** 0.5, dtype=torch.float64),
        )
        stacked.step()
        for n, (model, pair) in enumerate(zip(singles, pairs, strict=True)):
            pair.zero_grad()
            F.cross_entropy(model(x[:, n]), y[:, n]).backward()
            pair.step()
    back = unstack(network)
    for mine, single in zip(back, singles, strict=True):
        for (key, a), b in zip(
            mine.state_dict().items(), single.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(a.float(), b.float(), atol=1e-5, rtol=1e-4, msg=key)


def _digits_config(seed: int, **optimizer: object) -> TrainConfig:
    return TrainConfig(
        model="mlp",
        dataset="digits",
        epochs=2,
        batch_size=50,
        seed=seed,
        max_train_samples=400,
        optimizer=OptimizerConfig(name="bop", **optimizer),
    )


def test_train_stacked_matches_train_per_trial() -> None:
    schedules = {
        "gamma_schedule": Schedule(kind="linear", end_value=1e-4),
        "threshold_schedule": Schedule(kind="staircase", factor=0.5, every_epochs=1),
    }
    configs = [
        _digits_config(0, gamma=1e-3, threshold=1e-6),
        _digits_config(1, gamma=1e-2, threshold=1e-7, **schedules),
    ]
    options = {"hidden": 32}
    stacked = train_stacked(configs, model_options=options)
    for config, result in zip(configs, stacked, strict=True):
        solo = train(config, model_options=options)
        assert len(result.epochs) == len(solo.epochs) == 2
        for a, b in zip(result.epochs, solo.epochs, strict=True):
            assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4, abs=1e-5)
            assert a.val_accuracy == pytest.approx(b.val_accuracy, abs=0.02)
            assert a.flip_ratio == pytest.approx(b.flip_ratio, rel=0.05, abs=1e-6)
            assert a.hyperparameters == b.hyperparameters
            assert a.flip_ratio_per_layer.keys() == b.flip_ratio_per_layer.keys()


def test_stacked_bop2_bias_correction_is_per_trial() -> None:
    # A mixed stack (trial 0 biased, trial 1 unbiased) trains each trial like a stack in
    # which both trials use that trial's variant.
    def config(seed: int, unbiased: bool, threshold: float | None = None) -> TrainConfig:
        optimizer = OptimizerConfig(
            name="bop2",
            gamma=1e-2,
            sigma=1e-2,
            threshold=threshold or (0.5 if unbiased else 1e-3),
            bias_correction=unbiased,
            sigma_schedule=Schedule(kind="cosine"),
        )
        return dataclasses.replace(_digits_config(seed), optimizer=optimizer)

    options = {"hidden": 32}
    mixed = train_stacked([config(0, False), config(1, True)], model_options=options)
    biased = train_stacked([config(0, False), config(1, False)], model_options=options)
    unbiased = train_stacked([config(0, True), config(1, True)], model_options=options)
    for ours, same in ((mixed[0], biased[0]), (mixed[1], unbiased[1])):
        assert [e.train_loss for e in ours.epochs] == [e.train_loss for e in same.epochs]
        assert [e.flip_ratio for e in ours.epochs] == [e.flip_ratio for e in same.epochs]
    assert mixed[1].epochs[-1].flip_ratio > 0
    # The same trial 1 (threshold 0.5) with the biased score trains differently.
    other = train_stacked([config(0, False), config(1, False, 0.5)], model_options=options)
    assert [e.flip_ratio for e in other[1].epochs] != [e.flip_ratio for e in mixed[1].epochs]


def test_configs_that_differ_in_shared_fields_raise_config_error() -> None:
    a = _digits_config(0)
    with pytest.raises(ConfigError) as info:
        train_stacked([a, TrainConfig(model="conv-small", dataset="digits")])
    assert info.value.field == "model"
    with pytest.raises(ConfigError) as info:
        train_stacked([a, dataclasses.replace(a, seed=1, epochs=3)])
    assert info.value.field == "epochs"
    # Every family is stackable (latent ones too: test_core_stacked_latent.py), but not mixed.
    latent = dataclasses.replace(a, seed=1, optimizer=OptimizerConfig(name="latent-adam"))
    with pytest.raises(ConfigError) as info:
        train_stacked([a, latent])
    assert info.value.field == "optimizer.name"


def test_freed_slots_are_refilled_until_next_trial_is_exhausted() -> None:
    handed: list[int] = []
    ended: list[int] = []

    def next_trial():  # noqa: ANN202
        if len(handed) == 5:
            return None
        seed = len(handed)
        handed.append(seed)
        stop_after_one = seed == 1  # pruned after its first epoch
        return _slot_config(seed), (lambda m: stop_after_one)

    trainer = StackedTrainer(2, model_options={"hidden": 16})
    results = trainer.run(next_trial, on_trial_end=lambda r, e: ended.append(r.config.seed))
    assert len(results) == len(handed) == 5
    assert sorted(ended) == [0, 1, 2, 3, 4]
    assert [r.config.seed for r in results] == [0, 1, 2, 3, 4]
    assert results[1].stopped_early and len(results[1].epochs) == 1
    assert all(len(r.epochs) == 2 and not r.stopped_early for i, r in enumerate(results) if i != 1)
    # Once exhausted the idle slot was dropped (N 2 -> 1) mid-trial; trial 4 is unaffected.
    assert trainer.n_slots == 1
    # Trial 4 runs in a slot that already trained trials 1 and 2: its schedules (and Adam's
    # bias correction) must start again from its own step 0, as they do when it trains alone.
    solo = train(_slot_config(4), model_options={"hidden": 16})
    for a, b in zip(results[4].epochs, solo.epochs, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4, abs=1e-5)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-4, abs=1e-5)
        assert a.hyperparameters == pytest.approx(b.hyperparameters, rel=1e-12)
    # Hand-computed: 7 steps per epoch (360 // 50), so the last step of epoch e is 7e - 1.
    assert [e.hyperparameters["gamma"] for e in results[4].epochs] == pytest.approx(
        [1e-2, 5e-3], rel=1e-12
    )
    assert [e.hyperparameters["real_lr"] for e in results[4].epochs] == pytest.approx(
        [0.01 - 0.009 * 6 / 14, 0.01 - 0.009 * 13 / 14], rel=1e-12
    )


def _slot_config(seed: int) -> TrainConfig:
    """Per-step schedules that differ between a trial's own step and the group's step."""
    return _digits_config(
        seed,
        gamma=1e-2,
        gamma_schedule=Schedule(kind="staircase", factor=0.5, every_epochs=1),
        real_lr_schedule=Schedule(kind="linear", end_value=0.001),
    )


def test_cuda_oom_halves_the_slots_and_finishes_every_trial(monkeypatch) -> None:  # noqa: ANN001
    trainer = StackedTrainer(4, model_options={"hidden": 16}, shrink_when_idle=False)
    original = StackedTrainer._step
    raised = []

    def flaky(self, x, y, row):  # noqa: ANN001, ANN202
        if self.n_slots == 4 and not raised:
            raised.append(1)
            raise torch.cuda.OutOfMemoryError("simulated")
        return original(self, x, y, row)

    evaluate = evaluation.evaluate_chunks
    chunks: list[int] = []

    def flaky_eval(network, index, x, y, chunk, precision):  # noqa: ANN001, ANN202
        chunks.append(chunk)
        if len(chunks) == 1:
            raise torch.cuda.OutOfMemoryError("simulated")
        return evaluate(network, index, x, y, chunk, precision)

    monkeypatch.setattr(StackedTrainer, "_step", flaky)
    monkeypatch.setattr(evaluation, "evaluate_chunks", flaky_eval)
    configs = [_digits_config(s) for s in range(4)]
    queue = list(configs)
    results = trainer.run(lambda: (queue.pop(0), None) if queue else None)
    assert trainer.oom_backoffs == 1 and trainer.n_slots == 2
    assert len(results) == 4 and all(len(r.epochs) == 2 for r in results)
    assert chunks[1] == chunks[0] // 2  # evaluation retried with half-size chunks


def test_augmented_binarynet_trains_stacked() -> None:
    data = random_cifar10(120, 20, seed=0)
    configs = [
        TrainConfig(
            model="binarynet",
            dataset="cifar10",
            epochs=1,
            batch_size=25,
            seed=s,
            evaluate_test=True,
            optimizer=OptimizerConfig(name="filter", alpha=1e-3, gamma=0.1),
        )  # fmt: skip
        for s in range(2)
    ]
    results = train_stacked(configs, dataset=data, model_options=MODELS["binarynet"][1])
    assert [len(r.epochs) for r in results] == [1, 1]
    assert all(r.test_accuracy is not None for r in results)
    assert set(results[0].epochs[0].hyperparameters) == {"alpha", "gamma", "real_lr"}


def test_choose_slots_on_cpu_returns_the_cap() -> None:
    assert choose_slots("mlp", (1, 8, 8), 50, "cpu", max_slots=8) == 8
    if not torch.cuda.is_available():
        assert choose_slots("mlp", (1, 8, 8), 50, "auto", max_slots=3) == 3


def test_non_sequential_resnet_is_verified_and_trains_stacked() -> None:
    configs = [
        dataclasses.replace(_digits_config(s, gamma=1e-3), model="resnet", epochs=1)
        for s in range(2)
    ]
    results = train_stacked(configs, model_options={"width": 0.5})
    assert [len(r.epochs) for r in results] == [1, 1]
    assert all(np.isfinite(r.epochs[0].train_loss) for r in results)


def test_bf16_autocast_only_where_exact() -> None:
    """Under autocast the first layer (real pixels) stays fp32; binary layers fed by a sign run
    in bf16, and their +-1 x +-1 sums equal the fp32 ones (rounded to bf16)."""
    models = make_models("binarynet", 2)
    network = stack_models(models).eval()
    layers = dict(network.body.named_children())
    assert not layers["0"].low_precision and layers["3"].low_precision
    x = torch.randn(4, 2, 3, 32, 32)
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        layers[k].register_forward_hook(lambda m, i, o, k=k: outputs.__setitem__(k, o))
        for k in ("0", "3")
    ]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        network(x)
    assert outputs["0"].dtype == torch.float32 and outputs["3"].dtype == torch.bfloat16
    signs = torch.where(torch.randn(4, 2 * 8, 30, 30) >= 0, 1.0, -1.0)
    with torch.no_grad():
        exact = layers["3"](signs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = layers["3"](signs)
    assert torch.equal(low, exact.to(torch.bfloat16))
    for hook in hooks:
        hook.remove()


@pytest.mark.parametrize("name", ["binarynet", "conv-small", "resnet"])
def test_split_convolutions_compute_what_the_grouped_one_does(name: str) -> None:
    models = make_models(name)
    grouped, split = stack_models(models), stack_models(copy.deepcopy(models))
    split.conv_impl = "split"
    assert (grouped.conv_impl, split.conv_impl) == ("grouped", "split")
    x = torch.randn(6, N, *MODELS[name][0])
    y = torch.randint(0, 10, (6, N))
    for network in (grouped, split):
        loss = F.cross_entropy(network(x).permute(0, 2, 1), y, reduction="none").mean(0).sum()
        loss.backward()
    torch.testing.assert_close(split(x), grouped(x), atol=1e-5, rtol=1e-5)
    grads = {k: p.grad for k, p in grouped.named_parameters()}
    for key, param in split.named_parameters():
        torch.testing.assert_close(param.grad, grads[key], atol=1e-5, rtol=1e-4, msg=key)


def test_unknown_conv_impl_is_rejected() -> None:
    network = stack_models(make_models("conv-small"))
    with pytest.raises(ValueError, match="conv_impl"):
        network.conv_impl = "winograd"
    with pytest.raises(ConfigError, match="conv_impl"):
        StackedTrainer(2, conv_impl="winograd")


def test_trainer_runs_the_requested_conv_impl_and_times_only_on_cuda() -> None:
    configs = [
        dataclasses.replace(_digits_config(s, gamma=1e-3), model="conv-small", epochs=1)
        for s in range(2)
    ]
    results = {}
    for impl in ("grouped", "split", "auto"):
        queue = list(configs)
        trainer = StackedTrainer(2, model_options={"width": 0.5}, conv_impl=impl)
        results[impl] = trainer.run(lambda q=queue: (q.pop(0), None) if q else None)
        assert trainer.network.conv_impl == trainer.conv_impl_chosen
        assert trainer.conv_impl_chosen == ("grouped" if impl == "auto" else impl)
        assert trainer.conv_timings == {}  # CPU: nothing is timed
    for impl in ("split", "auto"):
        for mine, ref in zip(results[impl], results["grouped"], strict=True):
            assert mine.epochs[0].train_loss == pytest.approx(ref.epochs[0].train_loss, rel=1e-4)


def test_time_conv_impls_measures_both_on_a_copy() -> None:
    network = stack_models(make_models("conv-small"))
    before = {k: v.clone() for k, v in network.state_dict().items()}
    timings = time_conv_impls(network, torch.randn(4, N, 1, 8, 8), repeats=1)
    assert set(timings) == set(CONV_IMPLS) and all(t > 0 for t in timings.values())
    assert all(p.grad is None for p in network.parameters())
    for key, value in network.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert choose_conv_impl(network, torch.randn(4, N, 1, 8, 8)) == ("grouped", {})


def test_out_of_memory_while_building_halves_the_slots(monkeypatch) -> None:  # noqa: ANN001
    original = StackedTrainer._choose_conv_impl

    def too_big(self, network, n):  # noqa: ANN001, ANN202
        if n > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return original(self, network, n)

    monkeypatch.setattr(StackedTrainer, "_choose_conv_impl", too_big)
    queue = [_digits_config(s) for s in range(4)]
    trainer = StackedTrainer(8, model_options={"hidden": 16}, shrink_when_idle=False)
    results = trainer.run(lambda: (queue.pop(0), None) if queue else None)
    assert (trainer.n_slots, trainer.oom_backoffs) == (2, 2)
    assert len(results) == 4 and all(len(r.epochs) == 2 for r in results)


def test_augmented_trials_see_the_same_batches_alone_and_stacked() -> None:
    """Order, crops and flips come from one host stream per trial (augment.epoch_draws), so an
    augmented trial trains alike alone and stacked, on any device."""
    data = random_cifar10(130, 20, seed=1)
    configs = [
        TrainConfig(
            model="mlp",
            dataset="cifar10",
            epochs=2,
            batch_size=25,
            seed=s,
            optimizer=OptimizerConfig(gamma=1e-2, threshold=1e-7),
        )  # fmt: skip
        for s in (3, 4)
    ]
    # mlp: its batched and single matmuls round alike on the CPU, so the runs agree to float
    # noise (a real-valued first conv could turn a rounding difference into a sign flip).
    options = {"hidden": 32}
    stacked = train_stacked(configs, dataset=data, model_options=options)
    for config, result in zip(configs, stacked, strict=True):
        solo = train(config, dataset=data, model_options=options)
        for a, b in zip(result.epochs, solo.epochs, strict=True):
            assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4, abs=1e-5)
            assert a.flip_ratio == pytest.approx(b.flip_ratio, rel=0.05, abs=1e-6)


def test_a_failing_torch_compile_falls_back_to_eager(monkeypatch) -> None:  # noqa: ANN001
    def broken_compile(module):  # noqa: ANN001, ANN202
        def fails(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise RuntimeError("backend compiler failed")

        return fails

    configs = [_digits_config(s) for s in range(2)]
    eager = train_stacked(configs, model_options={"hidden": 16})
    compile_cache.clear()  # a network compiled by an earlier test would not fail
    monkeypatch.setattr(torch, "compile", broken_compile)
    queue = [dataclasses.replace(c, compile=True) for c in configs]
    trainer = StackedTrainer(2, model_options={"hidden": 16})
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        results = trainer.run(lambda: (queue.pop(0), None) if queue else None)
    assert trainer.compile_failed and "backend compiler failed" in trainer.compile_failed
    for mine, ref in zip(results, eager, strict=True):
        assert [e.train_loss for e in mine.epochs] == [e.train_loss for e in ref.epochs]
