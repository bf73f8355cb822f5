"""The private ATen kernels the non-local block's CPU path calls, behind thin typed wrappers.

The custom autograd Functions in :mod:`nlvideo.models.nonlocal_block` run their own backward, so
they cannot use autograd to differentiate softmax or batch norm; the public API has no call that
returns what they need:

- :func:`softmax_backward`: the gradient of a softmax from its output alone (the chunked
  attention recomputes the probabilities in backward). The public equivalent
  ``p * (dp - (dp * p).sum(dim, keepdim=True))`` allocates two more (n_c x M) temporaries and
  rounds differently from the naive path, whose autograd uses this very kernel.
- :func:`batch_norm_forward`: ``F.batch_norm`` returns the normalised output only, not the batch
  mean and inverse std that the backward kernel takes; this returns them and updates the running
  statistics in place exactly as ``nn.BatchNorm`` does (it is the kernel ``F.batch_norm`` calls).
- :func:`batch_norm_backward`: input, scale and shift gradients in one pass from the saved
  statistics, with fast channels-last kernels, without recording a graph.

These signatures are not a stable API and may change with a PyTorch release. Every use goes
through this module, and ``tests/test_nonlocal_aten_ops.py`` checks each wrapper against a
public-API computation, naming the op and the torch version when one no longer matches.
"""

from __future__ import annotations

import torch


def softmax_backward(grad: torch.Tensor, probs: torch.Tensor, dim: int) -> torch.Tensor:
    """d loss / d logits of ``probs = softmax(logits, dim)`` given ``grad`` = d loss / d probs."""
    return torch._softmax_backward_data(grad, probs, dim, probs.dtype)


def batch_norm_forward(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch norm of a (B, C, ...) tensor: ``(out, save_mean, save_invstd)``.

    In training mode the statistics are the batch's (biased variance for normalising), and the
    running ones, when given, are updated in place with ``momentum`` and the unbiased variance;
    ``save_mean``/``save_invstd`` are what :func:`batch_norm_backward` takes. In eval mode the
    running statistics normalise and the saved ones are empty.
    """
    return torch.native_batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps)


def batch_norm_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    save_mean: torch.Tensor | None,
    save_invstd: torch.Tensor | None,
    training: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_weight, grad_bias)`` of :func:`batch_norm_forward`'s output.

    Training mode takes the batch's ``save_mean``/``save_invstd`` (the running statistics may be
    None); eval mode takes the running statistics the forward normalised with (the saved ones None).
    """
    return torch.ops.aten.native_batch_norm_backward(
        grad_out, x, weight, running_mean, running_var, save_mean, save_invstd, training, eps, [True] * 3
    )
