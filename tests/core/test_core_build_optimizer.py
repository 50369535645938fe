"""build_optimizer and BinaryOptimizerPair: the split, the families, schedules, state."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnn_core.config import ConfigError, OptimizerConfig, Schedule
from bnn_core.layers import BinaryConv2d, BinaryLinear, SignActivation
from bnn_core.models import build_model
from bnn_core.optim import CEMA, SGDW, BinaryOptimizerPair, Bop, Bop2ndOrder, build_optimizer


def small_model() -> nn.Sequential:
    """Binary conv and linear layers, batch norm and a real last layer."""
    torch.manual_seed(0)
    return nn.Sequential(
        BinaryConv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        SignActivation(),
        nn.Flatten(),
        BinaryLinear(4 * 5 * 5, 8),
        nn.BatchNorm1d(8),
        SignActivation(),
        nn.Linear(8, 3),
    )


def binary_weights(model: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in model.modules() if isinstance(m, BinaryConv2d | BinaryLinear)]


def backward(model: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(6, 1, 5, 5, generator=generator)
    labels = torch.randint(0, 3, (6,), generator=generator)
    nn.functional.cross_entropy(model(inputs), labels).backward()


def ids(params) -> set[int]:
    return {id(p) for p in params}


# --- the split ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind"), [("bop", Bop), ("bop2", Bop2ndOrder), ("filter", CEMA)])
def test_flip_optimizers_get_exactly_the_binary_weights(name: str, kind: type) -> None:
    model = small_model()
    pair = build_optimizer(model, OptimizerConfig(name=name), steps_per_epoch=10, epochs=2)
    assert isinstance(pair.binary, kind)
    binary = binary_weights(model)
    assert ids(pair.binary_parameters) == ids(binary)
    real = [p for g in pair.real.param_groups for p in g["params"]]
    assert ids(real) == ids(model.parameters()) - ids(binary)
    bn = model[1]
    assert id(bn.weight) in ids(real) and id(bn.bias) in ids(real)


def test_real_parameters_get_keras_adam_and_binary_weights_stay_binary() -> None:
    model = small_model()
    reference = copy.deepcopy(model)
    config = OptimizerConfig(name="bop", gamma=1e-2, threshold=0.0, real_lr=0.05)
    pair = build_optimizer(model, config, steps_per_epoch=10, epochs=2)
    real_reference = [
        p for n, p in reference.named_parameters() if n not in ("0.weight", "4.weight")
    ]
    adam = torch.optim.Adam(real_reference, lr=0.05, eps=1e-7)
    assert pair.real.defaults["eps"] == 1e-7
    for seed in range(3):
        pair.zero_grad()
        adam.zero_grad()
        backward(model, seed)
        # The reference Adam sees exactly the gradients the pair saw.
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        for n, p in reference.named_parameters():
            p.grad = grads[n].clone()
        pair.step()
        adam.step()
    for name, param in model.named_parameters():
        if name in ("0.weight", "4.weight"):
            assert bool(((param == 1) | (param == -1)).all())
        else:
            torch.testing.assert_close(param, dict(reference.named_parameters())[name])


def test_model_without_real_parameters_skips_adam() -> None:
    model = nn.Sequential(BinaryLinear(4, 3), SignActivation(), BinaryLinear(3, 2))
    pair = build_optimizer(model, OptimizerConfig(name="bop"), steps_per_epoch=1, epochs=1)
    assert pair.real is None
    model(torch.randn(5, 4)).sum().backward()
    pair.step()
    pair.zero_grad()
    assert pair.global_step == 1
    assert all(p.grad is None for p in model.parameters())


# --- latent families ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "decoupled", "kind"),
    [
        ("latent-adam", False, torch.optim.Adam),
        ("latent-adam", True, torch.optim.AdamW),
        ("latent-sgd", False, torch.optim.SGD),
        ("latent-sgd", True, SGDW),
    ],
)
def test_latent_families_switch_the_model_to_latent_weights(
    name: str, decoupled: bool, kind: type
) -> None:
    model = small_model()
    config = OptimizerConfig(
        name=name,
        lr=0.01,
        momentum=0.5,
        weight_decay=1e-3,
        decoupled_weight_decay=decoupled,
        latent_init_scale=1e-3,
    )
    pair = build_optimizer(model, config, steps_per_epoch=5, epochs=1)
    assert type(pair.binary) is kind
    group = pair.binary.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.01, 1e-3)
    if name == "latent-sgd":
        assert group["momentum"] == 0.5
    for layer in (model[0], model[4]):
        assert layer.latent
        assert float(layer.weight.detach().abs().max()) <= 1e-3
    assert set(pair.hyperparameters()) == {"lr", "real_lr"}
    backward(model)
    pair.step()  # latent weights move off the +-1 lattice
    assert not bool(((model[4].weight == 1) | (model[4].weight == -1)).all())


# --- schedules through the pair ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("bop", {"gamma", "threshold", "real_lr"}),
        ("bop2", {"gamma", "sigma", "threshold", "real_lr"}),
        ("filter", {"alpha", "gamma", "real_lr"}),
    ],
)
def test_hyperparameter_keys_per_family(name: str, keys: set[str]) -> None:
    pair = build_optimizer(small_model(), OptimizerConfig(name=name), 10, 2)
    assert set(pair.hyperparameters()) == keys


def test_bop_gamma_staircase_is_applied_on_the_global_step() -> None:
    model = nn.Sequential(BinaryLinear(1, 2))
    config = OptimizerConfig(
        name="bop",
        gamma=0.5,
        threshold=100.0,  # no flips: only m is tested
        gamma_schedule=Schedule(kind="staircase", factor=0.5, every_epochs=1),
    )
    pair = build_optimizer(model, config, steps_per_epoch=2, epochs=3)
    weight = model[0].weight
    expected_m, expected_gamma = 0.0, [0.5, 0.5, 0.25, 0.25, 0.125]
    for step, gamma in enumerate(expected_gamma):
        weight.grad = torch.full((2, 1), float(step + 1))
        pair.step()
        expected_m = (1 - gamma) * expected_m + gamma * (step + 1)
        assert pair.hyperparameters()["gamma"] == gamma
        assert pair.binary.param_groups[0]["gamma"] == gamma
        torch.testing.assert_close(pair.binary.state[weight]["m"], torch.full((2, 1), expected_m))
    assert pair.global_step == 5


def test_filter_alpha_decays_linearly_per_epoch_by_default() -> None:
    config = OptimizerConfig(name="filter", alpha=1e-3, gamma=0.1, real_lr=0.02)
    pair = build_optimizer(small_model(), config, steps_per_epoch=5, epochs=4)
    assert pair.hyperparameters() == pytest.approx({"alpha": 1e-3, "gamma": 0.1, "real_lr": 0.02})
    seen = []
    for _ in range(11):
        pair.step()  # no gradients: only the schedule moves
        seen.append(pair.binary.param_groups[0]["alpha"])
    assert seen == pytest.approx([1e-3] * 5 + [7.5e-4] * 5 + [5e-4])
    assert pair.hyperparameters()["alpha"] == pytest.approx(5e-4)
    assert pair.hyperparameters()["gamma"] == 0.1


def test_real_lr_schedule_drives_adam() -> None:
    config = OptimizerConfig(
        name="bop", real_lr=0.01, real_lr_schedule=Schedule(kind="linear", end_value=0.001)
    )
    pair = build_optimizer(small_model(), config, steps_per_epoch=2, epochs=5)
    for _ in range(6):  # steps 0..5 of 10
        pair.step()
    assert pair.real.param_groups[0]["lr"] == pytest.approx(0.01 - 0.009 * 5 / 10)
    assert pair.hyperparameters()["real_lr"] == pytest.approx(0.0055)


# --- state -------------------------------------------------------------------------------------


def test_state_dict_round_trip_restores_step_and_fp32_state() -> None:
    model = small_model()
    config = OptimizerConfig(name="filter", alpha=0.05, gamma=0.5)
    pair = build_optimizer(model, config, steps_per_epoch=3, epochs=4)
    for seed in range(4):
        pair.zero_grad()
        backward(model, seed)
        pair.step()
    saved = copy.deepcopy(pair.state_dict())
    twin = copy.deepcopy(model)
    restored = build_optimizer(twin, config, steps_per_epoch=3, epochs=4)
    restored.load_state_dict(saved)
    assert restored.global_step == 4
    assert restored.hyperparameters() == pair.hyperparameters()
    for a, b in zip(pair.binary_parameters, restored.binary_parameters, strict=True):
        for name in ("m", "x"):
            assert restored.binary.state[b][name].dtype == torch.float32
            assert torch.equal(restored.binary.state[b][name], pair.binary.state[a][name])
    for model_, pair_ in ((model, pair), (twin, restored)):
        pair_.zero_grad()
        backward(model_, seed=9)
        pair_.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_optimizer(small_model(), OptimizerConfig(), steps_per_epoch=0, epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        build_optimizer(small_model(), OptimizerConfig(), steps_per_epoch=1, epochs=0)


def test_bf16_autocast_leaves_gradients_and_bop_state_fp32_and_unscaled() -> None:
    # Mixed precision: autocast covers the forward only; Bop must see
    # fp32 gradients of the true (mean-reduced, unscaled) loss and keep m in fp32.
    torch.manual_seed(0)
    model = build_model("binarynet", (3, 32, 32), 10, width=1 / 16, dense_units=64)
    twin = copy.deepcopy(model)
    pair = build_optimizer(model, OptimizerConfig(name="bop", gamma=1e-4), 10, 1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.bfloat16  # autocast really ran the forward in bf16
    nn.functional.cross_entropy(logits.float(), y).backward()
    nn.functional.cross_entropy(twin(x), y).backward()  # the fp32 reference
    binary = pair.binary_parameters
    for param, reference in zip(model.parameters(), twin.parameters(), strict=True):
        if param.grad is None:
            continue
        assert param.dtype == param.grad.dtype == torch.float32
        # Unscaled: the bf16 gradient has the fp32 gradient's order of magnitude. bf16 flips
        # the sign of some near-zero pre-activations, so they differ by O(1) (about 0.4-1 here),
        # while a loss scale (GradScaler starts at 2**16) would be orders of magnitude off.
        ratio = float(param.grad.norm() / reference.grad.norm())
        assert 0.1 < ratio < 10
    grads = [p.grad.clone() for p in binary]
    pair.step()
    for param, grad in zip(binary, grads, strict=True):
        m = pair.binary.state[param]["m"]
        assert m.dtype == torch.float32
        torch.testing.assert_close(m, 1e-4 * grad, rtol=1e-6, atol=0)  # m = gamma g from 0
        assert bool(((param == 1) | (param == -1)).all()) and param.dtype == torch.float32


def test_bop2_cifar_recipe_schedules_gamma_sigma_and_threshold_per_step() -> None:
    # Bop2ndOrder's CIFAR-10 recipe: 500 epochs at 1000 steps, Keras PolynomialDecay(power 1)
    # per step: tau 1e-5 -> 1e-8, gamma 1e-2 -> 1e-5, sigma 1e-7 -> 1e-2 (increasing).
    config = OptimizerConfig(
        name="bop2",
        gamma=1e-2,
        sigma=1e-7,
        threshold=1e-5,
        gamma_schedule=Schedule(kind="linear", end_value=1e-5),
        sigma_schedule=Schedule(kind="linear", end_value=1e-2),
        threshold_schedule=Schedule(kind="linear", end_value=1e-8),
    )
    pair = build_optimizer(small_model(), config, steps_per_epoch=1000, epochs=500)
    expected = {
        0: (1e-2, 1e-7, 1e-5),
        250_000: ((1e-2 + 1e-5) / 2, (1e-7 + 1e-2) / 2, (1e-5 + 1e-8) / 2),
        500_000: (1e-5, 1e-2, 1e-8),
    }
    for step, (gamma, sigma, tau) in expected.items():
        pair.global_step = step
        pair.step()  # no gradients: only the schedules are applied
        group = pair.binary.param_groups[0]
        assert (group["gamma"], group["sigma"], group["threshold"]) == pytest.approx(
            (gamma, sigma, tau), rel=1e-12
        )


@pytest.mark.parametrize(("bias_correction", "flips"), [(False, False), (True, True)])
def test_bop2_bias_correction_picks_the_unbiased_variant(
    bias_correction: bool, flips: bool
) -> None:
    # One weight w = +1 and one step with g = 1 from zero state, gamma = sigma = 0.5:
    # m = 0.5, v = 0.5. Biased score w m / sqrt(v) = 0.707 <= tau = 0.9: no flip;
    # unbiased (m / gamma) / sqrt(v / sigma) = 1 > 0.9: flip.
    model = nn.Sequential(BinaryLinear(1, 1))
    config = OptimizerConfig(
        name="bop2", gamma=0.5, sigma=0.5, threshold=0.9, bias_correction=bias_correction
    )
    pair = build_optimizer(model, config, steps_per_epoch=1, epochs=1)
    assert pair.real is None
    assert pair.binary.param_groups[0]["bias_correction"] is bias_correction
    weight = model[0].weight
    with torch.no_grad():
        weight.fill_(1.0)
    weight.grad = torch.ones_like(weight)
    pair.step()
    assert weight.item() == (-1.0 if flips else 1.0)


def test_bias_correction_must_be_a_bool() -> None:
    with pytest.raises(ConfigError) as info:
        OptimizerConfig(name="bop2", bias_correction=1)  # type: ignore[arg-type]
    assert info.value.field == "optimizer.bias_correction"


# --- latent weight clipping (BinaryNet's weight_clip constraint) --------------------------------


def _one_latent_linear(name: str, clip: float | None) -> tuple[nn.Parameter, BinaryOptimizerPair]:
    model = nn.Sequential(BinaryLinear(4, 1))
    config = OptimizerConfig(name=name, lr=0.5, momentum=0.0, latent_weight_clip=clip)
    pair = build_optimizer(model, config, steps_per_epoch=1, epochs=1)
    weight = model[0].weight
    with torch.no_grad():
        weight.copy_(torch.tensor([[0.9, -0.9, 0.2, -0.5]]))
    return weight, pair


def test_latent_sgd_step_clamps_weights_pushed_beyond_the_clip() -> None:
    weight, pair = _one_latent_linear("latent-sgd", clip=1.0)
    assert pair.weight_clip == 1.0
    # w - 0.5 * g: 0.9 + 0.4 = 1.3 -> 1.0; -0.9 - 0.4 = -1.3 -> -1.0; 0.2 + 0.4 = 0.6;
    # -0.5 + 0.2 = -0.3 (inside: moves freely).
    weight.grad = torch.tensor([[-0.8, 0.8, -0.8, -0.4]])
    pair.step()
    assert weight.detach()[0].tolist() == pytest.approx([1.0, -1.0, 0.6, -0.3], abs=1e-7)
    assert weight.detach()[0, :2].tolist() == [1.0, -1.0]  # exactly +-clip


def test_latent_adam_weights_stay_within_a_small_clip() -> None:
    weight, pair = _one_latent_linear("latent-adam", clip=0.25)
    weight.grad = torch.tensor([[-1.0, 1.0, 1.0, -1.0]])  # Adam's first step moves each by lr
    pair.step()
    # 0.9 + 0.5 -> 0.25; -0.9 - 0.5 -> -0.25; 0.2 - 0.5 = -0.3 -> -0.25; -0.5 + 0.5 = 0.0.
    assert weight.detach()[0].tolist() == pytest.approx([0.25, -0.25, -0.25, 0.0], abs=1e-6)


def test_latent_weight_clip_defaults_to_none_and_leaves_weights_unclamped() -> None:
    assert OptimizerConfig(name="latent-sgd").latent_weight_clip is None
    weight, pair = _one_latent_linear("latent-sgd", clip=None)
    assert pair.weight_clip is None
    weight.grad = torch.tensor([[-0.8, 0.8, -0.8, -0.4]])
    pair.step()
    assert weight.detach()[0].tolist() == pytest.approx([1.3, -1.3, 0.6, -0.3], abs=1e-7)


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan"), True, "1"])
def test_bad_latent_weight_clip_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        OptimizerConfig(name="latent-adam", latent_weight_clip=value)  # type: ignore[arg-type]
    assert info.value.field == "optimizer.latent_weight_clip"


@pytest.mark.parametrize("name", ["bop", "bop2", "filter"])
def test_latent_weight_clip_is_rejected_for_flip_optimizers(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        OptimizerConfig(name=name, latent_weight_clip=1.0)
    assert info.value.field == "optimizer.latent_weight_clip"
    assert build_optimizer(small_model(), OptimizerConfig(name=name), 1, 1).weight_clip is None
