"""Bop, Bop2ndOrder and CEMA against hand-computed steps on tiny tensors.

The numbers use dyadic rates (0.5, 0.25) so that every expected value is exact in fp32.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnn_core.optim import CEMA, Bop, Bop2ndOrder, CascadedEMA


def binary(*values: float, dtype: torch.dtype = torch.float32) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=dtype))


def step_with(optimizer: torch.optim.Optimizer, param: nn.Parameter, *grad: float) -> None:
    param.grad = torch.tensor(grad, dtype=param.dtype)
    optimizer.step()


def values(tensor: torch.Tensor) -> list[float]:
    return tensor.detach().float().tolist()


# --- Bop ---------------------------------------------------------------------------------------


def test_bop_flips_where_weight_and_momentum_agree_beyond_threshold() -> None:
    w = binary(1, -1, 1, -1, 1)
    opt = Bop([w], gamma=0.5, threshold=0.25)
    step_with(opt, w, 1.0, 1.0, 0.5, -2.0, -4.0)
    # m = 0.5 g = [0.5, 0.5, 0.25, -1, -2]; w m = [0.5, -0.5, 0.25 (tie), 1, -2]
    assert values(opt.state[w]["m"]) == [0.5, 0.5, 0.25, -1.0, -2.0]
    assert values(w) == [-1, -1, 1, 1, 1]


def test_bop_tie_at_exactly_threshold_does_not_flip() -> None:
    w = binary(1, -1)
    opt = Bop([w], gamma=0.5, threshold=0.375)
    step_with(opt, w, 0.75, -0.75)  # w m = 0.375 == tau for both
    assert values(w) == [1, -1]


def test_bop_zero_gradient_from_zero_state_changes_nothing() -> None:
    w = binary(1, -1, 1)
    opt = Bop([w], gamma=0.5, threshold=0.0)
    step_with(opt, w, 0.0, 0.0, 0.0)
    assert values(w) == [1, -1, 1]
    assert values(opt.state[w]["m"]) == [0.0, 0.0, 0.0]


def test_bop_zero_gradient_decays_momentum_without_flipping() -> None:
    w = binary(1, -1)
    opt = Bop([w], gamma=0.25, threshold=0.0)
    opt.set_state(w, m=torch.tensor([-0.5, 0.5]))
    step_with(opt, w, 0.0, 0.0)
    assert values(opt.state[w]["m"]) == [-0.375, 0.375]  # (1 - 0.25) m
    assert values(w) == [1, -1]


def test_bop_several_steps_with_hysteresis() -> None:
    w = binary(1)
    opt = Bop([w], gamma=0.5, threshold=0.0)
    expected = [  # (g, m, w): m is never reset after a flip
        (1.0, 0.5, -1),  # w m = 0.5 > 0: flip
        (1.0, 0.75, -1),  # w m = -0.75: keep
        (-1.0, -0.125, 1),  # w m = 0.125 > 0: flip back
        (0.0, -0.0625, 1),  # decays, w m < 0: keep
    ]
    for grad, m, weight in expected:
        step_with(opt, w, grad)
        assert values(opt.state[w]["m"]) == [m]
        assert values(w) == [weight]


def test_bop_skips_parameters_without_gradient() -> None:
    w, u = binary(1, 1), binary(-1, -1)
    opt = Bop([w, u], gamma=0.5, threshold=0.0)
    step_with(opt, w, 1.0, -1.0)
    assert values(u) == [-1, -1]
    assert u not in opt.state


def test_bop_hyperparameters_are_read_from_the_param_group_every_step() -> None:
    w = binary(1)
    opt = Bop([w], gamma=0.5, threshold=0.0)
    step_with(opt, w, -1.0)  # m = -0.5
    opt.param_groups[0]["gamma"] = 0.25
    step_with(opt, w, 1.0)  # m = 0.75 * -0.5 + 0.25 = -0.125
    assert values(opt.state[w]["m"]) == [-0.125]


def test_bop_state_is_fp32_for_bf16_weights() -> None:
    w = binary(1, -1, dtype=torch.bfloat16)
    opt = Bop([w], gamma=0.25, threshold=0.0)
    step_with(opt, w, 1.0, 1.0)
    assert opt.state[w]["m"].dtype == torch.float32
    assert values(w) == [-1, -1]
    assert w.dtype == torch.bfloat16


def test_bop_closure_loss_is_returned() -> None:
    w = binary(1, -1)
    opt = Bop([w])

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (w * torch.tensor([1.0, 2.0])).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == -1.0  # 1*1 + (-1)*2
    assert values(opt.state[w]["m"]) == pytest.approx([1e-4, 2e-4])


FACTORIES = {
    "bop": lambda p, foreach: Bop(p, gamma=0.1, threshold=0.05, foreach=foreach),
    "bop2": lambda p, foreach: Bop2ndOrder(p, 0.1, 0.05, 0.1, foreach=foreach),
    "bop2-unbiased": lambda p, foreach: Bop2ndOrder(p, 0.1, 0.05, 2.0, True, foreach=foreach),
    "cema": lambda p, foreach: CEMA(p, alpha=0.1, gamma=0.2, foreach=foreach),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_foreach_path_matches_the_loop(name: str) -> None:
    generator = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (3, 2, 3, 3), (11,)]
    params = [nn.Parameter(torch.randint(0, 2, s, generator=generator) * 2.0 - 1) for s in shapes]
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    loop, fused = FACTORIES[name](params, False), FACTORIES[name](twins, True)
    flips = 0
    for _ in range(20):
        for p, q in zip(params, twins, strict=True):
            p.grad = torch.randn(p.shape, generator=generator) + 0.3 * p.detach()
            q.grad = p.grad.clone()
        before = [p.detach().clone() for p in params]
        loop.step()
        fused.step()
        flips += sum(int((p != b).sum()) for p, b in zip(params, before, strict=True))
    assert flips > 0
    for p, q in zip(params, twins, strict=True):
        assert torch.equal(p, q)
        for buffer_name, buffer in loop.state[p].items():
            assert torch.equal(buffer, fused.state[q][buffer_name])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_step_never_syncs_and_can_be_captured_in_a_cuda_graph(name: str, foreach: bool) -> None:
    generator = torch.Generator(device="cuda").manual_seed(0)
    params = [
        nn.Parameter(torch.randint(0, 2, s, generator=generator, device="cuda") * 2.0 - 1)
        for s in [(64, 32), (16, 8, 3, 3)]
    ]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, device="cuda")
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, twins, strict=True):
        q.grad = p.grad.clone()
    opt, eager = FACTORIES[name](params, foreach), FACTORIES[name](twins, foreach)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up creates the lazy state outside the capture
        opt.step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    graph.replay()
    for _ in range(3):
        eager.step()
    torch.cuda.synchronize()
    for p, q in zip(params, twins, strict=True):
        assert torch.equal(p, q)


# --- Bop2ndOrder -------------------------------------------------------------------------------


def test_bop2_biased_step() -> None:
    w = binary(1, -1, -1)
    opt = Bop2ndOrder([w], gamma=0.25, sigma=0.25, threshold=0.25)
    step_with(opt, w, 2.0, 2.0, -2.0)
    # m = 0.25 g = [0.5, 0.5, -0.5]; v = 0.25 g^2 = 1; w m / sqrt(v) = [0.5, -0.5, 0.5]
    assert values(opt.state[w]["m"]) == [0.5, 0.5, -0.5]
    assert values(opt.state[w]["v"]) == [1.0, 1.0, 1.0]
    assert values(w) == [-1, -1, 1]
    # Zero gradient: both moments decay; w m / sqrt(v) = -0.375 / sqrt(0.75) < 0: no flip.
    step_with(opt, w, 0.0, 0.0, 0.0)
    assert values(opt.state[w]["m"]) == [0.375, 0.375, -0.375]
    assert values(opt.state[w]["v"]) == [0.75, 0.75, 0.75]
    assert values(w) == [-1, -1, 1]


@pytest.mark.parametrize(
    ("bias_correction", "expected"), [(False, [1, -1, 1]), (True, [-1, -1, 1])]
)
def test_bop2_unbiased_divides_by_the_rates(bias_correction: bool, expected: list[int]) -> None:
    # gamma != sigma, so swapping them is caught: m = 0.0625 * 2 = 0.125, v = 0.25 * 4 = 1.
    # Biased score m/sqrt(v) = 0.125; unbiased (m/gamma)/sqrt(v/sigma) = 2/2 = 1; swapped
    # rates would give (m/sigma)/sqrt(v/gamma) = 0.5/4 = 0.125. tau = 0.5.
    w = binary(1, -1, 1)
    opt = Bop2ndOrder(
        [w], gamma=0.0625, sigma=0.25, threshold=0.5, bias_correction=bias_correction
    )
    step_with(opt, w, 2.0, 2.0, -2.0)
    assert values(w) == expected


def test_bop2_unbiased_is_biased_with_threshold_tau_gamma_over_sqrt_sigma() -> None:
    # Derived: (m/gamma)/sqrt(v/sigma) = (sqrt(sigma)/gamma) m/sqrt(v), so the
    # unbiased variant at tau flips exactly like the biased one at tau * gamma / sqrt(sigma)
    # (eps scaled by sqrt(sigma)), also while gamma and sigma follow schedules.
    generator = torch.Generator().manual_seed(3)
    start = torch.randint(0, 2, (2000,), generator=generator).double() * 2 - 1
    unbiased_w = nn.Parameter(start.clone())
    biased_w = nn.Parameter(start.clone())
    unbiased = Bop2ndOrder([unbiased_w], bias_correction=True, eps=1e-12)
    biased = Bop2ndOrder([biased_w], eps=1e-12 * 0.1)
    flips = 0
    for t in range(200):
        gamma, sigma, tau = 1e-2 * (1 - t / 400), 1e-3 * (1 + t / 100), 0.3
        unbiased.param_groups[0].update(gamma=gamma, sigma=sigma, threshold=tau)
        sqrt_sigma = sigma**0.5
        biased.param_groups[0].update(
            gamma=gamma, sigma=sigma, threshold=tau * gamma / sqrt_sigma, eps=1e-12 * sqrt_sigma
        )
        grad = torch.randn(2000, generator=generator, dtype=torch.float64) + 0.5 * start
        unbiased_w.grad, biased_w.grad = grad.clone(), grad.clone()
        before = biased_w.detach().clone()
        unbiased.step()
        biased.step()
        assert torch.equal(unbiased_w, biased_w), f"step {t}"
        flips += int((biased_w != before).sum())
    assert flips > 2000  # the identity is exercised, not vacuous


def test_bop2_zero_gradient_from_zero_state_is_finite_and_does_not_flip() -> None:
    w = binary(1, -1)
    opt = Bop2ndOrder([w], threshold=0.0)
    step_with(opt, w, 0.0, 0.0)
    assert values(w) == [1, -1]
    assert values(opt.state[w]["v"]) == [0.0, 0.0]


def test_bop2_first_step_normalised_score_is_gamma_over_sqrt_sigma() -> None:
    # At step 1, m / sqrt(v) = (gamma / sqrt(sigma)) sign(g) = 0.03 >> tau.
    w = binary(*([1.0] * 4))
    opt = Bop2ndOrder([w], gamma=1e-4, sigma=1e-5, threshold=0.029)
    step_with(opt, w, 3.0, -0.5, 1e-3, -7.0)
    assert values(w) == [-1, 1, -1, 1]


# --- CEMA --------------------------------------------------------------------------------------


def test_cema_first_step_sets_weights_to_minus_sign_of_gradient() -> None:
    generator = torch.Generator().manual_seed(1)
    w = nn.Parameter(torch.randint(0, 2, (500,), generator=generator).float() * 2 - 1)
    before = w.detach().clone()
    grad = torch.randn(500, generator=generator)
    grad[::7] = 0.0
    opt = CEMA([w], alpha=1e-3, gamma=1e-2)
    w.grad = grad
    opt.step()
    nonzero = grad != 0
    assert torch.equal(w[nonzero], -torch.sign(grad[nonzero]))
    assert torch.equal(w[~nonzero], before[~nonzero])


def test_cema_hand_computed_steps_including_zero_inertia() -> None:
    w = binary(1)
    opt = CEMA([w], alpha=0.5, gamma=0.5)
    expected = [  # (g, m, x, w)
        (-1.0, -0.5, -0.25, 1),  # w x < 0: keep
        (1.0, 0.25, 0.0, 1),  # x == 0 exactly: unchanged
        (1.0, 0.625, 0.3125, -1),  # w x > 0: flip
    ]
    for grad, m, x, weight in expected:
        step_with(opt, w, grad)
        assert values(opt.state[w]["m"]) == [m]
        assert values(opt.state[w]["x"]) == [x]
        assert values(w) == [weight]


def test_cema_zero_gradient_from_zero_state_changes_nothing() -> None:
    w = binary(1, -1)
    opt = CascadedEMA([w], alpha=0.5, gamma=0.5)
    step_with(opt, w, 0.0, 0.0)
    assert values(w) == [1, -1]


def test_cema_initial_inertia_via_set_state() -> None:
    w = binary(1, -1)
    opt = CEMA([w], alpha=0.5, gamma=0.5)
    opt.set_state(w, x=torch.tensor([-1.0, -1.0]))
    step_with(opt, w, 0.0, 0.5)  # m = [0, 0.25]; x = [-0.5, -0.375]
    assert values(opt.state[w]["x"]) == [-0.5, -0.375]
    assert values(w) == [1, 1]  # the second weight had w x = 0.375 > 0


def test_state_dict_round_trip_keeps_fp32_state() -> None:
    w = binary(1, -1, 1, dtype=torch.bfloat16)
    opt = CEMA([w], alpha=0.25, gamma=0.5)
    step_with(opt, w, 1e-3, -2e-3, 3e-3)
    saved = copy.deepcopy(opt.state_dict())
    w2 = nn.Parameter(w.detach().clone())
    restored = CEMA([w2], alpha=0.5, gamma=0.5)
    restored.load_state_dict(saved)
    assert restored.param_groups[0]["alpha"] == 0.25
    for name in ("m", "x"):
        assert restored.state[w2][name].dtype == torch.float32
        assert torch.equal(restored.state[w2][name], opt.state[w][name])


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda p: Bop(p, gamma=-1e-4), "gamma"),
        (lambda p: Bop(p, gamma=0.0), "gamma"),
        (lambda p: Bop(p, gamma=1.5), "gamma"),
        (lambda p: Bop(p, threshold=-1e-8), "threshold"),
        (lambda p: Bop(p, threshold=float("nan")), "threshold"),
        (lambda p: Bop2ndOrder(p, gamma=2.0), "gamma"),
        (lambda p: Bop2ndOrder(p, sigma=-0.1), "sigma"),
        (lambda p: Bop2ndOrder(p, threshold=-1.0), "threshold"),
        (lambda p: Bop2ndOrder(p, eps=0.0), "eps"),
        (lambda p: CEMA(p, alpha=-0.1, gamma=0.1), "alpha"),
        (lambda p: CEMA(p, alpha=0.1, gamma=1.01), "gamma"),
        (lambda p: Bop([{"params": p, "gamma": -1.0}]), "gamma"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_the_argument(make, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        make([binary(1, -1)])


@pytest.mark.parametrize("make", [Bop, Bop2ndOrder, lambda p: CEMA(p, 0.1, 0.1)])
def test_non_binary_parameters_are_refused_by_index(make) -> None:
    real = nn.Parameter(torch.tensor([0.5, -1.0]))
    with pytest.raises(ValueError, match=r"params\[1\]"):
        make([binary(1, -1), real])
    with pytest.raises(ValueError, match=r"params\[2\]"):
        make([{"params": [binary(1)]}, {"params": [binary(-1), nn.Parameter(torch.zeros(2))]}])


def test_set_state_rejects_unknown_buffers_and_foreign_parameters() -> None:
    w = binary(1, -1)
    opt = Bop([w])
    with pytest.raises(ValueError, match="buffers"):
        opt.set_state(w, x=torch.zeros(2))
    with pytest.raises(ValueError, match="param"):
        opt.set_state(binary(1, 1), m=torch.zeros(2))
