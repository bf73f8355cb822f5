import random

import pytest
import torch

from nlvideo.data import transforms as T


def frames(t=4, h=48, w=64):
    x = torch.zeros(t, h, w, 3, dtype=torch.uint8)
    x[:, :, : w // 2] = 200  # left half bright
    return x


def test_train_shapes_dtype_and_range():
    out = T.train_transform(frames(), random.Random(0), 40, 56, 32, 114.75, 57.375)
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.float32
    lo, hi = (0 - 114.75) / 57.375, (255 - 114.75) / 57.375
    assert lo - 1e-4 <= out.min() and out.max() <= hi + 1e-4


def test_train_uses_only_given_rng():
    a = T.train_transform(frames(), random.Random(7), 40, 56, 32, 114.75, 57.375)
    torch.manual_seed(123)
    random.seed(5)
    b = T.train_transform(frames(), random.Random(7), 40, 56, 32, 114.75, 57.375)
    assert torch.equal(a, b)
    outs = {T.train_transform(frames(), random.Random(s), 40, 56, 32, 0, 1).sum().item() for s in range(10)}
    assert len(outs) > 1  # different seeds -> different scale/crop/flip


def test_flip_happens_with_probability_half():
    flips = 0
    for s in range(40):
        out = T.train_transform(frames(h=32, w=32), random.Random(s), 32, 32, 32, 0, 1)  # no scale/crop room
        left, right = out[0, 0, :, :16].mean(), out[0, 0, :, 16:].mean()
        flips += bool(right > left)
    assert 10 < flips < 30


def test_test_crops_left_centre_right():
    x = frames(t=2, h=48, w=96)  # landscape: scaled to 32x64, 3 crops of 32 along the width
    crops = [T.test_transform(x, 32, 32, i, 3, 0, 1) for i in range(3)]
    assert all(c.shape == (3, 2, 32, 32) for c in crops)
    assert crops[0].mean() > 190 and crops[2].mean() < 10  # left crop bright, right crop dark
    assert 90 < crops[1].mean() < 110  # centre crop half/half
    assert T.crop_offsets(32, 64, 32, 0, 1) == (0, 16)
    assert T.crop_offsets(64, 32, 32, 2, 3) == (32, 0)  # portrait: top/centre/bottom


def test_per_channel_normalisation():
    x = torch.full((1, 8, 8, 3), 100, dtype=torch.uint8)
    out = T.test_transform(x, 8, 8, 0, 1, [100, 50, 0], [1, 2, 4])
    assert out[:, 0, 0, 0].tolist() == [0.0, 25.0, 25.0]


def test_errors():
    with pytest.raises(ValueError, match="uint8"):
        T.test_transform(torch.zeros(1, 8, 8, 3), 8, 8, 0, 1, 0, 1)
    with pytest.raises(ValueError, match="larger"):
        T.test_transform(frames(), 32, 40, 0, 1, 0, 1)
    with pytest.raises(ValueError, match="3 numbers"):
        T.test_transform(frames(), 32, 32, 0, 1, [1, 2], 1)


def test_train_crop_matches_resize_then_crop():
    # resized_crop of the mapped box == resizing the whole frame then cropping, up to rounding
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(128.0), indexing="ij")
    img = torch.stack([yy * 2, xx * 1.5, yy + xx], -1).clamp(0, 255).to(torch.uint8)[None].repeat(2, 1, 1, 1)
    for seed in range(6):
        out = T.train_transform(img, random.Random(seed), 100, 130, 64, 0, 1, hflip=False)
        rng = random.Random(seed)
        scale = rng.randint(100, 130)
        h, w = T.scaled_size(96, 128, scale)
        top, left = rng.randint(0, h - 64), rng.randint(0, w - 64)
        ref = T.short_side_resize(img.permute(0, 3, 1, 2), scale)[..., top : top + 64, left : left + 64]
        diff = (out - ref.permute(1, 0, 2, 3).float()).abs()
        assert diff.max() <= 3 and diff.mean() < 1
