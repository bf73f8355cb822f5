"""Repeated clips (``data.clips_per_video`` k): k training clips from one decode of a video, on real mp4s
(index-coded videos whose frames say which frame they are, the generated dataset) and in real train.py
runs, killed and resumed."""

from __future__ import annotations

import random
import signal
from itertools import combinations

import pytest
import torch
from omegaconf import OmegaConf

from nlvideo.data import ClipSampler, build_dataset, build_loader, clip_spec, decode, read_clip
from nlvideo.data.loader import collate_clips
from nlvideo.engine.config import ConfigError, validate_config
from tests.conftest import REPO, decoded_frame_ids
from tests.test_data_dataset import kinetics_cfg
from tests.test_reliability_resume import LOSS, resume_from_copy, run_cycle
from tests.test_train_run import load_model_state, run_app, tiny_overrides


class CountingDecord(decode.DecordVideo):
    """decord's reader, counting the videos it opens and its ``get_batch`` calls."""

    opens = 0
    batches = 0

    def __init__(self, *args, **kwargs):
        type(self).opens += 1
        super().__init__(*args, **kwargs)

    def get_batch(self, indices, strict=False):
        type(self).batches += 1
        return super().get_batch(indices, strict)


@pytest.fixture
def coded_train(tmp_path, make_video):
    """A training list of two index-coded videos (40 frames, 64x48) and a missing one."""
    make_video(tmp_path / "a.mp4", num_frames=40)
    make_video(tmp_path / "b.mp4", num_frames=40)
    (tmp_path / "train.csv").write_text("a.mp4 0\nb.mp4 1\nmissing.mp4 0\n")
    return tmp_path


def starts(seed: int, k: int, last_start: int) -> list[int]:
    """The item's first k draws: its clips' start frames."""
    rng = random.Random(seed)
    return [rng.randint(0, last_start) for _ in range(k)]


def test_clips_of_an_item_come_from_one_decode_each_with_its_own_frames(coded_train, monkeypatch):
    """k=4: one open and one get_batch per item, whose union holds every clip's frames; each clip has
    the frames its own start says (8 frames every 2: span 15 of 40) and its own crop and flip."""
    monkeypatch.setitem(decode.DECODERS, "decord", CountingDecord)
    ds = build_dataset(kinetics_cfg(coded_train, num_frames=8, sampling_rate=2, clips_per_video=4), "train")
    assert ds.clips_per_item == 4 and len(ds) == 3  # items are videos
    for video, seed in ((0, 0), (1, 7), (0, 123)):
        CountingDecord.opens = CountingDecord.batches = 0
        item = ds[(video, seed)]
        assert (CountingDecord.opens, CountingDecord.batches) == (1, 1)
        assert item["clip"].shape == (4, 3, 8, 32, 32)
        assert [decoded_frame_ids(c) for c in item["clip"]] == [
            [s + 2 * j for j in range(8)] for s in starts(seed, 4, 40 - 15)]
        assert item["label"].tolist() == [video] * 4 and item["video_index"].tolist() == [video] * 4
        assert item["view_index"].tolist() == [0, 1, 2, 3] and item["valid"].tolist() == [True] * 4
        for a, b in combinations(item["clip"], 2):
            assert not torch.equal(a, b)
        assert torch.equal(item["clip"], ds[(video, seed)]["clip"])  # the seed decides


def test_one_clip_per_video_is_the_single_clip_path(coded_train):
    """k=1 (every yaml's default): items and batches are those of read_clip, one clip per item."""
    cfg = kinetics_cfg(coded_train, num_frames=8, sampling_rate=2)
    assert cfg.clips_per_video == 1
    ds = build_dataset(cfg, "train")
    assert ds.clips_per_item == 1
    for seed in (0, 5):
        item = ds[(1, seed)]
        want, _, _ = read_clip(ds.spec, ds.records[1].path, 0, random.Random(seed))
        assert torch.equal(item["clip"], want) and item["clip"].shape == (3, 8, 32, 32)
        assert [item[k].shape for k in ("label", "video_index", "view_index", "valid")] == [()] * 4
    sampler = ClipSampler(2, seed=3)
    loader = build_loader(ds, cfg, sampler, batch_size=2)
    assert loader.collate_fn is collate_clips and loader.batch_size == 2
    (batch,) = list(loader)
    assert torch.equal(batch["clip"], torch.stack([ds[key]["clip"] for key in sampler]))


