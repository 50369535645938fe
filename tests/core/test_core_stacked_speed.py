"""Speed machinery of the stacked trainer: compile once per shape, the captured step,
choosing N by measured throughput. Each checks behaviour (counts, equal results, the chosen
N), never a timing."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from torch._dynamo.utils import counters

from bnn_core.config import ConfigError, OptimizerConfig, TrainConfig, TrainResult
from bnn_core.data import random_cifar10
from bnn_core.stacked import StackedTrainer, choose_slots, compile_cache, pick_slots
from bnn_core.stacked.memory import candidate_slots

OPTIONS = {"hidden": 16}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Tiny nets: one intra-op thread (see conftest)."""


@pytest.fixture
def empty_cache() -> Iterator[None]:
    compile_cache.clear()
    yield
    compile_cache.clear()


def _config(seed: int, **fields: object) -> TrainConfig:
    config = TrainConfig(
        model="mlp",
        dataset="digits",
        epochs=1,
        batch_size=50,
        seed=seed,
        max_train_samples=200,
        optimizer=OptimizerConfig(name="bop", gamma=1e-3, threshold=1e-6),
    )
    return dataclasses.replace(config, **fields)  # type: ignore[arg-type]


def _train(configs: list[TrainConfig], n_slots: int, **kw: object) -> list[TrainResult]:
    queue = [(c, None) for c in configs]
    trainer = StackedTrainer(n_slots, model_options=OPTIONS, **kw)  # type: ignore[arg-type]
    return trainer.run(lambda: queue.pop(0) if queue else None)


def _losses(results: list[TrainResult]) -> list[float]:
    return [e.train_loss for r in results for e in r.epochs]


# ---------------------------------------------------------------------- compile once
def test_a_second_group_of_the_same_shape_is_not_compiled_again(
    monkeypatch, empty_cache: None
) -> None:  # noqa: ANN001
    # aot_eager traces with dynamo and AOTAutograd like Inductor, without generating C++.
    monkeypatch.setattr(compile_cache, "BACKEND", "aot_eager")
    first = [_config(s, compile=True) for s in (0, 1)]
    second = [_config(s, compile=True) for s in (2, 3)]
    eager = _train([dataclasses.replace(c, compile=False) for c in second], 2)
    _train(first, 2)
    compiles, graphs = compile_cache.stats["compiles"], counters["stats"]["unique_graphs"]
    frames = counters["frames"]["ok"]
    assert graphs >= 1
    reused = compile_cache.stats["reuses"]
    results = _train(second, 2)
    assert compile_cache.stats["compiles"] == compiles  # no new torch.compile
    assert counters["stats"]["unique_graphs"] == graphs  # dynamo traced nothing new
    assert counters["frames"]["ok"] == frames
    assert compile_cache.stats["reuses"] == reused + 1
    # The reused network trains the new trials as a fresh eager group does.
    assert _losses(results) == pytest.approx(_losses(eager), rel=1e-5)


def test_another_shape_compiles_its_own_network(monkeypatch, empty_cache: None) -> None:  # noqa: ANN001
    monkeypatch.setattr(compile_cache, "BACKEND", "aot_eager")
    _train([_config(s, compile=True) for s in (0, 1)], 2)
    compiles = compile_cache.stats["compiles"]
    _train([_config(s, compile=True, batch_size=25) for s in (0, 1)], 2)
    assert compile_cache.stats["compiles"] == compiles + 1


