"""schedule_value against values computed by hand at chosen global steps."""

from __future__ import annotations

import math

import pytest

from bnn_core.config import Schedule
from bnn_core.schedules import schedule_value


def test_constant() -> None:
    assert (
        schedule_value(3e-4, Schedule(), step=123_456, steps_per_epoch=10, total_steps=100) == 3e-4
    )


def test_staircase_is_the_bop_cifar_recipe() -> None:
    # gamma = 1e-4 * 0.1 ** floor(epoch / 100) at 1000 steps per epoch, 500 epochs.
    schedule = Schedule(kind="staircase", factor=0.1, every_epochs=100)

    def gamma(step: int) -> float:
        return schedule_value(1e-4, schedule, step, steps_per_epoch=1000, total_steps=500_000)

    assert gamma(0) == 1e-4
    assert gamma(99_999) == 1e-4
    assert gamma(100_000) == pytest.approx(1e-5, rel=1e-12)  # the boundary, exactly
    assert gamma(250_000) == pytest.approx(1e-6, rel=1e-12)
    assert gamma(499_999) == pytest.approx(1e-8, rel=1e-12)


def test_linear_is_keras_polynomial_decay_per_step() -> None:
    schedule = Schedule(kind="linear", end_value=1e-6)

    def gamma(step: int) -> float:
        return schedule_value(1e-4, schedule, step, steps_per_epoch=7, total_steps=1000)

    assert gamma(0) == 1e-4
    assert gamma(500) == pytest.approx(5.05e-5, rel=1e-12)  # the midpoint (1e-4 + 1e-6) / 2
    assert gamma(250) == pytest.approx(7.525e-5, rel=1e-12)
    assert gamma(1000) == pytest.approx(1e-6, rel=1e-12)
    assert gamma(5000) == pytest.approx(1e-6, rel=1e-12)  # holds the end value afterwards


def test_linear_can_increase() -> None:
    # Bop2ndOrder's CIFAR recipe raises sigma from 1e-7 to 1e-2.
    schedule = Schedule(kind="linear", end_value=1e-2)
    value = schedule_value(1e-7, schedule, 50, steps_per_epoch=10, total_steps=100)
    assert value == pytest.approx((1e-7 + 1e-2) / 2, rel=1e-12)


def test_cosine() -> None:
    schedule = Schedule(kind="cosine", end_value=0.1)

    def value(step: int) -> float:
        return schedule_value(1.0, schedule, step, steps_per_epoch=3, total_steps=400)

    assert value(0) == 1.0
    assert value(200) == pytest.approx(0.55, rel=1e-12)  # the midpoint
    assert value(100) == pytest.approx(0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2, rel=1e-12)
    assert value(400) == pytest.approx(0.1, rel=1e-12)
    assert value(401) == pytest.approx(0.1, rel=1e-12)


def test_linear_epoch_is_piecewise_constant_per_epoch() -> None:
    # alpha_t = alpha0 * (1 - epoch / epochs) with 5 epochs of 10 steps (the ICLR code).
    schedule = Schedule(kind="linear-epoch")

    def alpha(step: int) -> float:
        return schedule_value(1.0, schedule, step, steps_per_epoch=10, total_steps=50)

    assert [alpha(s) for s in (0, 9)] == [1.0, 1.0]
    assert [alpha(s) for s in (10, 19)] == pytest.approx([0.8, 0.8])
    assert alpha(20) == pytest.approx(0.6)
    assert alpha(49) == pytest.approx(0.2)
    assert alpha(50) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"step": -1}, "step"),
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"total_steps": 0}, "total_steps"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict[str, int], argument: str) -> None:
    arguments = {"step": 0, "steps_per_epoch": 1, "total_steps": 1} | kwargs
    with pytest.raises(ValueError, match=argument):
        schedule_value(1.0, Schedule(kind="linear"), **arguments)
