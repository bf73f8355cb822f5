"""Datasets on real mp4 files: exact frames through decoding, labels, bad data, config errors."""

import logging
import random
from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf

from nlvideo.data import ClipSampler, build_dataset, build_loader, sampling
from tests.conftest import REPO, decoded_frame_ids


def kinetics_cfg(root, **over):
    cfg = OmegaConf.load(REPO / "configs" / "data" / "kinetics400.yaml")
    cfg.root = str(root)
    cfg.num_classes = 2
    cfg.train_jitter_scales = [32, 40]
    cfg.train_crop_size = 32
    cfg.test_scale = 32
    cfg.test_crop_size = 32
    cfg.num_workers = 0
    cfg.max_retries = 3
    cfg.test = {"num_clips": 3, "num_crops": 3}
    return OmegaConf.merge(cfg, over)


@pytest.fixture
def coded_root(tmp_path, make_video):
    """Two index-coded videos (40 and 20 frames) listed in train/val lists."""
    make_video(tmp_path / "v" / "a.mp4", num_frames=40)
    make_video(tmp_path / "v" / "b.mp4", num_frames=20)
    (tmp_path / "train.csv").write_text("v/a.mp4 0\nv/b.mp4 1\n")
    (tmp_path / "val.csv").write_text("v/a.mp4 0\nv/b.mp4 1\n")
    return tmp_path


