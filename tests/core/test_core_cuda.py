"""What only a CUDA device can show: bf16 + channels_last numerics, split vs grouped
convolutions in cuDNN, stacked vs solo training on the GPU, real out-of-memory back-off,
slot sizing from real free memory, and torch.compile. Skipped without CUDA (CI has none);
run on a GPU machine with ``pytest tests/core/test_core_cuda.py``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bnn_core.config import OptimizerConfig, TrainConfig, TrainResult
from bnn_core.data import Dataset, random_cifar10
from bnn_core.models import build_model
from bnn_core.stacked import (
    StackedTrainer,
    choose_slots,
    measure_slot_bytes,
    stack_models,
    train_stacked,
)
from bnn_core.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SMALL_BINARYNET = {"width": 0.25, "dense_units": 64}


def digits_config(seed: int, **changes: object) -> TrainConfig:
    base = TrainConfig(
        model="conv-small",
        dataset="digits",
        epochs=3,
        batch_size=50,
        seed=seed,
        device="cuda",
        optimizer=OptimizerConfig(name="bop", gamma=1e-3, threshold=1e-6),
    )
    return dataclasses.replace(base, **changes)


def test_split_and_grouped_convolutions_agree_in_bf16_channels_last() -> None:
    torch.manual_seed(0)
    models = [build_model("binarynet", (3, 32, 32), 10, **SMALL_BINARYNET) for _ in range(4)]
    networks = []
    for impl in ("grouped", "split"):
        network = stack_models(models).cuda().to(memory_format=torch.channels_last)
        network.channels_last = True
        network.conv_impl = impl
        networks.append(network.eval())
    layers = [dict(n.body.named_children())["3"] for n in networks]  # fed by a sign: bf16
    signs = torch.where(torch.randn(50, 4 * 32, 30, 30, device="cuda") >= 0, 1.0, -1.0)
    signs = signs.to(memory_format=torch.channels_last)
    with torch.no_grad():
        exact = layers[0](signs)  # fp32 (or TF32: +-1 is exact there too, sums in fp32)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            grouped, split = (layer(signs) for layer in layers)
    assert grouped.dtype == torch.bfloat16
    assert torch.equal(grouped, split)  # integer sums: both exact, then one rounding
    assert torch.equal(grouped, exact.to(torch.bfloat16))
    # The first layer sees real pixels and runs fp32; the two implementations may sum in
    # another order there, so only closeness holds (after a sign, any difference can flip it).
    first = [dict(n.body.named_children())["0"] for n in networks]
    x = torch.randn(8, 4 * 3, 32, 32, device="cuda").to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        torch.testing.assert_close(first[1](x), first[0](x), atol=1e-2, rtol=1e-2)


def test_stacked_trials_train_like_solo_trials_on_cuda(monkeypatch) -> None:  # noqa: ANN001
    """On the GPU the grouped kernels sum in another order than the single ones; a BNN turns
    such differences into different signs, so the runs are compared as runs: the same losses
    within a few percent (full fp32, no TF32, so the differences start at rounding level)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # matmul TF32 is off already
    configs = [
        digits_config(s, model="mlp", epochs=2, optimizer=OptimizerConfig(gamma=g))
        for s, g in [(0, 1e-3), (1, 1e-2)]
    ]
    stacked = train_stacked(configs)
    for config, result in zip(configs, stacked, strict=True):
        solo = train(config)
        for a, b in zip(result.epochs, solo.epochs, strict=True):
            assert a.train_loss == pytest.approx(b.train_loss, rel=0.05)
            assert a.val_accuracy == pytest.approx(b.val_accuracy, abs=0.05)
            assert a.flip_ratio == pytest.approx(b.flip_ratio, rel=0.2)


@pytest.mark.parametrize("stacked", [False, True])
def test_bf16_channels_last_training_learns_digits(stacked: bool) -> None:
    config = digits_config(0, epochs=6, precision="bf16", channels_last=True)
    if stacked:
        results = train_stacked([config, dataclasses.replace(config, seed=1)])
    else:
        results = [train(config)]
    for result in results:
        assert result.epochs[-1].val_accuracy >= 0.85
        assert all(np.isfinite(e.train_loss) for e in result.epochs)


def _binarynet_configs(n: int) -> list[TrainConfig]:
    return [
        TrainConfig(
            model="binarynet",
            dataset="cifar10",
            epochs=1,
            batch_size=25,
            seed=s,
            device="cuda",
            optimizer=OptimizerConfig(gamma=1e-3, threshold=1e-6),
        )  # fmt: skip
        for s in range(n)
    ]


