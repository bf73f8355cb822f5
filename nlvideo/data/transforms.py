"""Spatial transforms on decoded clips: uint8 ``(T, H, W, 3)`` -> float32 ``(3, T, H, W)``.

Built from ``torchvision.transforms.v2.functional`` ops (``resize``/``resized_crop``, ``crop``,
``horizontal_flip``) applied to all frames at once, so every frame of a clip gets the same
geometry. Frames stay in the decoder's channels-last memory layout, where torch's uint8 resize is
fastest; normalisation is a fused ``(x - mean) / std`` on the final ``(C, T, H, W)`` view (6-8x
faster here than ``F.normalize`` on channels-last frames followed by a permute). The random
parameters are drawn from the ``random.Random`` passed in (the dataset seeds it per sample),
never from global state.

* train: short side resized to an integer drawn uniformly from ``[min_scale, max_scale]`` (paper:
  [256, 320]), random ``crop x crop`` square (224), horizontal flip with probability 0.5. The crop
  is taken from the source frame and resized once (``resized_crop``): the same as resizing the whole
  frame and then cropping, up to rounding the crop box to source pixels, and several times cheaper.
  Frames decoded at ``max_scale`` (the dataset's default for larger videos) get the same draws as
  the native frames, given the video's ``native_size``; at ``max_scale`` the crop is a plain crop.
* test: short side resized to ``scale``; ``num_crops`` squares of ``crop`` spread along the long
  side (3 crops: left/centre/right for landscape, top/centre/bottom for portrait, as PySlowFast's
  ``uniform_crop``); 1 crop is the centre crop.
* normalisation: ``(x - mean) / std`` on 0-255 pixel values; the paper uses the scalars 114.75 and
  57.375; per-channel (RGB) lists are accepted.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

# Inside the nlvideo package, so nlvideo/__init__ (the torchvision compat shim) has already run.
from torchvision.transforms.v2 import functional as F


def _channels(v: float | Sequence[float]) -> list[float]:
    if isinstance(v, (int, float)):
        return [float(v)] * 3
    v = [float(x) for x in v]
    if len(v) == 1:
        return v * 3
    if len(v) != 3:
        raise ValueError(f"mean/std must be a number or 3 numbers (RGB), got {v}")
    return v


def _to_tchw(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {tuple(x.shape)} {x.dtype}")
    return x.permute(0, 3, 1, 2)


def _finish(x: torch.Tensor, mean: Sequence[float], std: Sequence[float],
            out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (T, C, H, W) -> normalised float32 (C, T, H, W), written into ``out`` when given (the same
    values: the uint8 -> float32 copy is exact, then the same subtraction and division)."""
    m = torch.tensor(_channels(mean), dtype=torch.float32).view(3, 1, 1, 1)
    s = torch.tensor(_channels(std), dtype=torch.float32).view(3, 1, 1, 1)
    x = x.permute(1, 0, 2, 3)
    return (x.float() if out is None else out.copy_(x)).sub_(m).div_(s)


def scaled_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(H, W) after resizing the short side to ``size`` (torchvision's rounding)."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def short_side_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(T, C, H, W)`` so that the short side is ``size`` (aspect ratio kept)."""
    if min(x.shape[-2:]) == size:
        return x
    return F.resize(x, [size], antialias=True)


def train_transform(
    frames: np.ndarray | torch.Tensor,
    rng: random.Random,
    min_scale: int,
    max_scale: int,
    crop_size: int,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    hflip: bool = True,
    native_size: tuple[int, int] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``native_size``: ``(H, W)`` of the video when ``frames`` were decoded smaller (at the largest
    scale, :mod:`nlvideo.data.decode`): scale, crop box and flip are drawn on the native size, exactly
    as for native frames, and the box is then mapped to the decoded pixels. ``out``: a float32
    ``(3, T, crop, crop)`` tensor to write the clip into (the same values; one copy less when several
    clips of a video are stacked)."""
    if not crop_size <= min_scale <= max_scale:
        raise ValueError(
            f"need crop_size <= min_scale <= max_scale, got {crop_size}, {min_scale}, {max_scale}"
        )
    scale = rng.randint(min_scale, max_scale)
    x = _to_tchw(frames)
    src_h, src_w = x.shape[-2:]
    h, w = scaled_size(*(native_size or (src_h, src_w)), scale)
    top = rng.randint(0, h - crop_size)
    left = rng.randint(0, w - crop_size)
    if (h, w) == (src_h, src_w):
        x = F.crop(x, top, left, crop_size, crop_size)
    else:  # the crop box mapped back to source pixels, resized once
        fy, fx = src_h / h, src_w / w
        y0, x0 = round(top * fy), round(left * fx)
        y1, x1 = round((top + crop_size) * fy), round((left + crop_size) * fx)
        box_h, box_w = max(y1 - y0, 1), max(x1 - x0, 1)
        x = F.resized_crop(x, y0, x0, box_h, box_w, [crop_size, crop_size], antialias=True)
    if hflip and rng.random() < 0.5:
        x = F.horizontal_flip(x)
    return _finish(x, mean, std, out)


def crop_offsets(h: int, w: int, crop_size: int, crop_idx: int, num_crops: int) -> tuple[int, int]:
    """(top, left) of crop ``crop_idx`` of ``num_crops`` spread along the long side, centred on the short."""
    if not 0 <= crop_idx < num_crops:
        raise ValueError(f"crop_idx {crop_idx} not in [0, {num_crops})")
    frac = 0.5 if num_crops == 1 else crop_idx / (num_crops - 1)
    if w >= h:
        return (h - crop_size) // 2, int(round((w - crop_size) * frac))
    return int(round((h - crop_size) * frac)), (w - crop_size) // 2


def test_transform(
    frames: np.ndarray | torch.Tensor,
    scale: int,
    crop_size: int,
    crop_idx: int,
    num_crops: int,
    mean: float | Sequence[float],
    std: float | Sequence[float],
) -> torch.Tensor:
    """One test view of a clip: :func:`test_resize`, then :func:`test_crop`."""
    if crop_size > scale:
        raise ValueError(f"test crop size {crop_size} larger than the test scale {scale}")
    return test_crop(test_resize(frames, scale), crop_size, crop_idx, num_crops, mean, std)


def test_resize(frames: np.ndarray | torch.Tensor, scale: int) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> uint8 (T, C, H', W') at short side ``scale``, each frame resized on
    its own (so the frames of several clips can be resized together, once each)."""
    return short_side_resize(_to_tchw(frames), scale)


def test_crop(
    x: torch.Tensor,
    crop_size: int,
    crop_idx: int,
    num_crops: int,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop ``crop_idx`` of ``num_crops`` of resized frames (T, C, H, W), normalised: float32 (C, T,
    crop, crop), written into ``out`` when given."""
    top, left = crop_offsets(x.shape[-2], x.shape[-1], crop_size, crop_idx, num_crops)
    return _finish(F.crop(x, top, left, crop_size, crop_size), mean, std, out)
