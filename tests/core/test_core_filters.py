"""Gradient filters: cutoff conversions and responses against the real optimizers' updates."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bnn_core.config import OptimizerConfig, Schedule
from bnn_core.filters import (
    MAX_RATE_WITH_CUTOFF,
    cascade_response,
    cutoff_period_epochs,
    cutoff_period_steps,
    cutoff_to_rate,
    ema_response,
    filter_summary,
    latent_sgd_response,
    optimizer_response,
    order_is_symmetric,
    rate_to_cutoff,
    response_cutoff,
)
from bnn_core.models import build_model
from bnn_core.optim import CEMA, SGDW, Bop, build_optimizer


def test_cutoff_round_trips() -> None:
    for rate in np.logspace(-9, math.log10(MAX_RATE_WITH_CUTOFF), 200):
        assert cutoff_to_rate(rate_to_cutoff(rate)) == pytest.approx(rate, rel=1e-12)
    for cutoff in np.logspace(-10, math.log10(0.5), 200):
        assert rate_to_cutoff(cutoff_to_rate(cutoff)) == pytest.approx(cutoff, rel=1e-10)


@pytest.mark.parametrize("rate", [1e-6, 1e-3, 0.1, 0.5, 0.8])
def test_cutoff_is_the_half_power_point(rate: float) -> None:
    cutoff = rate_to_cutoff(rate)
    # |H|^2 = r^2 / (1 - 2a cos w + a^2), a = 1 - r, with the denominator written as
    # (1 - a)^2 + 4a sin^2(w / 2) (no cancellation for tiny r)
    w = 2 * math.pi * cutoff
    power = rate**2 / (rate**2 + 4 * (1 - rate) * math.sin(w / 2) ** 2)
    assert power == pytest.approx(0.5, rel=1e-9)
    assert abs(ema_response(rate, cutoff)) ** 2 == pytest.approx(0.5, rel=1e-6)
    # the textbook form cos(w_c) = 1 - r^2 / (2 (1 - r))
    assert math.cos(w) == pytest.approx(1 - rate**2 / (2 * (1 - rate)), rel=1e-12)


def test_small_rate_cutoff_and_periods() -> None:
    assert rate_to_cutoff(1e-5) == pytest.approx(1e-5 / (2 * math.pi), rel=1e-5)
    assert cutoff_period_steps(1e-4) == pytest.approx(2 * math.pi / 1e-4, rel=1e-4)
    assert cutoff_period_epochs(1e-4, 1000) == pytest.approx(cutoff_period_steps(1e-4) / 1000)
    assert rate_to_cutoff(MAX_RATE_WITH_CUTOFF) == pytest.approx(0.5)
    assert cutoff_to_rate(0.5) == pytest.approx(MAX_RATE_WITH_CUTOFF)


@pytest.mark.parametrize("rate", [0.83, 0.9, 1.0])
def test_no_cutoff_above_the_limit(rate: float) -> None:
    with pytest.raises(ValueError, match=r"\(0, 0\.828427\]"):
        rate_to_cutoff(rate)
    # the stage really keeps more than half the power at Nyquist
    assert abs(ema_response(rate, 0.5)) ** 2 > 0.5


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_invalid_rates_and_cutoffs(bad: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        rate_to_cutoff(bad)
    with pytest.raises(ValueError, match="cutoff"):
        cutoff_to_rate(bad if bad != 0.0 else 0.6)


def _impulse_fft(states: list[float]) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(states)
    return np.fft.fftfreq(len(h)), np.fft.fft(h)


def _impulse_run(optimizer: torch.optim.Optimizer, param: torch.Tensor, read, steps: int):
    out = []
    for step in range(steps):
        param.grad = torch.full_like(param, 1.0 if step == 0 else 0.0)
        optimizer.step()
        out.append(read())
    return out


def test_bop_state_is_the_ema_response() -> None:
    w = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = Bop([w], gamma=0.01, threshold=1e9)
    h = _impulse_run(opt, w, lambda: opt.state[w]["m"].item(), 4096)
    freqs, spectrum = _impulse_fft(h)
    np.testing.assert_allclose(spectrum, ema_response(0.01, freqs), rtol=1e-9, atol=1e-12)


def test_cema_state_is_the_cascade_response() -> None:
    w = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = CEMA([w], alpha=0.005, gamma=0.1)
    h = _impulse_run(opt, w, lambda: opt.state[w]["x"].item(), 8192)
    freqs, spectrum = _impulse_fft(h)
    np.testing.assert_allclose(spectrum, cascade_response(0.005, 0.1, freqs), atol=1e-9)
    config = OptimizerConfig(name="filter", alpha=0.005, gamma=0.1)
    np.testing.assert_allclose(spectrum, optimizer_response(config, freqs), atol=1e-9)


@pytest.mark.parametrize("decoupled", [True, False])
def test_latent_sgd_weight_is_its_filter_response(decoupled: bool) -> None:
    # coupled L2 needs real poles: (1 - mu + lr wd)^2 >= 4 lr wd
    lr, momentum, wd = (0.1, 0.9, 0.05) if decoupled else (0.05, 0.9, 5e-3)
    theta = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    if decoupled:
        opt = SGDW([theta], lr=lr, momentum=momentum, weight_decay=wd)
        scale = -wd * (1 - momentum)  # x = -wd (1 - mu) theta
    else:
        opt = torch.optim.SGD([theta], lr=lr, momentum=momentum, weight_decay=wd)
        scale = -wd  # x = -wd theta
    h = _impulse_run(opt, theta, lambda: scale * theta.item(), 16384)
    freqs, spectrum = _impulse_fft(h)
    expected = latent_sgd_response(lr, momentum, wd, decoupled, freqs)
    np.testing.assert_allclose(spectrum, expected, atol=1e-9)
    config = OptimizerConfig(
        name="latent-sgd", lr=lr, momentum=momentum, weight_decay=wd,
        decoupled_weight_decay=decoupled,
    )  # fmt: skip
    np.testing.assert_allclose(optimizer_response(config, freqs), expected)


def test_cascade_cutoff_lies_below_both_stages() -> None:
    cutoff = response_cutoff([1e-3, 0.1])
    assert cutoff < rate_to_cutoff(1e-3) < rate_to_cutoff(0.1)
    assert abs(cascade_response(1e-3, 0.1, cutoff)) ** 2 == pytest.approx(0.5, rel=1e-9)
    assert response_cutoff([0.95]) is None


def test_filter_summary_per_family() -> None:
    steps = 900
    for name in ("bop", "bop2", "filter", "latent-sgd"):
        latent = name == "latent-sgd"  # decoupled: gamma = 1 - momentum = 0.1 exactly
        config = OptimizerConfig(
            name=name, weight_decay=1e-2 if latent else None, decoupled_weight_decay=latent
        )
        summary = filter_summary(config, steps)
        assert summary is not None and summary["family"] == name
        text = json.dumps(summary)
        assert len(text) < 4096
        assert len(summary["freqs"]) == len(summary["magnitude"]) == 64
        assert summary["freqs"][-1] == 0.5
        assert summary["magnitude"][0] == pytest.approx(1.0, abs=1e-3)
        assert all(
            a >= b for a, b in zip(summary["magnitude"], summary["magnitude"][1:], strict=False)
        )
        first = summary["stages"][0]
        assert first["name"] == "gamma" and first["rate"] == pytest.approx(
            config.gamma if name != "latent-sgd" else 0.1, rel=1e-5
        )
        if summary["cutoff"] is not None:
            assert summary["period_epochs"] == pytest.approx(1 / summary["cutoff"] / steps, 1e-4)
    assert filter_summary(OptimizerConfig(name="latent-adam"), steps) is None
    assert filter_summary(OptimizerConfig(name="latent-sgd"), steps) is None  # no weight decay
    bop2 = filter_summary(OptimizerConfig(name="bop2", sigma=1e-2), steps)
    assert bop2["second_moment"]["rate"] == 1e-2
    single = filter_summary(OptimizerConfig(name="filter", alpha=1e-3, gamma=1.0), steps)
    assert single["stages"][0]["cutoff"] is None  # gamma = 1 passes everything
    assert single["cutoff"] == pytest.approx(rate_to_cutoff(1e-3), rel=1e-5)


def test_filter_summary_evaluates_alpha_schedule() -> None:
    config = OptimizerConfig(name="filter", alpha=1e-3, gamma=0.1)  # alpha linear-epoch to 0
    mid = filter_summary(config, 100, step=500, epochs=10)
    assert mid["stages"][1] == {**mid["stages"][1], "name": "alpha", "rate": 5e-4}
    with pytest.raises(ValueError, match="epochs"):
        filter_summary(config, 100, step=500)


def _flip_trajectory(alpha: float, gamma: float, schedule: Schedule) -> list[torch.Tensor]:
    """Binary weights after every step of the real build_optimizer pair, fed one fixed
    stream of random gradients (independent of the weights, so equal filter states give
    equal weights)."""
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10, hidden=32).double()
    config = OptimizerConfig(name="filter", alpha=alpha, gamma=gamma, alpha_schedule=schedule)
    pair = build_optimizer(model, config, steps_per_epoch=20, epochs=5)
    params = pair.binary_parameters
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(100):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        pair.step()
        out.append(torch.cat([p.detach().flatten().clone() for p in params]))
    return out


def test_order_symmetry_holds_only_for_constant_alpha() -> None:
    constant = Schedule()
    decaying = Schedule(kind="linear-epoch")
    assert order_is_symmetric(OptimizerConfig(name="filter", alpha_schedule=constant))
    assert not order_is_symmetric(OptimizerConfig(name="filter", alpha_schedule=decaying))
    assert not order_is_symmetric(OptimizerConfig(name="bop"))
    same = zip(
        _flip_trajectory(0.01, 0.2, constant), _flip_trajectory(0.2, 0.01, constant), strict=True
    )
    assert sum(int((a != b).sum()) for a, b in same) == 0
    swapped = zip(
        _flip_trajectory(0.01, 0.2, decaying), _flip_trajectory(0.2, 0.01, decaying), strict=True
    )
    assert sum(int((a != b).sum()) for a, b in swapped) > 0
