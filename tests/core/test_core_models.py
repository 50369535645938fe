"""Model shapes and the exact BinaryNet layer sequence of the Bop paper's CIFAR-10 network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnn_core.config import ConfigError
from bnn_core.layers import BinaryConv2d, BinaryLinear, SignActivation, split_parameters
from bnn_core.models import MODEL_NAMES, build_model

SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar": (3, 32, 32)}


@pytest.mark.parametrize(
    ("name", "shape_key", "kwargs"),
    [
        ("mlp", "digits", {}),
        ("mlp", "mnist", {"hidden": 32}),
        ("mlp", "cifar", {"hidden": 32}),
        ("conv-small", "digits", {}),
        ("conv-small", "mnist", {"width": 0.25}),
        ("conv-small", "cifar", {"width": 0.25}),
        ("resnet", "digits", {"width": 0.5}),
        ("resnet", "mnist", {"width": 0.5}),
        ("resnet", "cifar", {"width": 0.5}),
        ("binarynet", "mnist", {"width": 1 / 16}),
        ("binarynet", "cifar", {"width": 1 / 16}),
    ],
)
def test_output_shapes(name: str, shape_key: str, kwargs: dict) -> None:
    shape = SHAPES[shape_key]
    model = build_model(name, shape, 10, **kwargs)
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()


def test_model_names() -> None:
    assert set(MODEL_NAMES) == {"binarynet", "resnet", "mlp", "conv-small"}


def test_unknown_model_names_choices() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("vgg", (1, 8, 8), 10)
    assert info.value.field == "model"
    assert "binarynet" in str(info.value) and "conv-small" in str(info.value)


def test_binarynet_too_small_input_is_config_error() -> None:
    with pytest.raises(ConfigError, match="model"):
        build_model("binarynet", (1, 8, 8), 10)


def test_binarynet_exact_sequence() -> None:
    model = build_model("binarynet", (3, 32, 32), 10)
    assert isinstance(model, nn.Sequential)
    kinds = [type(m).__name__ for m in model]
    block = ["BinaryConv2d", "BatchNorm2d", "SignActivation", "BinaryConv2d", "MaxPool2d"]
    block += ["BatchNorm2d", "SignActivation"]
    head = ["Flatten"] + ["BinaryLinear", "BatchNorm1d", "SignActivation"] * 2
    head += ["BinaryLinear", "BatchNorm1d"]
    assert kinds == block * 3 + head
    convs = [m for m in model if isinstance(m, BinaryConv2d)]
    linears = [m for m in model if isinstance(m, BinaryLinear)]
    assert len(convs) == 6 and len(linears) == 3
    assert [c.out_channels for c in convs] == [128, 128, 256, 256, 512, 512]
    assert convs[0].padding == 0 and all(c.padding == 1 for c in convs[1:])
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (4608, 1024),
        (1024, 1024),
        (1024, 10),
    ]
    # no biases anywhere in binary layers, no real conv/linear at all
    assert not any(isinstance(m, nn.Conv2d | nn.Linear) for m in model)
    for m in model:
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            assert m.eps == 1e-3 and m.momentum == 0.01
            assert not m.weight.requires_grad and torch.all(m.weight == 1)
            assert m.bias.requires_grad
    binary, real = split_parameters(model)
    assert len(binary) == 9
    assert all(p.dim() == 1 for p in real)  # only the BN shifts are real


def test_binarynet_spatial_sizes() -> None:
    model = build_model("binarynet", (3, 32, 32), 10, width=1 / 16)
    sizes = []
    x = torch.randn(2, 3, 32, 32)
    for m in model:
        x = m(x)
        if isinstance(m, BinaryConv2d | nn.MaxPool2d) and x.dim() == 4:
            sizes.append(x.shape[-1])
    assert sizes == [30, 30, 15, 15, 15, 7, 7, 7, 3]


def test_binarynet_grayscale_28() -> None:
    model = build_model("binarynet", (1, 28, 28), 10, width=1 / 16)
    first = next(m for m in model if isinstance(m, BinaryLinear))
    assert first.in_features == 32 * 3 * 3  # 28 -> 26 -> 13 -> 6 -> 3


def test_first_layer_takes_real_input_and_activations_are_signed() -> None:
    model = build_model("mlp", (1, 8, 8), 10)
    assert isinstance(model[1], BinaryLinear)
    assert sum(isinstance(m, SignActivation) for m in model) == 2
    x = torch.randn(5, 1, 8, 8)
    hidden = model[3](model[2](model[1](model[0](x))))
    assert set(hidden.unique().tolist()) <= {-1.0, 1.0}


def test_resnet_has_real_stem_shortcut_and_classifier() -> None:
    model = build_model("resnet", (3, 32, 32), 10)
    binary, real = split_parameters(model)
    assert len(binary) == 6  # 3 stages x 2 binary 3x3 convs
    real_convs = [m for m in model.modules() if type(m) is nn.Conv2d]
    assert real_convs[0].kernel_size == (3, 3)
    assert all(c.kernel_size == (1, 1) for c in real_convs[1:]) and len(real_convs) == 3
    assert isinstance(model.fc, nn.Linear)
    quantizers = {m.quantizer for m in model.modules() if isinstance(m, SignActivation)}
    assert quantizers == {"approx_sign"}


def test_resnet_batch_norms_are_birealnet_keras_conversions() -> None:
    # Bi-Real Net as released in Keras: BatchNormalization(momentum=0.8), default eps 1e-3
    # and scale=True, i.e. PyTorch momentum 1 - 0.8 = 0.2 with a trainable scale.
    model = build_model("resnet", (3, 32, 32), 10)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 1 + 6 + 2  # stem, one per binary unit, two downsampling shortcuts
    for bn in norms:
        assert bn.eps == 1e-3
        assert bn.momentum == pytest.approx(1 - 0.8)
        assert bn.weight.requires_grad and bn.bias.requires_grad


def test_binary_weights_are_pm_one_at_init() -> None:
    for name in MODEL_NAMES:
        shape = (3, 32, 32)
        model = build_model(name, shape, 10, **({"hidden": 16} if name == "mlp" else {}))
        for p in split_parameters(model)[0]:
            assert set(p.unique().tolist()) <= {-1.0, 1.0}