def test_test_views_exact_frames_and_crops(coded_root):
    ds = build_dataset(kinetics_cfg(coded_root, num_frames=4, sampling_rate=5), "test")
    assert (ds.num_videos, ds.num_views, len(ds)) == (2, 9, 18)
    for view in range(9):
        item = ds[view]  # video 0 (40 frames): clips start at 0, 12, 24 (span 16)
        assert item["clip"].shape == (3, 4, 32, 32) and item["clip"].dtype == torch.float32
        assert item["label"].dtype == torch.int64 and item["label"].item() == 0
        assert (item["video_index"].item(), item["view_index"].item(), item["valid"].item()) == (
            0,
            view,
            True,
        )
        expected = sampling.test_clip_indices(40, 4, 5, view // 3, 3)
        assert decoded_frame_ids(item["clip"]) == expected
    # 3 crops along the width of the 64x48 video (scaled to 42x32): the white marker is top-left
    left, right = ds[0]["clip"], ds[2]["clip"]
    assert left[:, :, :4, :4].mean() > 2.0 and right[:, :, :4, :4].mean() < 1.0
    # short video (20 frames) is clamped at its last frame
    assert decoded_frame_ids(ds[9]["clip"]) == sampling.test_clip_indices(20, 4, 5, 0, 3)


def test_train_clip_frames_follow_seed(coded_root):
    ds = build_dataset(kinetics_cfg(coded_root, num_frames=8, sampling_rate=2), "train")
    assert ds.num_views == 1 and len(ds) == 2
    for seed in (0, 1, 2, 99):
        item = ds[(0, seed)]
        start = random.Random(seed).randint(0, 40 - 15)  # the first draw of the item's rng
        assert decoded_frame_ids(item["clip"]) == [start + 2 * j for j in range(8)]
        assert torch.equal(item["clip"], ds[(0, seed)]["clip"])
    assert torch.equal(ds[1]["clip"], ds[1]["clip"])  # plain index: seed derived from the index


def test_target_fps(tmp_path, make_video):
    make_video(tmp_path / "fast.mp4", num_frames=60, fps=48)
    (tmp_path / "val.csv").write_text("fast.mp4 0\n")
    (tmp_path / "train.csv").write_text("fast.mp4 0\n")
    cfg = kinetics_cfg(tmp_path, num_frames=4, sampling_rate=2, target_fps=24, num_classes=1)
    ds = build_dataset(cfg, "val")  # 2 frames at 24 fps = 4 frames at 48 fps
    assert decoded_frame_ids(ds[0]["clip"]) == sampling.test_clip_indices(60, 4, 4, 0, 1)


def test_bad_files_are_replaced_and_counted(tmp_path, make_video, caplog):
    make_video(tmp_path / "good.mp4", num_frames=30)
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    good = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(good[: len(good) // 3])  # index (moov) at the end: lost
    make_video(tmp_path / "fs.mp4", num_frames=30, faststart=True)
    fs = (tmp_path / "fs.mp4").read_bytes()
    (tmp_path / "fs.mp4").write_bytes(fs[: len(fs) // 2])  # index first, frame data cut: decode fails
    names = ["good", "zero", "text", "trunc", "fs", "missing"]
    (tmp_path / "train.csv").write_text("".join(f"{n}.mp4 0\n" for n in names))
    ds = build_dataset(
        kinetics_cfg(tmp_path, num_frames=4, sampling_rate=2, num_classes=1, max_retries=50), "train"
    )
    sampler = ClipSampler(len(ds), shuffle=True, seed=0)
    failed_reads: Counter[str] = Counter()  # path -> failed reads, over the batches' ``failures``
    reasons: dict[str, str] = {}
    with caplog.at_level(logging.WARNING, logger="nlvideo.data.dataset"):
        for epoch in range(3):
            sampler.set_epoch(epoch)
            for batch in build_loader(ds, kinetics_cfg(tmp_path), sampler, batch_size=3, drop_last=False):
                assert batch["clip"].shape == (3, 3, 4, 32, 32)
                assert batch["video_index"].tolist() == [0] * 3  # every item ended on the good video
                for path, reason in batch["failures"]:
                    failed_reads[path] += 1
                    reasons.setdefault(path, reason)
    bad = {str(tmp_path / f"{n}.mp4") for n in names[1:]}
    # each bad video is an item's own video 3 times
    assert set(failed_reads) == bad and sum(failed_reads.values()) >= 15
    assert reasons[str(tmp_path / "zero.mp4")] == "zero-byte file"
    assert reasons[str(tmp_path / "missing.mp4")] == "missing file"
    assert "cannot open" in reasons[str(tmp_path / "text.mp4")]
    assert reasons[str(tmp_path / "fs.mp4")].startswith(("cannot open: DECORDError", "decode failed"))
    warned = [r.getMessage() for r in caplog.records if "skipping unreadable video" in r.getMessage()]
    assert len(warned) == len(set(warned)) == 5  # once per path


def test_too_many_failures_raise(tmp_path):
    (tmp_path / "train.csv").write_text("a.mp4 0\nb.mp4 0\n")
    ds = build_dataset(kinetics_cfg(tmp_path, num_classes=1, max_retries=3), "train")
    with pytest.raises(RuntimeError, match=r"4 consecutive unreadable videos .*data.max_retries=3.*a\.mp4"):
        ds[0]


def test_eval_failures_are_flagged_not_replaced(tmp_path, make_video):
    make_video(tmp_path / "good.mp4", num_frames=20)
    (tmp_path / "train.csv").write_text("good.mp4 0\n")
    (tmp_path / "val.csv").write_text("good.mp4 0\nbroken.mp4 1\n")
    ds = build_dataset(kinetics_cfg(tmp_path), "val")
    loader = build_loader(ds, kinetics_cfg(tmp_path), ClipSampler(len(ds), shuffle=False), batch_size=2)
    batch = next(iter(loader))
    assert batch["valid"].tolist() == [True, False]
    assert batch["label"].tolist() == [0, 1] and batch["video_index"].tolist() == [0, 1]
    assert batch["failures"] == [(str(tmp_path / "broken.mp4"), "missing file")]
    assert batch["clip"].shape == (2, 3, 8, 32, 32) and batch["clip"][1].abs().sum() == 0


def test_missing_root_and_errors_at_construction(tmp_path):
    cfg = OmegaConf.load(REPO / "configs" / "data" / "kinetics400.yaml")
    with pytest.raises(ValueError, match="data.root is required for data=kinetics400: set data.root="):
        build_dataset(cfg, "train")
    with pytest.raises(ValueError, match="annotation list not found"):
        build_dataset(kinetics_cfg(tmp_path), "train")
    (tmp_path / "train.csv").write_text("a.mp4 0\nb.mp4 one two\n")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'train.csv'}:2: expected"):
        build_dataset(kinetics_cfg(tmp_path), "train")
    with pytest.raises(ValueError, match="split"):
        build_dataset(kinetics_cfg(tmp_path), "training")


def test_config_keys_are_read_not_defaulted(tmp_path):
    """The yaml is the one source of defaults: a key missing from the config is a one-line error naming
    it (no fallback value in code), and an unknown format lists the known ones."""
    (tmp_path / "train.csv").write_text("a.mp4 0\n")
    (tmp_path / "val.csv").write_text("a.mp4 0\n")
    cfg = kinetics_cfg(tmp_path)
    del cfg["decoder"]
    with pytest.raises(ValueError, match=r"^data\.decoder is missing from the config"):
        build_dataset(cfg, "train")
    cfg = kinetics_cfg(tmp_path)
    del cfg.val["num_clips"]
    with pytest.raises(ValueError, match=r"^data\.val\.num_clips is missing"):
        build_dataset(cfg, "val")
    with pytest.raises(ValueError, match="^data.format='avi_list' is not allowed; choose one of: "
                       "kinetics_csv, kinetics_folder, charades$"):
        build_dataset(kinetics_cfg(tmp_path, format="avi_list"), "train")


def test_synthetic_kinetics_form(synthetic_cfg):
    train = build_dataset(synthetic_cfg, "train")
    assert (train.num_classes, train.num_videos, train.multi_label) == (4, 16, False)
    assert train.class_names[0] == "samecolour_samepair"
    item = train[(5, 1)]
    assert item["clip"].shape == (3, 8, 48, 48) and item["label"].item() == 1  # video i has class i % 4
    test = build_dataset(synthetic_cfg, "test")
    assert (test.num_videos, test.num_views, len(test)) == (8, 2, 16)


def test_synthetic_charades_form_clip_labels(synthetic_cfg):
    cfg = OmegaConf.merge(
        synthetic_cfg, OmegaConf.load(REPO / "configs" / "data" / "synthetic_charades.yaml")
    )
    cfg.root, cfg.generate = synthetic_cfg.root, synthetic_cfg.generate
    cfg.pop("defaults", None)
    train = build_dataset(cfg, "train")
    assert train.multi_label and train.num_classes == 5 and train.class_names[0] == "c000 cue shown"
    rec = train.records[0]  # class 0: samecolour, samepair
    assert rec.video_labels == [0, 1, 3]
    item = train[(0, 3)]
    assert item["label"].dtype == torch.float32 and item["label"].tolist() == [1, 1, 0, 1, 0]
    # a short clip only overlaps the cue (frames 0..24) and/or the probe (39..63); c003 always
    cfg.num_frames, cfg.sampling_rate = 4, 4
    short = build_dataset(cfg, "train")
    def start(seed):  # the dataset's draw of a clip start
        return random.Random(seed).randint(0, 64 - 13)

    # seeds 0..4, plus clips starting at the cue's last frame / just after it, and clips whose last
    # frame is just before / at the probe's first frame (times in the CSV have 2 decimals)
    seeds = list(range(5)) + [next(s for s in range(10_000) if start(s) == st) for st in (24, 25, 26, 27)]
    starts = [start(s) for s in seeds]
    expect = []
    for st in starts:
        t0, t1 = st / 24, (st + 13) / 24
        labels = [0] * 5
        labels[3] = 1
        if t0 < 25 / 24:
            labels[0] = 1
        if t1 > 39 / 24:
            labels[1] = 1
        expect.append(labels)
    assert [short[(0, s)]["label"].tolist() for s in seeds] == expect
    assert [e[0] for e in expect[-4:]] == [1, 0, 0, 0] and [e[1] for e in expect[-4:]] == [0, 0, 0, 1]
    val = build_dataset(cfg, "val")
    assert val[0]["label"].tolist() == [1, 1, 0, 1, 0]  # video-level labels


def test_pyav_baseline_decodes_the_same_frames(tmp_path, make_video):
    from nlvideo.data import open_video

    path = str(make_video(tmp_path / "v.mp4", num_frames=40))
    for idx in ([0, 3, 3, 39], [17, 19, 21], [30, 38]):
        a = open_video(path, "decord").get_batch(idx)
        b = open_video(path, "pyav").get_batch(idx)
        assert a.shape == b.shape == (len(idx), 48, 64, 3)
        assert abs(a.astype(int) - b.astype(int)).max() <= 1
        assert [round(f[24:, 32:].mean() / 3) for f in a] == idx


def test_class_usage_warning_names_the_classes_a_far_smaller_label_set_uses(coded_root):
    """Integer labels 0/1 with the default data.num_classes=400 trained a 400-way classifier silently."""
    from nlvideo.data.dataset import class_usage_warning

    ds = build_dataset(kinetics_cfg(coded_root, num_classes=400), "train")
    assert class_usage_warning(ds) == (
        "train: the 2 videos use 2 of the 400 classes (0, 1): the classifier has 398 outputs that are never "
        "a target; set data.num_classes=2 if the data has 2 classes")
    assert class_usage_warning(build_dataset(kinetics_cfg(coded_root), "train")) is None  # 2 of 2
    (coded_root / "classes.txt").write_text("".join(f"c{i}\n" for i in range(10)))
    (coded_root / "train.csv").write_text("v/a.mp4 3\nv/b.mp4 7\n")
    ds = build_dataset(kinetics_cfg(coded_root, num_classes=10), "train")
    assert class_usage_warning(ds) == (
        "train: the 2 videos use 2 of the 10 classes (c3, c7): the classifier has 8 outputs that are never "
        "a target; check data.num_classes and the labels")