def test_persistent_cache_sets_inductors_variables(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TORCHINDUCTOR_AUTOGRAD_CACHE", raising=False)
    values = compile_cache.enable_persistent_cache(tmp_path)
    assert values == {
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
    }
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    assert compile_cache.enable_persistent_cache(tmp_path)["TORCHINDUCTOR_CACHE_DIR"] == (
        "/elsewhere"
    )


# ---------------------------------------------------------------------- capture
def test_capture_setting_is_validated_and_eager_on_the_cpu() -> None:
    with pytest.raises(ConfigError, match="capture"):
        StackedTrainer(2, capture="always")
    configs = [_config(s) for s in (0, 1)]
    assert _losses(_train(configs, 2, capture="auto")) == _losses(_train(configs, 2))


def _cuda_configs(model: str = "mlp") -> tuple[list[TrainConfig], dict]:
    if model == "mlp":
        return [_config(s, device="cuda", epochs=2) for s in (0, 1, 2)], OPTIONS
    configs = [
        TrainConfig(
            model="binarynet",
            dataset="cifar10",
            epochs=2,
            batch_size=50,
            seed=s,
            device="cuda",
            optimizer=OptimizerConfig(name="bop", gamma=1e-3, threshold=1e-6),
        )  # fmt: skip
        for s in (0, 1, 2)
    ]
    return configs, {"width": 0.125, "dense_units": 64}


@needs_cuda
@pytest.mark.parametrize(
    ("model", "precision"), [("mlp", "fp32"), ("binarynet", "fp32"), ("binarynet", "bf16")]
)
def test_captured_step_equals_the_eager_step(model: str, precision: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    configs, options = _cuda_configs(model)
    configs = [dataclasses.replace(c, precision=precision) for c in configs]
    data = random_cifar10(400, 50, seed=0) if model == "binarynet" else None
    results = {}
    for capture in ("off", "graph"):
        queue = [(c, None) for c in configs]
        trainer = StackedTrainer(3, model_options=options, dataset=data, capture=capture,
                                 conv_impl="grouped")  # fmt: skip
        results[capture] = trainer.run(lambda q=queue: q.pop(0) if q else None)
        if capture == "graph":
            assert trainer._graph is not None and trainer._graph.captures >= 1
    for eager, captured in zip(results["off"], results["graph"], strict=True):
        for a, b in zip(eager.epochs, captured.epochs, strict=True):
            assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6, abs=1e-7)
            assert a.val_loss == pytest.approx(b.val_loss, rel=1e-6, abs=1e-7)
            assert a.flip_ratio == pytest.approx(b.flip_ratio, rel=1e-3, abs=1e-7)


# ---------------------------------------------------------------------- N by throughput
def test_pick_slots_maximises_model_epochs_per_second_within_memory() -> None:
    measured = [(1, 0.010, 100), (2, 0.011, 190), (4, 0.012, 370), (8, 0.030, 730)]
    # model-epochs per second: 100, 182, 333, 267 -> 4 (8 is slower per model-epoch)
    assert pick_slots(measured, budget_bytes=1000) == 4
    assert pick_slots(measured, budget_bytes=200) == 2  # 4 does not fit
    assert pick_slots(measured, budget_bytes=50) == 1  # nothing fits: the smallest
    tie = [(2, 0.02, 10), (4, 0.04, 20)]
    assert pick_slots(tie, budget_bytes=100) == 2  # same throughput: less memory
    with pytest.raises(ValueError, match="measurements"):
        pick_slots([], budget_bytes=1)


def test_candidate_slots_are_powers_of_two_and_the_bound() -> None:
    assert candidate_slots(1) == [1]
    assert candidate_slots(12) == [1, 2, 4, 8, 12]
    assert candidate_slots(16) == [1, 2, 4, 8, 16]


def test_choose_slots_times_candidates_with_an_injected_timer() -> None:
    timed: list[int] = []

    def timer(n: int) -> tuple[float, int]:
        timed.append(n)
        # Saturates at 8: 16 slots take twice as long per step as 8.
        return (0.01 if n <= 8 else 0.01 * n / 8), n * 100

    n = choose_slots("mlp", (1, 8, 8), 50, "cpu", max_slots=16, timer=timer)
    assert timed == [1, 2, 4, 8, 16] and n == 8
    assert choose_slots("mlp", (1, 8, 8), 50, "cpu", max_slots=16) == 16  # no timer: the cap


def test_choose_slots_stops_timing_at_the_first_out_of_memory() -> None:
    def timer(n: int) -> tuple[float, int]:
        if n > 4:
            raise torch.cuda.OutOfMemoryError("simulated")
        return 0.01, n

    assert choose_slots("mlp", (1, 8, 8), 50, "cpu", max_slots=32, timer=timer) == 4


@needs_cuda
def test_choose_slots_by_throughput_on_cuda() -> None:
    from bnn_core.stacked import measure_slot_bytes, measure_step_seconds

    device = torch.device("cuda")
    per_slot, fixed = measure_slot_bytes("binarynet", (3, 32, 32), 50, device)
    assert per_slot > 0 and fixed >= 0
    seconds, peak = measure_step_seconds("binarynet", (3, 32, 32), 50, device, 4)
    assert seconds > 0 and peak > per_slot
    n = choose_slots("binarynet", (3, 32, 32), 50, device, max_slots=32)
    assert 1 <= n <= 32
