"""The built-in dataset: deterministic, atomic/concurrent generation, and the class factors."""

import json
import multiprocessing
import os

import numpy as np
import pytest

from nlvideo.data import open_video
from nlvideo.data.synthetic import CLASS_NAMES, PALETTE, ensure_synthetic, factor_accuracy, render_video

TINY = dict(seed=3, train_per_class=2, val_per_class=0, num_frames=24, size=48, fps=12)


def test_render_is_deterministic_and_seed_dependent():
    a, fa = render_video(5, seed=1, num_frames=16, size=48)
    b, fb = render_video(5, seed=1, num_frames=16, size=48)
    c, _ = render_video(5, seed=2, num_frames=16, size=48)
    assert a.dtype == np.uint8 and a.shape == (16, 48, 48, 3)
    assert np.array_equal(a, b) and fa == fb and not np.array_equal(a, c)


@pytest.mark.parametrize("label", range(4))
def test_factors_match_class(label):
    colour, pair = CLASS_NAMES[label].split("_")
    for seed in range(6):
        _, f = render_video(label, seed=seed, num_frames=72, size=80)
        assert (f["colour"], f["pair"]) == (colour, pair)
        assert (f["cue_colour"] == f["probe_colour"]) == (colour == "samecolour")
        assert (f["mover_colours"][0] == f["mover_colours"][1]) == (pair == "samepair")
        assert f["cue_frames"] == [0, 28] and f["probe_frames"] == [44, 72]


def test_single_frames_carry_no_label_information():
    """Per-frame content is class-independent: colour and quadrant frequencies match across classes."""
    stats = {label: np.zeros(len(PALETTE)) for label in range(4)}
    for label in range(4):
        for seed in range(150):
            _, f = render_video(label, seed=seed, num_frames=4, size=16)
            stats[label][f["probe_colour"]] += 1
            stats[label][f["mover_colours"][1]] += 1
    for label in range(4):
        assert np.abs(stats[label] / 300 - 1 / len(PALETTE)).max() < 0.07


def test_decoded_video_shows_cue_then_probe(synthetic_root):
    meta = json.loads((synthetic_root / "meta.json").read_text())
    f = meta["videos"]["train_00006"]["factors"]  # class 2: newcolour_samepair
    video = open_video(str(synthetic_root / "videos" / "train_00006.mp4"))
    assert (video.num_frames, video.fps) == (64, 24.0)
    assert f["cue_frames"] == [0, 25] and f["probe_frames"] == [39, 64]
    frames = video.get_batch([10, 32, 60]).astype(np.float32)
    centres = [(22, 21), (22, 43), (42, 21), (42, 43)]  # quadrant centres of a 64 px frame

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


def test_factor_accuracy_separates_the_two_relations():
    truth = ["samecolour_samepair", "samecolour_diffpair", "newcolour_samepair", "newcolour_diffpair"]
    pred = ["samecolour_samepair", "newcolour_diffpair", "samecolour_samepair", "newcolour_samepair"]
    # colour right on videos 0 and 3; pair right on 0, 1 and 2
    assert factor_accuracy(truth, pred) == {"colour": 50.0, "pair": 75.0}
    with pytest.raises(ValueError, match="not built-in synthetic classes"):
        factor_accuracy(["abseiling"], ["samecolour_samepair"])
    with pytest.raises(ValueError, match="one prediction per label"):
        factor_accuracy(truth, pred[:2])
