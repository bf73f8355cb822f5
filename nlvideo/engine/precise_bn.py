"""Precise BatchNorm statistics (as in the reference Caffe2 code and PySlowFast).

During training the BN running mean/var are exponential averages over weights that kept changing.
Before validation we recompute them with the current weights: reset the buffers, switch every BN
layer to a cumulative average (``momentum=None``), forward ``num_batches`` training batches in train
mode without gradients, then restore the momenta. Under DDP each rank averages its own batches and
the buffers are then averaged over ranks, so every rank ends with the same statistics.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

from nlvideo.engine import distributed as du

log = logging.getLogger(__name__)


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterable, num_batches: int,
                    forward: Callable[[nn.Module, object], object] | None = None) -> int:
    """Recompute BN running statistics over up to ``num_batches`` items of ``batches``.

    ``forward(model, batch)`` runs the model on one batch (default: ``model(batch)``). Returns the
    number of batches used; with none, the previous statistics are kept.
    """
    layers = bn_layers(model)
    if not layers or num_batches <= 0:
        return 0
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in layers]
    was_training = model.training
    model.train()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the batches seen
    used = 0
    for batch in itertools.islice(batches, num_batches):
        (forward or (lambda mod, b: mod(b)))(model, batch)
        used += 1
    for m, (momentum, mean, var, tracked) in zip(layers, saved, strict=True):
        m.momentum = momentum
        if used == 0:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)
        elif du.get_world_size() > 1:
            m.running_mean.copy_(du.all_reduce_mean(m.running_mean))
            m.running_var.copy_(du.all_reduce_mean(m.running_var))
    model.train(was_training)
    used_all = int(du.all_reduce_sum(torch.tensor([used])).item())
    if used_all == 0:
        log.warning("precise BN: no batches available, keeping the running statistics")
    return used