def _run(trainer: StackedTrainer, configs: list[TrainConfig]) -> list[TrainResult]:
    queue = list(configs)
    return trainer.run(lambda: (queue.pop(0), None) if queue else None)


def test_a_real_out_of_memory_error_halves_the_slots_and_every_trial_finishes() -> None:
    """Cap the allocator so that one slot fits with room to spare but 16 cannot: 16 slots
    need at least 16 x (weights + grads + Bop's m) = 16 x 12 bytes per parameter."""
    device = torch.device("cuda", torch.cuda.current_device())
    data = random_cifar10(200, 50)
    params = sum(p.numel() for p in build_model("binarynet", (3, 32, 32), 10).parameters())
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    _run(StackedTrainer(1, dataset=data), _binarynet_configs(1))
    one_slot = torch.cuda.max_memory_allocated(device) - torch.cuda.memory_allocated(device)
    torch.cuda.empty_cache()
    cap = baseline + 1.5 * one_slot + 4 * 12 * params
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(cap / total, device)
    try:
        trainer = StackedTrainer(16, dataset=data, shrink_when_idle=False)
        results = _run(trainer, _binarynet_configs(16))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
    assert trainer.oom_backoffs >= 1 and trainer.n_slots < 16
    assert len(results) == 16
    assert all(len(r.epochs) == 1 and np.isfinite(r.epochs[0].train_loss) for r in results)


def test_choose_slots_sizes_n_from_free_memory() -> None:
    n = choose_slots(
        "binarynet", (3, 32, 32), 50, "cuda", max_slots=100_000, precision="bf16",
        by_throughput=False,
    )  # fmt: skip
    per_slot, _ = measure_slot_bytes(
        "binarynet", (3, 32, 32), 50, torch.device("cuda"), precision="bf16"
    )
    free, _ = torch.cuda.mem_get_info()
    assert 1 <= n < 100_000
    assert n * per_slot <= free


def test_optimizer_state_and_gradients_stay_fp32_under_bf16() -> None:
    config = digits_config(0, epochs=1, precision="bf16", channels_last=True)
    trainer = StackedTrainer(2)
    queue = [config, dataclasses.replace(config, seed=1)]
    trainer.run(lambda: (queue.pop(0), None) if queue else None)
    for param in trainer.network.parameters():
        assert param.dtype == torch.float32
        assert param.grad is None or param.grad.dtype == torch.float32
    for tensors in trainer.optimizer.state.values():
        assert all(t.dtype == torch.float32 for t in tensors)


def test_compiled_training_matches_eager() -> None:
    config = digits_config(0, model="mlp", epochs=2)
    eager = train(config)
    compiled = train(dataclasses.replace(config, compile=True))
    for a, b in zip(compiled.epochs, eager.epochs, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=0.05)
        assert a.val_accuracy == pytest.approx(b.val_accuracy, abs=0.05)


@pytest.mark.parametrize("family", ["latent-adam", "latent-sgd"])
def test_latent_trials_stack_like_solo_on_cuda(
    family: str,
    noisy_digits: Dataset,
    monkeypatch,  # noqa: ANN001
) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # matmul TF32 is off already
    configs = [
        digits_config(
            s,
            model="mlp",
            epochs=2,
            optimizer=OptimizerConfig(name=family, lr=lr, weight_decay=1e-4, momentum=0.9),
        )  # fmt: skip
        for s, lr in [(0, 1e-3), (1, 1e-2)]
    ]
    stacked = train_stacked(configs, dataset=noisy_digits)
    for config, result in zip(configs, stacked, strict=True):
        solo = train(config, dataset=noisy_digits)
        for a, b in zip(result.epochs, solo.epochs, strict=True):
            assert a.train_loss == pytest.approx(b.train_loss, rel=0.05)
            assert a.flip_ratio == pytest.approx(b.flip_ratio, rel=0.2)
            assert a.hyperparameters == b.hyperparameters


def test_initial_latent_weights_on_cuda_are_the_solo_ones(noisy_digits: Dataset) -> None:
    """Latent weights are drawn after the model moves to the device (CUDA RNG): a stacked
    trial must draw them from the same seeded stream as ``train``."""
    config = digits_config(
        3, model="mlp", epochs=1, optimizer=OptimizerConfig(name="latent-sgd", lr=1e-2)
    )
    captured: list[dict[str, torch.Tensor]] = []
    train(config, dataset=noisy_digits, on_setup=lambda model, _: captured.append(
        {k: v.clone() for k, v in model.state_dict().items()}))  # fmt: skip
    trainer = StackedTrainer(1, dataset=noisy_digits)
    trainer._setup(config)
    state = trainer._single_model(config).state_dict()
    for key, value in captured[0].items():
        assert torch.equal(state[key].to(value.device), value), key
