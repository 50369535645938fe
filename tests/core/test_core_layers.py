"""Binary layers: +-1 weights, split by layer type, latent mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bnn_core.binarize import ste_sign
from bnn_core.layers import (
    BinaryConv2d,
    BinaryLinear,
    SignActivation,
    binary_layers,
    split_parameters,
    use_latent_weights,
)


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=True),  # real stem with a 4x1x3x3 weight
        BinaryConv2d(4, 4, 3, padding=1),  # same shape class of tensor, but binary
        nn.BatchNorm2d(4),
        SignActivation(),
        nn.Flatten(),
        BinaryLinear(4 * 6 * 6, 8),
        nn.Linear(8, 3),
    )


def test_split_parameters_by_type_not_shape() -> None:
    net = _net()
    binary, real = split_parameters(net)
    assert [id(p) for p in binary] == [id(net[1].weight), id(net[5].weight)]
    expected_real = [net[0].weight, net[0].bias, net[2].weight, net[2].bias]
    expected_real += [net[6].weight, net[6].bias]
    assert [id(p) for p in real] == [id(p) for p in expected_real]
    assert [name for name, _ in binary_layers(net)] == ["1", "5"]


def test_split_skips_frozen_parameters() -> None:
    net = _net()
    net[2].weight.requires_grad_(False)
    _, real = split_parameters(net)
    assert all(p is not net[2].weight for p in real)


def test_binary_layers_use_weights_directly() -> None:
    layer = BinaryLinear(5, 3)
    assert set(layer.weight.unique().tolist()) <= {-1.0, 1.0}
    x = torch.randn(2, 5)
    torch.testing.assert_close(layer(x), x @ layer.weight.T)
    conv = BinaryConv2d(2, 3, 3, padding=1)
    xc = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(conv(xc), F.conv2d(xc, conv.weight, padding=1))


def test_latent_mode_uses_ste_sign_of_weights() -> None:
    layer = BinaryLinear(6, 4)
    use_latent_weights(layer, init_scale=1e-3)
    assert layer.latent
    assert layer.weight.abs().max() <= 1e-3
    assert len(layer.weight.unique()) > 2  # real-valued latent weights
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), x @ ste_sign(layer.weight).T)
    layer(x).sum().backward()
    # STE: gradient of the latent weight equals the gradient w.r.t. the binary weight (|w| <= 1)
    torch.testing.assert_close(layer.weight.grad, torch.ones(4, 1) @ x.sum(0, keepdim=True))


def test_latent_glorot_bound() -> None:
    conv = BinaryConv2d(8, 16, 3)
    use_latent_weights(conv)
    bound = (6.0 / (8 * 9 + 16 * 9)) ** 0.5
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > bound / 2


def test_latent_weights_beyond_one_get_no_gradient() -> None:
    # ste_sign on the latent weight (Courbariaux / larq): the STE is clipped at |w| = 1.
    layer = BinaryLinear(3, 2)
    use_latent_weights(layer)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.5, -1.0, 0.2], [-2.0, 1.0, -0.7]]))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    out = layer(x)
    torch.testing.assert_close(out, torch.tensor([[1.0 - 2.0 + 3.0, -1.0 + 2.0 - 3.0]]))
    out.sum().backward()
    expected = torch.tensor([[0.0, 2.0, 3.0], [0.0, 2.0, 3.0]])  # |w| <= 1 passes x through
    torch.testing.assert_close(layer.weight.grad, expected)
