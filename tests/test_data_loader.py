"""Sampler and loader: determinism across worker counts and resumes, equal DDP splits."""

import pytest
import torch

from nlvideo.data import ClipSampler, build_dataset, build_loader, derive_seed


def test_resume_yields_exact_tail():
    full = ClipSampler(103, shuffle=True, seed=3)
    full.set_epoch(4)
    order = list(full)
    assert len(order) == 103 and sorted(i for i, _ in order) == list(range(103))
    for k in (0, 1, 50, 103):
        resumed = ClipSampler(103, shuffle=True, seed=3)
        resumed.set_epoch(4, start=k)
        assert len(resumed) == 103 - k
        assert list(resumed) == order[k:]


def test_epochs_and_seeds_differ():
    a, b, c = ClipSampler(50, seed=0), ClipSampler(50, seed=0), ClipSampler(50, seed=1)
    a.set_epoch(0)
    b.set_epoch(1)
    c.set_epoch(0)
    assert [i for i, _ in a] != [i for i, _ in b] and [i for i, _ in a] != [i for i, _ in c]
    assert len({s for _, s in a} | {s for _, s in b}) == 100  # augmentation seeds all distinct
    a.set_epoch(0)
    assert list(a)[7][1] == derive_seed(0, 0, 7)
    unshuffled = ClipSampler(5, shuffle=False)
    assert [i for i, _ in unshuffled] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("n, world, drop_last", [(10, 3, True), (10, 3, False), (2, 4, False), (64, 4, True)])
def test_ddp_split_equal_lengths(n, world, drop_last):
    samplers = [ClipSampler(n, seed=5, rank=r, world_size=world, drop_last=drop_last) for r in range(world)]
    for s in samplers:
        s.set_epoch(2)
    parts = [list(s) for s in samplers]
    assert len({len(p) for p in parts}) == 1 and all(
        len(s) == len(p) for s, p in zip(samplers, parts, strict=True)
    )
    single = ClipSampler(n, seed=5, drop_last=drop_last)
    single.set_epoch(2)
    merged = [x for pos in range(len(parts[0])) for x in (p[pos] for p in parts)]
    # the ranks interleave to the single-process order, truncated or cyclically padded
    order = single.global_order()
    assert sorted(order) == list(range(n))
    assert [i for i, _ in merged] == (order * world)[: len(merged)]
    if drop_last:
        assert len(merged) == n - n % world and len({i for i, _ in merged}) == len(merged)
    else:
        assert {i for i, _ in merged} == set(range(n)) and len(merged) == -(-n // world) * world


def test_set_epoch_validates_start():
    s = ClipSampler(10, world_size=2, rank=1)
    with pytest.raises(ValueError):
        s.set_epoch(0, start=6)
    with pytest.raises(ValueError):
        ClipSampler(10, rank=2, world_size=2)


def batches(ds, cfg, workers, epoch, start=0, batch_size=4):
    sampler = ClipSampler(len(ds), shuffle=True, seed=11, drop_last=True)
    sampler.set_epoch(epoch, start=start)
    loader = build_loader(ds, cfg, sampler, batch_size=batch_size, num_workers=workers)
    return list(loader)


@pytest.mark.slow
def test_same_clips_with_0_and_2_workers_and_after_resume(synthetic_cfg):
    synthetic_cfg.persistent_workers = False
    ds = build_dataset(synthetic_cfg, "train")
    rng_before = torch.get_rng_state()
    b0 = batches(ds, synthetic_cfg, 0, epoch=1)
    b2 = batches(ds, synthetic_cfg, 2, epoch=1)
    assert torch.equal(rng_before, torch.get_rng_state())  # loaders do not consume the global RNG
    assert len(b0) == len(b2) == 4
    for x, y in zip(b0, b2, strict=True):
        assert x.keys() == y.keys() == {"clip", "label", "video_index", "view_index", "valid", "failures"}
        assert torch.equal(x["clip"], y["clip"]) and torch.equal(x["label"], y["label"])
        assert torch.equal(x["video_index"], y["video_index"])
    resumed = batches(ds, synthetic_cfg, 2, epoch=1, start=8)  # two batches already consumed
    assert len(resumed) == 2
    for x, y in zip(b0[2:], resumed, strict=True):
        assert torch.equal(x["clip"], y["clip"]) and torch.equal(x["video_index"], y["video_index"])
    other_epoch = batches(ds, synthetic_cfg, 0, epoch=2)
    assert not torch.equal(b0[0]["clip"], other_epoch[0]["clip"])
    assert b0[0]["clip"].shape == (4, 3, 8, 48, 48) and b0[0]["label"].dtype == torch.int64


def test_persistent_workers_follow_set_epoch(synthetic_cfg):
    synthetic_cfg.persistent_workers = True
    ds = build_dataset(synthetic_cfg, "val")
    sampler = ClipSampler(len(ds), shuffle=True, seed=0, drop_last=False)
    loader = build_loader(ds, synthetic_cfg, sampler, batch_size=8, num_workers=1)
    assert loader.persistent_workers and not loader.drop_last
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        seen.append([v for b in loader for v in b["video_index"].tolist()])
    expected = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        expected.append([i for i, _ in sampler])
    assert seen == expected and seen[0] != seen[1]


def test_default_worker_count_is_capped_at_the_cpus_available(monkeypatch, caplog, tmp_path):
    """data=kinetics400 asked for 8 loader workers on any machine (every loader warned on 2 cores); the
    default is now 8 or the CPUs this process may use, whichever is smaller, and the log says so. An
    explicit data.num_workers is used as given."""
    import os

    from nlvideo.data import config as data_config
    from tests.test_train_config import composed

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(data_config, "_logged_caps", set())
    with caplog.at_level("INFO", logger="nlvideo.data"):
        cfg = composed("data=kinetics400", f"data.root={tmp_path}")
        assert cfg.data.num_workers == 2 and cfg.data.num_workers == 2
    assert caplog.text.count("data.num_workers: 2 loader workers") == 1
    assert "only 2 CPU(s) are available to this process" in caplog.text
    assert composed("data=kinetics400", f"data.root={tmp_path}", "data.num_workers=8").data.num_workers == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert composed("data=kinetics400", f"data.root={tmp_path}").data.num_workers == 8