def test_a_batch_is_batch_size_clips_of_batch_size_over_k_videos(synthetic_cfg):
    synthetic_cfg.clips_per_video, synthetic_cfg.batch_size = 2, 4
    ds = build_dataset(synthetic_cfg, "train")
    sampler = ClipSampler(len(ds), seed=0)
    loader = build_loader(ds, synthetic_cfg, sampler, batch_size=4)
    assert len(loader) == 8  # 16 videos, 2 a step
    keys = list(sampler)
    seen = []
    for step, batch in enumerate(loader):
        pair = keys[2 * step: 2 * step + 2]
        assert batch["clip"].shape == (4, 3, 8, 48, 48) and batch["label"].shape == (4,)
        videos = [key[0] for key in pair]
        assert batch["video_index"].tolist() == [videos[0]] * 2 + [videos[1]] * 2  # a video's clips adjacent
        assert batch["view_index"].tolist() == [0, 1, 0, 1]
        assert torch.equal(batch["clip"][2:], ds[pair[1]]["clip"])
        seen += videos
    assert sorted(seen) == list(range(16))  # an epoch: every video once, k clips each


def test_a_bad_video_is_replaced_by_one_video_giving_all_k_clips(coded_train):
    ds = build_dataset(kinetics_cfg(coded_train, num_frames=4, sampling_rate=2, clips_per_video=3), "train")
    ds.report_failures = False
    item = ds[(2, 11)]  # missing.mp4
    assert item["failures"] == [(str(coded_train / "missing.mp4"), "missing file")]  # counted once
    (video,) = set(item["video_index"].tolist())
    assert video in (0, 1) and item["clip"].shape == (3, 3, 4, 32, 32)
    assert item["label"].tolist() == [video] * 3 and item["valid"].all()


def test_charades_clips_get_the_actions_of_their_own_time_span(synthetic_cfg):
    """Multi-label: each of an item's clips is labelled with the actions overlapping its own frames (a
    4x4 clip spans 13 of the 64 frames: the cue is shown in frames 0..24, the probe in 39..63, c003
    always), so the k clips of one video get different labels."""
    charades = OmegaConf.load(REPO / "configs" / "data" / "synthetic_charades.yaml")
    cfg = OmegaConf.merge(synthetic_cfg, charades)
    cfg.root, cfg.generate = synthetic_cfg.root, synthetic_cfg.generate
    cfg.pop("defaults", None)
    cfg.num_frames, cfg.sampling_rate, cfg.clips_per_video = 4, 4, 4
    ds = build_dataset(cfg, "train")
    distinct = set()
    for seed in range(6):
        want = []
        for s in starts(seed, 4, 64 - 13):
            t0, t1 = s / 24, (s + 13) / 24
            want.append([float(t0 < 25 / 24), float(t1 > 39 / 24), 0.0, 1.0, 0.0])
        labels = ds[(0, seed)]["label"]
        assert labels.shape == (4, 5) and labels.tolist() == want
        distinct |= {tuple(row) for row in want}
    assert len(distinct) >= 2


