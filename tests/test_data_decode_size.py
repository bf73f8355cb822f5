"""Frames scaled as they are decoded: the size and aspect, the same frames and pixels as decoding at full
size and resizing afterwards (``ClipSpec.scale_on_decode=False``), for both readers."""

import dataclasses
import random

import numpy as np
import pytest
import torch

from nlvideo.data import clip_spec, open_video, read_clip
from nlvideo.data.decode import DecordVideo
from nlvideo.data.transforms import scaled_size
from tests.conftest import decoded_frame_ids
from tests.hostile import encode, irregular_pts_ms
from tests.test_data_dataset import kinetics_cfg


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_scaled_frames_keep_the_aspect_ratio(tmp_path, make_video, decoder):
    landscape = make_video(tmp_path / "wide.mp4", num_frames=8, width=160, height=90)
    portrait = make_video(tmp_path / "tall.mp4", num_frames=8, width=90, height=160)
    near = make_video(tmp_path / "near.mp4", num_frames=8, width=64, height=48)
    for path, native in ((landscape, (90, 160)), (portrait, (160, 90))):
        video = open_video(str(path), decoder, short_side=40)
        frames = video.get_batch([0, 3, 7])
        assert video.native_size == native and video.size == scaled_size(*native, 40)
        assert frames.shape == (3, *scaled_size(*native, 40), 3) and min(frames.shape[1:3]) == 40
    video = open_video(str(near), decoder, short_side=40)  # 1.4x the pixels of (40, 53): kept
    assert video.size == video.native_size == (48, 64) and video.get_batch([0]).shape == (1, 48, 64, 3)


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_scaled_clips_hold_the_same_frames_and_pixels(tmp_path, make_video, decoder):
    """Training (random scale in [32, 40], crop, flip) and 3x3 test views of a 128x96 index-coded video:
    the frames decoded at short side 40 (or 32) give the clip of full-size decoding, frame for frame, and
    the test views pixel for pixel."""
    path = str(make_video(tmp_path / "v.mp4", num_frames=60, width=128, height=96))
    cfg = kinetics_cfg(tmp_path, num_frames=8, sampling_rate=3, decoder=decoder)
    for split, views in (("train", range(6)), ("test", range(9))):
        scaled = clip_spec(cfg, split)
        full = dataclasses.replace(scaled, scale_on_decode=False)
        for view in views:
            new, new_idx, _ = read_clip(scaled, path, view, random.Random(view))
            old, old_idx, _ = read_clip(full, path, view, random.Random(view))
            assert new_idx == old_idx and new.shape == old.shape
            assert decoded_frame_ids(new) == decoded_frame_ids(old) == new_idx
            if split == "test":  # the same resize, frame by frame instead of clip by clip
                assert torch.equal(new, old)
            else:  # resampled twice (decoded at 40, then cropped at the drawn scale): 0-255 levels
                assert (new - old).abs().mean() * 57.375 < 1.0


def test_variable_frame_rate_scaled_frames_are_decords_own(tmp_path):
    """Scaled frames are decoded by PyAV and matched to decord's index by time: with irregular frame
    times starting at 0.5 s, frame i is still the frame decord returns as i (PyAV's own indexing, time
    x average rate, would give others)."""
    times = [500 + t for t in irregular_pts_ms(40)]
    path = str(encode(tmp_path / "vfr.mp4", num_frames=40, width=96, height=64, pts_ms=times))
    indices = [0, 5, 6, 17, 17, 30, 39]
    scaled, native = DecordVideo(path, short_side=32), DecordVideo(path)
    assert scaled.size == (32, 48) and native.size == (64, 96)

    def ids(frames: np.ndarray) -> list[int]:
        return [round(v / 3) for v in frames[:, frames.shape[1] // 2 :].mean(axis=(1, 2, 3))]

    assert ids(scaled.get_batch(indices)) == ids(native.get_batch(indices)) == indices
    again = [torch.from_numpy(scaled.get_batch([39, 2])) for _ in range(2)]  # seeking back, reusing PyAV
    assert torch.equal(*again) and ids(again[0].numpy()) == [39, 2]
