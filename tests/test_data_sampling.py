import random

import pytest

from nlvideo.data import sampling
from nlvideo.data.sampling import clip_span, frame_stride, max_start, train_clip_indices

eval_indices = sampling.test_clip_indices  # (a name pytest does not collect)


def test_train_indices_exact():
    # 8x8 on 100 frames: span 57, starts 0..43 drawn as the rng's first randint
    for seed in range(5):
        start = random.Random(seed).randint(0, 43)
        assert train_clip_indices(100, 8, 8, random.Random(seed)) == [start + 8 * j for j in range(8)]


def test_train_start_covers_full_range():
    starts = {train_clip_indices(70, 32, 2, random.Random(s))[0] for s in range(300)}
    assert starts == set(range(0, 8))  # 70 - 63 = 7 is the last start that fits


def test_test_indices_exact():
    # 10 clips over 100 frames, 8x8: last possible start 43, starts round_half_up(43 k / 9)
    starts = [eval_indices(100, 8, 8, k, 10)[0] for k in range(10)]
    assert starts == [0, 5, 10, 14, 19, 24, 29, 33, 38, 43]
    assert eval_indices(100, 8, 8, 9, 10) == list(range(43, 100, 8))
    assert eval_indices(100, 8, 8, 0, 1) == [22 + 8 * j for j in range(8)]  # centred: 43/2 -> 22


def test_short_video_is_clamped():
    assert eval_indices(30, 8, 8, 0, 1) == [0, 8, 16, 24, 29, 29, 29, 29]
    assert train_clip_indices(30, 8, 8, random.Random(0)) == [0, 8, 16, 24, 29, 29, 29, 29]
    assert eval_indices(1, 4, 2, 2, 3) == [0, 0, 0, 0]


def test_target_fps_stride():
    assert frame_stride(2, video_fps=60, target_fps=30) == 4
    assert frame_stride(8, video_fps=25, target_fps=None) == 8
    stride = frame_stride(8, video_fps=25, target_fps=30)  # 6.667 source frames per sample
    assert eval_indices(200, 4, stride, 0, 2) == [0, 7, 13, 20]
    assert clip_span(4, stride) == pytest.approx(21.0)
    assert max_start(200, 4, stride) == 179


def test_invalid():
    with pytest.raises(ValueError):
        eval_indices(100, 8, 8, 3, 3)
    with pytest.raises(ValueError):
        train_clip_indices(0, 8, 8, random.Random(0))
