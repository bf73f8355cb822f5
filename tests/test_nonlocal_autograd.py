"""The cpu_chunked path's custom autograd Functions: float64 gradcheck, and no silent double backward.

Each Function takes and returns (B, N, K) matrices stored position-major (``pm``, as for a
channels-last input) or as transposed views of (B, K, N) storage (a contiguous input); both layouts
are checked. Shapes are tiny: gradcheck evaluates the forward twice per input element.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from nlvideo.models import nonlocal_block as nl

F64 = torch.float64


def matrix(b: int, n: int, k: int, pm: bool) -> torch.Tensor:
    """A leaf (B, N, K) float64 matrix in the storage layout the Functions get for ``pm``."""
    t = torch.randn(b, n, k, dtype=F64) if pm else torch.randn(b, k, n, dtype=F64).transpose(1, 2)
    return t.requires_grad_()


def check_once_differentiable(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> None:
    """Differentiating the Function's backward must raise, not return a wrong second derivative."""
    (grad,) = torch.autograd.grad(fn(*inputs).square().sum(), inputs[0], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


@pytest.mark.parametrize("pm", [False, True])
@pytest.mark.parametrize("scale", [None, 0.7])
def test_chunked_softmax_attention_gradcheck(pm, scale, monkeypatch):
    monkeypatch.setattr(nl, "_chunk_rows", lambda n, m, itemsize: 2)  # 5 queries: chunks of 2, 2, 1
    torch.manual_seed(0)
    inputs = (matrix(2, 5, 3, pm), matrix(2, 4, 3, pm), matrix(2, 4, 2, pm))  # theta, phi, g

    def fn(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return nl._ChunkedSoftmaxAttention.apply(theta, phi, g, scale, pm)

    assert torch.autograd.gradcheck(fn, inputs)
    check_once_differentiable(fn, inputs)


@pytest.mark.parametrize(
    ("spatial", "pm"), [((6,), False), ((4, 4), False), ((4, 4), True), ((2, 4, 4), False), ((2, 4, 4), True)]
)
def test_lean_max_pool_gradcheck(spatial, pm):
    torch.manual_seed(0)  # continuous random values: no ties within a window, so max is differentiable
    pool = nl._POOL[len(spatial)]()
    n = 1
    for s in spatial:
        n *= s
    t = matrix(2, n, 3, pm)

    def fn(t: torch.Tensor) -> torch.Tensor:
        return nl._MaxPoolLean.apply(t, spatial, pool, pm)

    assert torch.autograd.gradcheck(fn, (t,))
    check_once_differentiable(fn, (t,))


@pytest.mark.parametrize("pm", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_lean_bn_residual_gradcheck(pm, training, with_bias):
    torch.manual_seed(0)
    c, ci = 3, 2
    bn = nn.BatchNorm3d(c).double().train(training)
    bn.running_mean.normal_(std=0.1)
    bn.running_var.uniform_(0.5, 1.5)
    y, xm = matrix(2, 6, ci, pm), matrix(2, 6, c, pm)
    w = torch.randn(c, ci, dtype=F64, requires_grad=True)
    gamma, beta = (torch.randn(c, dtype=F64, requires_grad=True) for _ in range(2))
    bias = torch.randn(c, dtype=F64, requires_grad=True) if with_bias else None
    inputs = (y, w, gamma, beta, xm, *([bias] if with_bias else []))

    def fn(
        y: torch.Tensor,
        w: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        xm: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Training mode updates the running statistics on every call; the output does not read them.
        return nl._LeanBNResidual.apply(y, w, bias, gamma, beta, xm, bn, pm)

    assert torch.autograd.gradcheck(fn, inputs)
    check_once_differentiable(fn, inputs)
