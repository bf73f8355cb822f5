"""Whole-video evaluation items: every view of a test video from one decode, bit for bit the per-view
items (the path before), unreadable videos skipped and counted as before, and eval's aggregation over
a loader of whole videos the same as over a loader of views (same model batches, same scores)."""

from __future__ import annotations

import re

import pytest
import torch

from nlvideo.data import ClipSampler, WholeVideos, build_dataset, build_loader, regroup_views, sampling
from nlvideo.data.decode import DecordVideo, PyAVVideo
from nlvideo.data.synthetic import write_mp4
from nlvideo.engine import distributed as du
from nlvideo.engine.evaluate import run_evaluation
from tests.conftest import decoded_frame_ids
from tests.hostile import coded_frames, make_hostile_root, truncated
from tests.test_data_dataset import kinetics_cfg

READERS = {"decord": DecordVideo, "pyav": PyAVVideo}


def test_union_indices_decode_each_frame_once():
    clips = [[0, 2, 4, 6], [3, 5, 7, 9], [6, 8, 9, 9]]  # overlapping, the last clamped (9 twice)
    union, positions = sampling.union_indices(clips)
    assert union == [0, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [[union[p] for p in pos] for pos in positions] == clips


FRAMES = {"long.mp4": 84, "short.mp4": 20, "big.mp4": 60}


@pytest.fixture(scope="module")
def videos(tmp_path_factory, make_video):
    """Index-coded mp4s: 84 frames at 64x48 (resized by the transforms, 10 clips overlapping), 20 frames
    (every clip clamped at the end) and 160x120 (scaled while decoded: the PyAV-matched path)."""
    root = tmp_path_factory.mktemp("whole")
    for name, w, h in (("long.mp4", 64, 48), ("short.mp4", 64, 48), ("big.mp4", 160, 120)):
        make_video(root / "v" / name, num_frames=FRAMES[name], width=w, height=h)
    lines = "v/long.mp4 0\nv/short.mp4 1\nv/big.mp4 0\n"
    (root / "train.csv").write_text(lines)
    (root / "val.csv").write_text(lines)
    return root


def count_decodes(monkeypatch, reader) -> list[list[int]]:
    calls: list[list[int]] = []
    get_batch = reader.get_batch

    def counted(self, indices, strict=False):
        calls.append([int(i) for i in indices])
        return get_batch(self, indices, strict)

    monkeypatch.setattr(reader, "get_batch", counted)
    return calls


@pytest.mark.parametrize("views", [(10, 3), (1, 1)], ids=["10x3", "1view"])
@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_every_view_from_one_decode_is_the_per_view_item(videos, monkeypatch, decoder, views):
    clips, crops = views
    cfg = kinetics_cfg(videos, num_frames=8, sampling_rate=4, decoder=decoder,
                       test={"num_clips": clips, "num_crops": crops})
    ds = build_dataset(cfg, "test")
    calls = count_decodes(monkeypatch, READERS[decoder])
    for v in range(ds.num_videos):
        calls.clear()
        item = WholeVideos(ds)[(v, 123)]
        (decoded,) = calls  # one get_batch call for all the views
        n = FRAMES[ds.records[v].path.rsplit("/", 1)[-1]]
        per_clip = [sampling.test_clip_indices(n, 8, 4, c, clips) for c in range(clips)]
        assert decoded == sorted({i for clip in per_clip for i in clip})  # each needed frame once
        assert item["clip"].shape == (clips * crops, 3, 8, 32, 32) and item["clip"].is_contiguous()
        assert item["view_index"].tolist() == list(range(clips * crops)) and item["valid"].all()
        assert item["video_index"].item() == v and item["label"].item() == ds.records[v].label
        assert item["failures"] == []
        for view in range(ds.num_views):
            old = ds[v * ds.num_views + view]  # the per-view path: one decode per view
            assert torch.equal(item["clip"][view], old["clip"]), (v, view)
            assert decoded_frame_ids(item["clip"][view]) == per_clip[view // crops]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """tests/hostile.py's list (4 good, 7 unusual but valid, 8 broken videos) plus a faststart file cut
    at 85%: PyAV decodes its first clips and fails on the later ones."""
    root = tmp_path_factory.mktemp("whole_hostile")
    kinds = make_hostile_root(root)
    write_mp4(root / "full.mp4", coded_frames(80, 48, 64), faststart=True)
    truncated(root / "full.mp4", root / "videos" / "faststart_cut_85.mp4", 0.85)
    with open(root / "val.csv", "a") as f:
        f.write("videos/faststart_cut_85.mp4\t1\n")
    return root, kinds


class Recorder(torch.nn.Module):
    """A fixed linear map of each clip's mean per channel and frame, keeping every batch it is given."""

    def __init__(self, frames: int, classes: int = 2):
        super().__init__()
        self.fc = torch.nn.Linear(3 * frames, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.linspace(-1, 1, 3 * frames * classes).view(classes, -1))
            self.fc.bias.zero_()
        self.batches: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.clone())
        return self.fc(x.mean(dim=(3, 4)).flatten(1))


def evaluate(ds, cfg, whole: bool, batch_size: int, rank: int = 0, world_size: int = 1):
    items = WholeVideos(ds) if whole else ds
    sampler = ClipSampler(len(items), shuffle=False, rank=rank, world_size=world_size, drop_last=False)
    loader = build_loader(items, cfg, sampler, batch_size=batch_size)
    model = Recorder(ds.spec.num_frames)
    agg = run_evaluation(model, loader, ds.num_videos, ds.num_classes, False, lambda m, x: m(x))
    return agg, model.batches


def untimed(failures):
    """``(path, reason)`` pairs without the wall-clock time decord writes into its messages."""
    return [(path, re.sub(r"\[\d\d:\d\d:\d\d\] ", "", reason)) for path, reason in failures]


def same_result(a, b) -> None:
    for key in ("scores", "counts", "failed", "label_sum", "label_seen", "loss_sum"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert untimed(a.failures.items()) == untimed(b.failures.items()) and a.num_failed == b.num_failed
    assert a.num_views_scored == b.num_views_scored


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_unreadable_videos_are_skipped_and_counted_as_before(hostile, decoder):
    root, kinds = hostile
    cfg = kinetics_cfg(root, num_frames=4, sampling_rate=3, decoder=decoder, max_retries=30,
                       test={"num_clips": 4, "num_crops": 3})
    ds = build_dataset(cfg, "test")
    ds.report_failures = False
    for v, rec in enumerate(ds.records):
        item = ds.video_item(v)
        old = [ds[v * ds.num_views + view] for view in range(ds.num_views)]
        assert item["valid"].tolist() == [o["valid"].item() for o in old], rec.path
        before = list(dict.fromkeys(untimed(f for o in old for f in o["failures"])))
        assert untimed(item["failures"]) == before, rec.path
        assert torch.equal(item["clip"], torch.stack([o["clip"] for o in old])), rec.path
        assert item["label"].item() == rec.label
    cut = ds.video_item([r.path for r in ds.records].index(str(root / "videos/faststart_cut_85.mp4")))
    if decoder == "pyav":  # some clips of the cut file decode, the later ones fail: as before, per clip
        assert item_valid_clips(cut, 3) == [True, True, False, False]
    else:
        assert not cut["valid"].any()

    # eval's aggregation: a loader of whole videos gives the model the batches of views a loader of
    # views gives it, and the same scores, failures, skipped videos and views scored.
    old_agg, old_batches = evaluate(ds, cfg, whole=False, batch_size=5)
    new_agg, new_batches = evaluate(ds, cfg, whole=True, batch_size=5)
    assert [b.shape[0] for b in new_batches] == [b.shape[0] for b in old_batches]
    assert all(torch.equal(a, b) for a, b in zip(new_batches, old_batches, strict=True))
    same_result(new_agg, old_agg)
    assert new_agg.num_failed == len(kinds["broken"]) + (decoder == "decord")
    assert set(new_agg.failures) >= {str(root / rel) for rel in kinds["broken"]}


def item_valid_clips(item, crops: int) -> list[bool]:
    valid = item["valid"].view(-1, crops)
    assert (valid == valid[:, :1]).all()  # the crops of a clip share its frames
    return valid[:, 0].tolist()


def test_two_ranks_of_whole_videos_score_every_view_once(videos, monkeypatch):
    """3 videos over 2 ranks: rank 1's second video is the sampler's padding, dropped with all its views;
    the two ranks' sums are the single process's."""
    cfg = kinetics_cfg(videos, num_frames=8, sampling_rate=4, test={"num_clips": 2, "num_crops": 3})
    ds = build_dataset(cfg, "test")
    single, _ = evaluate(ds, cfg, whole=True, batch_size=4)
    ranks = []
    monkeypatch.setattr(du, "all_reduce_sum", torch.clone)  # each rank's own sums, added up below
    for rank in (0, 1):
        monkeypatch.setattr(du, "info", lambda rank=rank: du.DistInfo(rank=rank, world_size=2))
        ranks.append(evaluate(ds, cfg, whole=True, batch_size=4, rank=rank, world_size=2)[0])
    assert ranks[0].counts.tolist() == [6, 0, 6] and ranks[1].counts.tolist() == [0, 6, 0]
    torch.testing.assert_close(ranks[0].scores + ranks[1].scores, single.scores, rtol=0, atol=0)
    assert ranks[1].num_views_scored == 6


def test_regroup_views_batches_whole_videos_into_model_batches():
    def videos(first: int, count: int, views: int = 3, failures=()):
        idx = torch.arange(first, first + count)
        return {"clip": idx.view(-1, 1, 1, 1, 1, 1).expand(count, views, 3, 1, 2, 2).float().contiguous(),
                "label": idx % 2, "video_index": idx, "view_index": torch.arange(views).repeat(count, 1),
                "valid": torch.ones(count, views, dtype=torch.bool), "failures": list(failures)}

    batches = [videos(0, 2, failures=[("a", "x")]), videos(2, 1), videos(3, 2, failures=[("b", "y")])]
    out = list(regroup_views(batches, 4))
    assert [len(b["clip"]) for b in out] == [4, 4, 4, 3]  # 15 views
    assert torch.cat([b["video_index"] for b in out]).tolist() == [v for v in range(5) for _ in range(3)]
    assert torch.cat([b["view_index"] for b in out]).tolist() == [0, 1, 2] * 5
    assert torch.cat([b["label"] for b in out]).tolist() == [v % 2 for v in range(5) for _ in range(3)]
    assert [b["clip"][:, 0, 0, 0, 0].tolist() for b in out][0] == [0, 0, 0, 1]
    assert [b["failures"] for b in out] == [[("a", "x")], [], [("b", "y")], []]
    assert out[0]["clip"].data_ptr() == batches[0]["clip"].data_ptr()  # within one batch: a slice
    assert [len(b["clip"]) for b in regroup_views(batches, None)] == [6, 3, 6]
    views = {k: v.flatten(0, 1) if k in ("clip", "view_index", "valid") else v for k, v in batches[0].items()}
    views["video_index"] = views["label"] = torch.tensor([0, 0, 0, 1, 1, 1])
    assert [len(b["clip"]) for b in regroup_views([views, views], 4)] == [4, 4, 4]  # views pass through
