"""3-D max-pooling whose backward runs under ``torch.use_deterministic_algorithms(True)`` on every device.

Why: ATen's CUDA ``max_pool3d`` backward adds gradients with atomics, and torch up to at least 2.11
(the CUDA machines' version) refuses it in deterministic mode ("max_pool3d_with_indices_backward_cuda
does not have a deterministic implementation"), so ``trainer.deterministic=true`` could not train on a
GPU. Every 3-D max-pool of the models (pool1, pool2 and the non-local block's sub-sampling) is
:class:`MaxPool3d`, which in deterministic mode takes :class:`_DeterministicMaxPool3d`: ATen's forward
with indices, and a backward that sums the output gradient into the argmax positions with
``scatter_add_``, which torch documents as deterministic on CUDA in this mode (and which is on CPU).
The sum runs over the windows in output order, as ATen's CPU kernel does, so on CPU the gradient is
ATen's to the bit (``tests/test_pooling.py``); that is also why the same path is taken on CPU: the CPU
tests then exercise exactly what a GPU runs.

Outside deterministic mode, while traced or exported, and without a gradient, :class:`MaxPool3d` is
``nn.MaxPool3d`` (same arguments, repr and empty state dict).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable


def deterministic_backward_needed(x: torch.Tensor) -> bool:
    """Whether a max-pool of ``x`` must avoid ATen's backward: deterministic mode, a gradient will be
    recorded, and no tracer or exporter is capturing ATen ops (it would not capture the Function)."""
    return (torch.are_deterministic_algorithms_enabled() and torch.is_grad_enabled() and x.requires_grad
            and not torch.jit.is_tracing() and not torch.compiler.is_exporting())


class MaxPool3d(nn.MaxPool3d):
    """``nn.MaxPool3d`` whose backward is deterministic in deterministic mode (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Batched (B, C, T, H, W) input, as the models pass; an unbatched one keeps ATen's backward.
        if self.return_indices or x.dim() != 5 or not deterministic_backward_needed(x):
            return super().forward(x)
        return _DeterministicMaxPool3d.apply(x, self)


class _DeterministicMaxPool3d(torch.autograd.Function):
    """ATen's 3-D max-pool forward; backward scatter-adds the gradient into the argmax positions.

    Saves only the indices (autograd's max-pool also keeps the input). The input gradient has the
    input's memory format (channels-last-3d or contiguous).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, pool: nn.MaxPool3d) -> torch.Tensor:
        out, idx = F.max_pool3d(x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode,
                                return_indices=True)
        ctx.save_for_backward(idx)
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)
        ctx.input_shape = x.shape
        ctx.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dout: torch.Tensor) -> tuple[torch.Tensor, None]:
        (idx,) = ctx.saved_tensors
        b, c = ctx.input_shape[:2]
        grad = torch.empty(ctx.input_shape, dtype=dout.dtype, device=dout.device,
                           memory_format=ctx.memory_format).zero_()
        # Indices count positions within each (b, c) volume; view, not flatten: the sum must land in grad.
        # Overlapping windows (pool1) send several gradients to one position: hence an add, not a copy.
        grad.view(b, c, -1).scatter_add_(2, idx.flatten(2), dout.flatten(2))
        return grad, None
