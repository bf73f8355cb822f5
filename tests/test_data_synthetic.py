"""The built-in dataset: deterministic, atomic/concurrent generation, and the class factors."""

import json
import multiprocessing
import os

import numpy as np
import pytest

from nlvideo.data import open_video
from nlvideo.data.synthetic import CLASS_NAMES, PALETTE, ensure_synthetic, render_video

TINY = dict(seed=3, train_per_class=1, val_per_class=0, num_frames=24, size=48, fps=12)


def test_render_is_deterministic_and_seed_dependent():
    a, fa = render_video(5, seed=1, num_frames=16, size=48)
    b, fb = render_video(5, seed=1, num_frames=16, size=48)
    c, _ = render_video(5, seed=2, num_frames=16, size=48)
    assert a.dtype == np.uint8 and a.shape == (16, 48, 48, 3)
    assert np.array_equal(a, b) and fa == fb and not np.array_equal(a, c)


@pytest.mark.parametrize("label", range(8))
def test_factors_match_class(label):
    colour, place, movers = CLASS_NAMES[label].split("_")
    for seed in range(6):
        _, f = render_video(label, seed=seed, num_frames=72, size=80)
        assert (f["colour"], f["place"], f["movers"]) == (colour, place, movers)
        assert (f["cue_colour"] == f["probe_colour"]) == (colour == "samecolour")
        assert (f["cue_quadrant"] == f["probe_quadrant"]) == (place == "sameplace")
        if place == "farplace":
            assert f["cue_quadrant"] + f["probe_quadrant"] == 3  # diagonal
        assert f["cue_frames"] == [0, 28] and f["probe_frames"] == [44, 72]


def test_decoded_video_shows_cue_then_probe(synthetic_root):
    meta = json.loads((synthetic_root / "meta.json").read_text())
    f = meta["videos"]["train_00006"]["factors"]  # class 6: newcolour_farplace_parallel
    video = open_video(str(synthetic_root / "videos" / "train_00006.mp4"))
    assert (video.num_frames, video.fps) == (72, 24.0)
    frames = video.get_batch([10, 36, 60]).astype(np.float32)
    centres = [(25, 25), (25, 55), (55, 25), (55, 55)]

    def colour_at(frame, quadrant):
        y, x = centres[quadrant]
        return frame[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).mean(0)

    assert np.abs(colour_at(frames[0], f["cue_quadrant"]) - PALETTE[f["cue_colour"]]).max() < 40
    assert np.abs(colour_at(frames[2], f["probe_quadrant"]) - PALETTE[f["probe_colour"]]).max() < 40
    assert np.abs(colour_at(frames[1], f["cue_quadrant"]) - PALETTE[f["cue_colour"]]).max() > 60  # gap


def _generate(root, queue):
    try:
        ensure_synthetic(root, workers=1, **TINY)
        queue.put(json.loads((root / "meta.json").read_text())["params"])
    except Exception as e:  # pragma: no cover - reported to the parent
        queue.put(repr(e))


@pytest.mark.slow
def test_concurrent_generation_is_atomic(tmp_path):
    root = tmp_path / "syn"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_generate, args=(root, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [TINY, TINY]
    assert sorted(os.listdir(tmp_path)) == [".syn.lock", "syn"]  # no temporary folder left behind
    assert len(os.listdir(root / "videos")) == 8
    assert (root / "train.csv").read_text().splitlines()[:2] == [
        "videos/train_00000.mp4 0",
        "videos/train_00001.mp4 1",
    ]


def test_existing_root_with_other_params_is_an_error(tmp_path):
    root = ensure_synthetic(tmp_path / "syn", workers=1, **TINY)
    ensure_synthetic(root, workers=1, **TINY)  # found, nothing to do
    with pytest.raises(ValueError, match="delete that folder or point data.root elsewhere"):
        ensure_synthetic(root, workers=1, **{**TINY, "seed": 4})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("not a dataset")
    with pytest.raises(ValueError, match="not a generated synthetic dataset"):
        ensure_synthetic(tmp_path / "other", workers=1, **TINY)
