"""nlvideo.models.aten_ops, the private ATen kernels of the non-local block's CPU path, against the
public API: a PyTorch release that changes one of their signatures or behaviours fails here, naming
the op and the torch version, instead of as a wrong gradient somewhere in training."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nlvideo.models import aten_ops

F64 = torch.float64


@contextmanager
def private_op(name: str) -> Iterator[None]:
    """Turn any failure inside into one that names the private op and the installed torch."""
    try:
        yield
    except Exception as e:  # a changed signature: TypeError/RuntimeError; a changed result: AssertionError
        pytest.fail(
            f"{name} no longer does what nlvideo/models/aten_ops.py expects under torch "
            f"{torch.__version__}; update its wrapper there.\n{type(e).__name__}: {e}",
            pytrace=False,
        )


def bn_input(layout: str) -> torch.Tensor:
    """The two views the fused BN passes: (B, C, N) contiguous, or (B, C, N, 1) channels-last."""
    torch.manual_seed(0)
    t = torch.randn(2, 5, 3, dtype=F64) * 2 + 1  # (B, N, C) position-major storage
    if layout == "channels_last":
        return t.transpose(1, 2)[..., None]
    return t.transpose(1, 2).contiguous()


def bn_params() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight, bias, running_mean, running_var of 3 channels."""
    return (
        torch.rand(3, dtype=F64) + 0.5,
        torch.randn(3, dtype=F64),
        torch.randn(3, dtype=F64) * 0.1,
        torch.rand(3, dtype=F64) + 0.5,
    )


def test_only_aten_ops_calls_private_torch_functions():
    """The one place: nonlocal_block.py reaches private ATen kernels through aten_ops only."""
    src = (Path(aten_ops.__file__).parent / "nonlocal_block.py").read_text()
    assert not re.findall(r"torch\._[a-z]\w*|torch\.ops\.|torch\.native_\w*", src)


def test_softmax_backward_matches_autograd_of_softmax():
    with private_op("torch._softmax_backward_data"):
        torch.manual_seed(0)
        logits = torch.randn(4, 6, dtype=F64, requires_grad=True)
        probs = torch.softmax(logits, dim=1)
        grad = torch.randn(4, 6, dtype=F64)
        (expected,) = torch.autograd.grad(probs, logits, grad)
        got = aten_ops.softmax_backward(grad, probs.detach(), 1)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        p = probs.detach()
        torch.testing.assert_close(got, p * (grad - (grad * p).sum(1, keepdim=True)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_forward_matches_F_batch_norm_and_updates_running_stats_alike(layout, training):
    x = bn_input(layout)
    weight, bias, rm, rv = bn_params()
    rm_ref, rv_ref = rm.clone(), rv.clone()
    with private_op("torch.native_batch_norm"):
        out, save_mean, save_invstd = aten_ops.batch_norm_forward(
            x, weight, bias, rm, rv, training, 0.1, 1e-5
        )
        expected = F.batch_norm(x, rm_ref, rv_ref, weight, bias, training, 0.1, 1e-5)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rm, rm_ref, rtol=1e-12, atol=1e-12)  # updated (training) or not (eval)
        torch.testing.assert_close(rv, rv_ref, rtol=1e-12, atol=1e-12)
        if training:
            dims = [d for d in range(x.dim()) if d != 1]
            torch.testing.assert_close(save_mean, x.mean(dims), rtol=1e-12, atol=1e-12)
            var = x.var(dims, unbiased=False)
            torch.testing.assert_close(save_invstd, (var + 1e-5).rsqrt(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_backward_matches_autograd_of_F_batch_norm(layout, training):
    x = bn_input(layout)
    weight, bias, rm, rv = bn_params()
    grad_out = torch.randn_like(x)
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    out = F.batch_norm(leaves[0], rm.clone(), rv.clone(), leaves[1], leaves[2], training, 0.1, 1e-5)
    expected = torch.autograd.grad(out, leaves, grad_out)
    with private_op("torch.ops.aten.native_batch_norm_backward"):
        _, save_mean, save_invstd = aten_ops.batch_norm_forward(
            x, weight, bias, rm.clone(), rv.clone(), training, 0.1, 1e-5
        )
        stats = (None, None, save_mean, save_invstd) if training else (rm, rv, None, None)
        got = aten_ops.batch_norm_backward(grad_out, x, weight, *stats, training, 1e-5)
        for name, g, e in zip(("grad_x", "grad_weight", "grad_bias"), got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=name)
