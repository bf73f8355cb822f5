"""Hydra entry point: ``_target_: nlvideo.models.build_video_resnet`` in every model config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nlvideo.models.pretrained import Checkpoint, adapt_spec, load_weights, read_checkpoint
from nlvideo.models.resnet import VideoResNet
from nlvideo.models.spec import ConfigError, ModelSpec, make_spec


def build_video_resnet(**cfg: Any) -> VideoResNet:
    """Build a C2D/I3D ResNet from a model config's keys (validated by :func:`make_spec`), with the
    weights of ``pretrained`` when set (:mod:`nlvideo.models.pretrained`).

    A plain ``**cfg`` rather than named parameters because the config key ``nonlocal`` is a Python
    keyword; :func:`make_spec` rejects unknown keys by name instead. The checkpoint is read before the
    model is built because its format decides options (NL pooling, pool1 padding) of the model.
    """
    spec = make_spec(**cfg)
    if not spec.pretrained:
        return VideoResNet(spec)
    return build_pretrained(spec, read_checkpoint(spec.pretrained, spec.depth))


def build_pretrained(spec: ModelSpec, ckpt: Checkpoint, complete: bool = False) -> VideoResNet:
    """The model of ``spec`` with the options ``ckpt``'s weights need (:func:`adapt_spec`), loaded with
    them by :func:`~nlvideo.models.pretrained.load_weights` (``complete``: every tensor from the file):
    for callers that have read the file already (a published file can be hundreds of MiB)."""
    model = VideoResNet(adapt_spec(spec, ckpt))
    load_weights(model, ckpt, complete)
    return model


def model_of_checkpoint(ckpt: Checkpoint, model_cfg: Mapping[str, Any] | None = None) -> VideoResNet:
    """The model a ``train.py`` checkpoint holds, in eval mode: built from the model config it stores
    (or ``model_cfg``, e.g. with a command's overrides) with every one of its tensors; a config that does
    not fit the weights is a one-line :class:`ConfigError` naming what differs."""
    config = ckpt.saved.get("config")
    if model_cfg is None and not (isinstance(config, Mapping) and isinstance(config.get("model"), Mapping)):
        raise ConfigError(f"{ckpt.where} has no model config: not a checkpoint written by train.py")
    cfg = dict(model_cfg if model_cfg is not None else config["model"])
    # Its weights are all in the file: whatever model.pretrained the run started from is not needed.
    return build_pretrained(make_spec(**{**cfg, "pretrained": None}), ckpt, complete=True).eval()


def to_channels_last_3d(model: nn.Module) -> nn.Module:
    """The trainer's ``trainer.channels_last`` layout: every Conv3d weight in channels_last_3d.

    Not ``model.to(memory_format=torch.channels_last_3d)``: that fails on the concatenation block's
    4-D w_f (a Conv2d, as in the seed), and the Conv3d weights are all it would convert.
    """
    return torch.nn.utils.convert_conv3d_weight_memory_format(model, torch.channels_last_3d)
