"""Frame indices of a clip: ``num_frames`` frames taken every ``stride`` frames.

In the paper's terms a clip is ``num_frames x sampling_rate`` (8x8, 32x2). ``stride`` is in the
video's own frames; with ``data.target_fps`` set it is ``sampling_rate * video_fps / target_fps``
(a float: frames are sampled at the target rate in *time* whatever the video's fps), otherwise
exactly ``sampling_rate``.

* Training: one clip whose start frame is uniform over all positions where it fits.
* Testing: ``num_clips`` clips with starts spread uniformly from the first possible start (clip 0)
  to the last (clip ``num_clips - 1``); a single clip is centred.

Short videos are **clamped**, as in PySlowFast: when the clip is longer than the video it starts
at frame 0 and indices past the end repeat the last frame. Indices are always sorted and in
``[0, num_video_frames - 1]``.

The views of one test video are decoded together (:func:`union_indices`): each frame that any of its
clips needs once, then every clip gathered from those frames.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def frame_stride(
    sampling_rate: int, video_fps: float | None = None, target_fps: float | None = None
) -> float:
    """Stride in source frames: ``sampling_rate`` at the target fps converted to the video's fps."""
    if target_fps is None or not video_fps or not math.isfinite(video_fps) or video_fps <= 0:
        return float(sampling_rate)
    return sampling_rate * video_fps / target_fps


def clip_span(num_frames: int, stride: float) -> float:
    """Source frames covered from the first to the last sampled frame, inclusive."""
    return (num_frames - 1) * stride + 1


def _round(x: float) -> int:
    """Round half up (not Python's half-to-even), so indices are easy to predict."""
    return int(math.floor(x + 0.5))


def _indices(start: float, num_frames: int, stride: float, num_video_frames: int) -> list[int]:
    last = num_video_frames - 1
    return [min(_round(start + j * stride), last) for j in range(num_frames)]


def max_start(num_video_frames: int, num_frames: int, stride: float) -> int:
    """Last start frame at which the whole clip fits (0 when the video is too short)."""
    return max(int(math.floor(num_video_frames - clip_span(num_frames, stride))), 0)


def train_clip_indices(
    num_video_frames: int, num_frames: int, stride: float, rng: random.Random
) -> list[int]:
    """One random clip: start uniform over ``0 .. max_start`` (inclusive)."""
    if num_video_frames < 1:
        raise ValueError("video has no frames")
    start = rng.randint(0, max_start(num_video_frames, num_frames, stride))
    return _indices(start, num_frames, stride, num_video_frames)


def test_clip_indices(
    num_video_frames: int, num_frames: int, stride: float, clip_idx: int, num_clips: int
) -> list[int]:
    """Clip ``clip_idx`` of ``num_clips`` uniformly spaced clips (first starts at 0, last ends at the end)."""
    if num_video_frames < 1:
        raise ValueError("video has no frames")
    if not 0 <= clip_idx < num_clips:
        raise ValueError(f"clip_idx {clip_idx} not in [0, {num_clips})")
    delta = max_start(num_video_frames, num_frames, stride)
    start = delta / 2 if num_clips == 1 else delta * clip_idx / (num_clips - 1)
    return _indices(_round(start), num_frames, stride, num_video_frames)


def union_indices(clips: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """The frames of several clips, each once: their sorted distinct indices, and every clip as positions
    in that list (``union[pos[j]] == clip[j]``; a repeated index, as a clamped clip has, repeats its
    position)."""
    union = sorted({int(i) for clip in clips for i in clip})
    where = {i: k for k, i in enumerate(union)}
    return union, [[where[int(i)] for i in clip] for clip in clips]
