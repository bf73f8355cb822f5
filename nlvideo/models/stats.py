"""Parameter and FLOP counts of a model, measured on the meta device (no real compute)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device, in eval mode: runs check shapes and count operations
    without computing (or allocating) anything."""
    return copy.deepcopy(model).to("meta").eval()


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass (the "FLOPs" vision papers quote, = FLOPs / 2).

    Runs a copy of the model on the meta device, so a full-size I3D at 32x224^2 costs milliseconds.
    """
    meta_model = meta_copy(model)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model(torch.empty(input_shape, device="meta"))
    return counter.get_total_flops() // 2
