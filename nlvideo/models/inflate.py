"""Inflate 2-D ImageNet ResNet weights (torchvision layout) into C2D/I3D video ResNets.

A t x k x k kernel gets the 2-D k x k kernel repeated t times and divided by t (the paper's
inflation), so a static clip (one frame repeated) gives the 2-D network's response away from the
clip's temporal borders, and everywhere for C2D. NL blocks and a head whose class count differs are
left at their fresh initialisation (an NL block is then the identity).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from nlvideo.models.resnet import is_nonlocal_name

log = logging.getLogger(__name__)

_PREFIXES = [  # torchvision name -> nlvideo name
    (re.compile(r"^conv1\."), "stem.conv."),
    (re.compile(r"^bn1\."), "stem.bn."),
    (re.compile(r"^layer([1-4])\."), lambda m: f"res{int(m.group(1)) + 1}."),
    (re.compile(r"^fc\."), "head.fc."),
]


def map_torchvision_key(key: str) -> str | None:
    """``layer2.0.conv1.weight`` -> ``res3.0.conv1.weight``; None for keys with no counterpart."""
    for pattern, repl in _PREFIXES:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return None


def inflate_weight(w2d: torch.Tensor, target_shape: torch.Size) -> torch.Tensor:
    """(O, I, k, k) -> (O, I, t, k, k): repeat over t and divide by t."""
    t = target_shape[2]
    return w2d.unsqueeze(2).repeat(1, 1, t, 1, 1) / t


def inflate_state_dict(model: nn.Module, state_dict_2d: dict[str, torch.Tensor]) -> list[str]:
    """Load a torchvision-layout 2-D ResNet state dict into ``model``; returns the keys left as built.

    Raises ``ValueError`` naming the key when a backbone tensor is missing or its shape cannot match
    (e.g. ResNet-50 weights into a ResNet-101, or a different ``model.width``).
    """
    target = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for key_2d, value in state_dict_2d.items():
        key = map_torchvision_key(key_2d)
        if key is None or key not in target:
            continue
        shape = target[key].shape
        if value.dim() == 4 and len(shape) == 5:
            if value.shape != shape[:2] + shape[3:]:
                raise ValueError(
                    f"inflate: {key_2d} has shape {tuple(value.shape)}, model {key} needs {tuple(shape)}"
                )
            value = inflate_weight(value, shape)
        if value.shape != shape:
            if key.startswith("head.fc."):
                log.info("inflate: %s not loaded (%s vs %s classes)", key, tuple(value.shape), tuple(shape))
                continue
            raise ValueError(
                f"inflate: {key_2d} has shape {tuple(value.shape)}, model {key} needs {tuple(shape)}"
            )
        new[key] = value.to(target[key].dtype)
    missing = [k for k in target if k not in new and not is_nonlocal_name(k) and not k.startswith("head.fc.")]
    if missing:
        raise ValueError(
            f"inflate: the 2-D state dict lacks {len(missing)} backbone tensors, e.g. {missing[:3]}"
        )
    model.load_state_dict(new, strict=False)
    return [k for k in target if k not in new]


def load_pretrained_2d(source: str) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict from a file, or ``torchvision`` for ``ResNet50_Weights``.

    Files may hold the state dict itself or wrap it under ``state_dict``/``model``.
    """
    if source == "torchvision":
        from torchvision.models import ResNet50_Weights, resnet50

        try:
            return resnet50(weights=ResNet50_Weights.IMAGENET1K_V1).state_dict()
        except Exception as exc:  # offline machines: say what to do instead
            raise RuntimeError(
                "model.pretrained=torchvision needs to download ResNet50_Weights; on an offline machine "
                "save a torchvision resnet50 state dict elsewhere and set model.pretrained=/path/to/file.pth"
            ) from exc
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"model.pretrained={source!r}: no such file (expected a torchvision ResNet .pth)"
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    return obj
