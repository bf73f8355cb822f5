"""Batch norm over groups of a fixed number of clips, whatever the batch size (multigrid training).

Multigrid training changes the clips per step (up to 16x the target batch with the default schedule,
:mod:`nlvideo.engine.plan`); batch statistics over 16x more clips would normalise differently from
those the model is validated with. The paper's rule (PySlowFast's ``sub_batchnorm``,
``MULTIGRID.BN_BASE_SIZE``): each group of ``base_size`` clips of a training batch is normalised by its
own statistics. :class:`SplitBatchNorm3d` is a :class:`torch.nn.BatchNorm3d` with the same parameters and
buffers (same state-dict keys, so checkpoints load into the plain model for eval.py and predict.py);
its running statistics are those of the whole batch, as a plain BN's would be, and in eval mode it is a
plain BN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d whose training statistics are per group of ``base_size`` clips (a last group of
    fewer joins the one before it)."""

    def __init__(self, num_features: int, base_size: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.base_size = int(base_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not self.training or n < 2 * self.base_size:
            return super().forward(x)
        groups, rest = divmod(n, self.base_size)
        sizes = [self.base_size] * groups
        sizes[-1] += rest
        out = torch.cat([F.batch_norm(part, None, None, self.weight, self.bias, True, 0.0, self.eps)
                         for part in x.split(sizes)])
        if self.track_running_stats:
            self._update_running_stats(x)
        return out

    @torch.no_grad()
    def _update_running_stats(self, x: torch.Tensor) -> None:
        """The running mean and unbiased variance of the whole batch, with BatchNorm's momentum (None: a
        cumulative average, as precise BN uses)."""
        self.num_batches_tracked += 1
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x.float(), dim=dims, correction=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(var.to(self.running_var.dtype), momentum)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base_size={self.base_size}"


def split_batch_norm(module: nn.Module, base_size: int) -> nn.Module:
    """``module`` with every :class:`~torch.nn.BatchNorm3d` replaced by a :class:`SplitBatchNorm3d`
    holding the same parameters and buffers (in place for children; returns the possibly new root)."""
    if type(module) is nn.BatchNorm3d:
        new = SplitBatchNorm3d(module.num_features, base_size, eps=module.eps, momentum=module.momentum,
                               affine=module.affine, track_running_stats=module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new.to(next(module.buffers()).device)
    for name, child in module.named_children():
        setattr(module, name, split_batch_norm(child, base_size))
    return module
