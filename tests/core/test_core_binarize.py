"""ste_sign / approx_sign against numpy references (larq quantizers)."""

from __future__ import annotations

import numpy as np
import torch

from bnn_core.binarize import approx_sign, sign, ste_sign

X = np.array([-2.0, -1.0, -0.75, -0.5, -1e-3, 0.0, 1e-3, 0.3, 0.999, 1.0, 1.5], dtype=np.float32)


def _np_sign(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


def _grad(fn, x: np.ndarray, upstream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = torch.tensor(x, requires_grad=True)
    y = fn(t)
    y.backward(torch.tensor(upstream))
    return y.detach().numpy(), t.grad.numpy()


def test_sign_maps_zero_to_plus_one() -> None:
    out = sign(torch.tensor([-3.0, -0.0, 0.0, 2.0]))
    assert out.tolist() == [-1.0, 1.0, 1.0, 1.0]


def test_ste_sign_forward_and_gradient() -> None:
    upstream = np.linspace(0.5, 1.5, X.size).astype(np.float32)
    y, g = _grad(ste_sign, X, upstream)
    np.testing.assert_array_equal(y, _np_sign(X))
    np.testing.assert_allclose(g, upstream * (np.abs(X) <= 1), rtol=1e-6)


def test_approx_sign_forward_and_gradient() -> None:
    upstream = np.linspace(-1.0, 2.0, X.size).astype(np.float32)
    y, g = _grad(approx_sign, X, upstream)
    np.testing.assert_array_equal(y, _np_sign(X))
    expected = upstream * (2 - 2 * np.abs(X)) * (np.abs(X) <= 1)
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6)


def test_quantizers_keep_dtype() -> None:
    x = torch.randn(7, dtype=torch.bfloat16)
    assert ste_sign(x).dtype == torch.bfloat16
    assert approx_sign(x).dtype == torch.bfloat16
