"""2-D ImageNet ResNets for C2D/I3D: the paper's kernel inflation and torchvision's weights.

A t x k x k kernel gets the 2-D k x k kernel repeated t times and divided by t (the paper's
inflation), so a static clip (one frame repeated) gives the 2-D network's response away from the
clip's temporal borders, and everywhere for C2D. :mod:`nlvideo.models.pretrained` applies it to
every 2-D kernel of a checkpoint loaded into a 3-D model (torchvision ResNets, Caffe2 ImageNet
pickles); :func:`nlvideo.models.pretrained.inflate_state_dict` loads a torchvision state dict.
"""

from __future__ import annotations

import torch


def inflate_weight(w2d: torch.Tensor, target_shape: torch.Size) -> torch.Tensor:
    """(O, I, k, k) -> (O, I, t, k, k): repeat over t and divide by t."""
    t = target_shape[2]
    return w2d.unsqueeze(2).repeat(1, 1, t, 1, 1) / t


def torchvision_resnet_state_dict(depth: int) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet-50/101 (``IMAGENET1K_V1``) weights, downloaded on first use."""
    from torchvision import models

    if depth not in (50, 101):
        raise ValueError(f"model.pretrained=torchvision: no torchvision ResNet for model.depth={depth}")
    weights = getattr(models, f"ResNet{depth}_Weights").IMAGENET1K_V1
    try:
        return getattr(models, f"resnet{depth}")(weights=weights).state_dict()
    except Exception as exc:  # offline machines: say what to do instead
        raise RuntimeError(
            f"model.pretrained=torchvision needs to download ResNet{depth}_Weights; on an offline "
            f"machine save a torchvision resnet{depth} state dict elsewhere and set "
            "model.pretrained=/path/to/file.pth"
        ) from exc