@pytest.mark.parametrize("over, message", [
    ({"clips_per_video": 4, "batch_size": 6},
     "data.batch_size=6 is not a multiple of data.clips_per_video=4: a step holds batch_size / "
     "clips_per_video videos of clips_per_video clips each"),
    ({"clips_per_video": 0}, "data.clips_per_video=0 must be an integer >= 1"),
    ({"clips_per_video": 1.5}, "data.clips_per_video=1.5 must be an integer >= 1"),
    ({"clips_per_video": "two"}, "data.clips_per_video='two' must be an integer >= 1"),
])
def test_bad_clips_per_video_is_one_line_before_any_work(over, message, synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    r = run_app("train.py", *tiny_overrides(synthetic_root), *(f"data.{k}={v}" for k, v in over.items()),
                f"hydra.run.dir={run_dir}")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {message}"], r.stderr[-2000:]
    assert not (run_dir / "checkpoints").exists()


def test_evaluation_ignores_clips_per_video():
    """eval.py's checks skip the training-only divisibility (its batches are views)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        cfg = compose("config", overrides=["data.clips_per_video=3", "data.batch_size=16"])
    with pytest.raises(ConfigError, match="data.batch_size=16 is not a multiple of data.clips_per_video=3"):
        validate_config(cfg)
    validate_config(cfg, needs_train=False)
    assert [clip_spec(cfg.data, s).clips_per_video for s in ("train", "val", "test")] == [3, 1, 1]


# ------------------------------------------------------------------------------------- train.py runs

K2 = ["data.clips_per_video=2", "trainer.epochs=1", "trainer.eval_period=0",
      "trainer.checkpoint.every_iters=2", "trainer.checkpoint.keep_last=10"]


@pytest.fixture(scope="module")
def k2_reference(synthetic_root, tmp_path_factory):
    """An uninterrupted k=2 run: 16 videos, batch 4 = 2 videos of 2 clips a step, 1 epoch."""
    run_dir = tmp_path_factory.mktemp("k2") / "reference"
    r = run_app("train.py", *tiny_overrides(synthetic_root), *K2, f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return run_dir, r.stdout


def test_train_py_epoch_is_every_video_once_in_steps_of_batch_size_clips(k2_reference):
    _, out = k2_reference
    assert "data.clips_per_video=2: 2 clips per video, 2 videos per step per process" in out
    assert [int(i) for i, _ in LOSS.findall(out)] == list(range(1, 9))  # 16 videos / 2 a step
    assert "epoch 1/1 done: iteration 8  clips 32  " in out  # 4 clips a step: each video's 2


def test_sigkill_mid_epoch_and_resume_trains_every_video_of_the_epoch_once(k2_reference, synthetic_root,
                                                                          tmp_path):
    """Killed after iteration 5 (checkpoint 4: 8 of the epoch's 16 videos, 16 clips), the rerun goes on at
    video 8 and ends with the reference's weights, every iteration logging the reference's loss. Had the
    sampler been pointed at clip 16 as if it were a video, the epoch would have ended after 4 steps."""
    ref_dir, ref_out = k2_reference
    run_dir = tmp_path / "run"
    args = [*tiny_overrides(synthetic_root), *K2, f"hydra.run.dir={run_dir}"]
    code, first = run_cycle(args, 5)
    assert code == -signal.SIGKILL, first[-2000:]
    code, second = run_cycle(args)
    assert code == 0, second[-3000:]
    assert "resumed from " in second and "(epoch 1, step 4, iteration 4)" in second, second[-3000:]
    ref_loss = dict(LOSS.findall(ref_out))
    assert [int(i) for i, _ in LOSS.findall(second)] == [5, 6, 7, 8]
    assert all(v == ref_loss[i] for out in (first, second) for i, v in LOSS.findall(out))
    assert "epoch 1/1 done: iteration 8  clips 32  " in second
    want = load_model_state(ref_dir / "checkpoints" / "checkpoint_000000008.pt")
    got = load_model_state(run_dir / "checkpoints" / "checkpoint_000000008.pt")
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_resume_with_another_batch_size_goes_on_after_the_same_videos(k2_reference, synthetic_root, tmp_path):
    """Checkpoint 2 (4 videos, 8 clips) resumed at batch 6 (3 videos a step): a short step of 2 videos (4
    clips) up to the next whole step, then whole steps: 15 of the 16 videos in the epoch (drop_last)."""
    run_dir = tmp_path / "batch6"
    resume_from_copy(k2_reference[0], run_dir, 2)
    r = run_app("train.py", *tiny_overrides(synthetic_root), *K2, "data.batch_size=6",
                f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "a short step of 4 clip(s) per process first, up to the next whole step of 6" in r.stdout
    assert "epoch 1/1 done: iteration 5  clips 30  " in r.stdout, r.stdout[-3000:]


def test_resume_with_another_clips_per_video_is_refused(k2_reference, synthetic_root, tmp_path):
    run_dir = tmp_path / "k1"
    resume_from_copy(k2_reference[0], run_dir, 2)
    r = run_app("train.py", *tiny_overrides(synthetic_root), *K2, "data.clips_per_video=1",
                f"hydra.run.dir={run_dir}")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "was trained with data.clips_per_video=2, this run has 1: resume with data.clips_per_video=2" \
        in r.stderr, r.stderr[-2000:]
