"""Latent-weight SGD and the flip optimizers give the same binary weights.

Each test runs a latent-weight reference (``torch.optim.SGD`` or the SGDW formula written out
here) and a flip optimizer side by side in float64, feeding both the same gradient stream, and
compares ``sign(theta)`` with the binary weights at every step. The gradient depends on the
current binary weights (a pull towards fixed target signs plus noise), so a single mismatch
would also change every later gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnn_core.optim import CEMA, SGDW, Bop, filter_to_sgd, sgd_to_filter

N_WEIGHTS = 4000
N_STEPS = 600
DTYPE = torch.float64


class GradientStream:
    """g_t = noise_t + pull * (w - target): consistent pressure plus noise, seeded."""

    def __init__(self, seed: int, pull: float = 0.3) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.target = self._signs()
        self.pull = pull

    def _signs(self) -> torch.Tensor:
        return torch.randint(0, 2, (N_WEIGHTS,), generator=self.generator).to(DTYPE) * 2 - 1

    def __call__(self, binary: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(N_WEIGHTS, generator=self.generator, dtype=DTYPE)
        return noise + self.pull * (binary - self.target)


def strict_sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def latent_init(seed: int, scale: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(N_WEIGHTS, generator=generator, dtype=DTYPE) * 2 - 1) * scale


def run_side_by_side(
    latent: nn.Parameter,
    latent_step,
    binary: nn.Parameter,
    binary_step,
    seed: int,
) -> int:
    """Step both with the same gradients; assert equal signs every step; return flip count."""
    stream = GradientStream(seed)
    flips = 0
    for t in range(N_STEPS):
        grad = stream(binary.detach())
        latent.grad = grad.clone()
        binary.grad = grad.clone()
        before = binary.detach().clone()
        latent_step(t)
        binary_step(t)
        mismatches = int((strict_sign(latent.detach()) != binary.detach()).sum())
        assert mismatches == 0, f"step {t}: {mismatches} sign mismatches"
        flips += int((binary.detach() != before).sum())
    return flips


def test_bop_with_zero_threshold_is_latent_sgd_with_weight_decay() -> None:
    lr, weight_decay = 0.05, 0.02
    theta0 = latent_init(seed=1, scale=1.0)
    latent = nn.Parameter(theta0.clone())
    sgd = torch.optim.SGD([latent], lr=lr, momentum=0.0, weight_decay=weight_decay)
    binary = nn.Parameter(strict_sign(theta0))
    bop = Bop([binary], gamma=lr * weight_decay, threshold=0.0)
    bop.set_state(binary, m=-weight_decay * theta0)  # the EMA state equals -lambda * theta

    flips = run_side_by_side(latent, lambda t: sgd.step(), binary, lambda t: bop.step(), seed=2)
    assert flips > N_WEIGHTS  # the equivalence is exercised, not vacuous
    torch.testing.assert_close(bop.state[binary]["m"], -weight_decay * latent.detach())


def sgdw_reference(lrs: list[float], momentum: float, weight_decay: float):
    """SGDW written out: v <- mu v + g; theta <- (1 - lr_t wd) theta - lr_t v."""
    velocity: dict[str, torch.Tensor] = {}

    def step(param: nn.Parameter, t: int) -> None:
        with torch.no_grad():
            v = velocity.get("v", torch.zeros_like(param))
            velocity["v"] = momentum * v + param.grad
            param.mul_(1 - lrs[t] * weight_decay).sub_(lrs[t] * velocity["v"])

    return step


def decaying_lrs(lr0: float) -> list[float]:
    return [lr0 * (1 - t / (N_STEPS + 1)) for t in range(N_STEPS)]


def test_cema_is_latent_sgdw_with_momentum_and_time_varying_lr() -> None:
    momentum, weight_decay = 0.9, 0.05
    lrs = decaying_lrs(0.5)
    theta0 = latent_init(seed=3, scale=0.1)
    latent = nn.Parameter(theta0.clone())
    reference = sgdw_reference(lrs, momentum, weight_decay)
    binary = nn.Parameter(strict_sign(theta0))
    cema = CEMA([binary], alpha=lrs[0] * weight_decay, gamma=1 - momentum)
    cema.set_state(binary, x=-weight_decay * (1 - momentum) * theta0)  # m0 = 0

    def cema_step(t: int) -> None:
        cema.param_groups[0]["alpha"] = lrs[t] * weight_decay  # alpha_t = lr_t * wd
        cema.step()

    flips = run_side_by_side(latent, lambda t: reference(latent, t), binary, cema_step, seed=4)
    assert flips > N_WEIGHTS
    torch.testing.assert_close(
        cema.state[binary]["x"], -weight_decay * (1 - momentum) * latent.detach()
    )


def test_sgdw_class_matches_its_formula_with_a_schedule() -> None:
    momentum, weight_decay = 0.8, 0.1
    lrs = decaying_lrs(0.3)
    theta0 = latent_init(seed=5, scale=0.1)
    reference_param = nn.Parameter(theta0.clone())
    reference = sgdw_reference(lrs, momentum, weight_decay)
    param = nn.Parameter(theta0.clone())
    sgdw = SGDW([param], lr=lrs[0], momentum=momentum, weight_decay=weight_decay)
    stream = GradientStream(seed=6)
    for t in range(50):
        param.grad = stream(strict_sign(param.detach()))
        reference_param.grad = param.grad.clone()
        sgdw.param_groups[0]["lr"] = lrs[t]
        sgdw.step()
        reference(reference_param, t)
    torch.testing.assert_close(param, reference_param, rtol=1e-12, atol=1e-15)


def test_cema_matches_coupled_torch_sgd_through_sgd_to_filter() -> None:
    lr, momentum, weight_decay = 0.05, 0.9, 5e-3
    alpha, gamma = sgd_to_filter(lr, momentum, weight_decay, decoupled=False)
    theta0 = latent_init(seed=7, scale=0.05)
    latent = nn.Parameter(theta0.clone())
    sgd = torch.optim.SGD([latent], lr=lr, momentum=momentum, weight_decay=weight_decay)
    binary = nn.Parameter(strict_sign(theta0))
    cema = CEMA([binary], alpha=alpha, gamma=gamma)
    cema.set_state(binary, m=-weight_decay * theta0, x=-weight_decay * theta0)

    flips = run_side_by_side(latent, lambda t: sgd.step(), binary, lambda t: cema.step(), seed=8)
    assert flips > N_WEIGHTS
    torch.testing.assert_close(cema.state[binary]["x"], -weight_decay * latent.detach())


def test_cema_with_gamma_one_is_bop_with_zero_threshold() -> None:
    alpha = 0.01
    binary_a = nn.Parameter(strict_sign(latent_init(seed=9, scale=1.0)))
    binary_b = nn.Parameter(binary_a.detach().clone())
    cema = CEMA([binary_a], alpha=alpha, gamma=1.0)
    bop = Bop([binary_b], gamma=alpha, threshold=0.0)
    flips = run_side_by_side(binary_a, lambda t: cema.step(), binary_b, lambda t: bop.step(), 10)
    assert flips > N_WEIGHTS


# --- the hyperparameter mappings themselves ----------------------------------------------------


def test_sgd_to_filter_decoupled() -> None:
    assert sgd_to_filter(0.1, 0.9, 1e-3, decoupled=True) == pytest.approx((1e-4, 0.1))
    assert sgd_to_filter(0.1, 0.0, 1e-3) == pytest.approx((1e-4, 1.0))


def test_sgd_to_filter_coupled_roots() -> None:
    # Coupled L2 maps through the roots of z^2 - (1 - mu + eta*lambda) z + eta*lambda;
    # with eta 0.05, lambda 5e-3, mu 0.9 the slower root is alpha ~ 2.559e-3.
    alpha, gamma = sgd_to_filter(0.05, 0.9, 5e-3, decoupled=False)
    assert alpha == pytest.approx(2.559e-3, rel=1e-3)
    assert gamma == pytest.approx(9.769e-2, rel=1e-3)
    assert alpha * gamma == pytest.approx(0.05 * 5e-3, rel=1e-12)
    assert (1 - alpha) * (1 - gamma) == pytest.approx(0.9, rel=1e-12)
    assert alpha <= gamma


def test_filter_to_sgd_inverts_the_decoupled_mapping() -> None:
    lr, momentum, weight_decay = filter_to_sgd(alpha=2e-4, gamma=0.1, lr=0.1)
    assert (lr, momentum, weight_decay) == pytest.approx((0.1, 0.9, 2e-3))
    assert sgd_to_filter(lr, momentum, weight_decay) == pytest.approx((2e-4, 0.1))


@pytest.mark.parametrize("decoupled", [True, False])
def test_sgd_to_filter_without_weight_decay_has_no_finite_alpha(decoupled: bool) -> None:
    with pytest.raises(ValueError, match="weight_decay"):
        sgd_to_filter(0.1, 0.9, 0.0, decoupled=decoupled)


def test_sgd_to_filter_rejects_complex_poles() -> None:
    with pytest.raises(ValueError, match="momentum"):
        sgd_to_filter(1.0, 0.99, 0.01, decoupled=False)


@pytest.mark.parametrize("decoupled", [True, False])
def test_sgd_to_filter_rejects_rates_that_cema_cannot_take(decoupled: bool) -> None:
    # lr * wd = 2, mu = 0: coupled SGD is theta <- -theta - lr g, a pole at 1 - 2 = -1.
    # The roots of z^2 - 3z + 2 are 1 and 2, so gamma = 2 (decoupled: alpha = 2); CEMA
    # refuses both, and so must the mapping.
    with pytest.raises(ValueError, match="lr \\* weight_decay"):
        sgd_to_filter(2.0, 0.0, 1.0, decoupled=decoupled)
    with pytest.raises(ValueError, match="gamma"):
        CEMA([nn.Parameter(torch.ones(1))], alpha=1.0, gamma=2.0)
