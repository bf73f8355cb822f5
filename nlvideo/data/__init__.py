"""Video data pipeline: annotations, clip sampling, decord decoding, transforms, loaders.

Public API (other modules code against these names)::

    ds = build_dataset(cfg.data, "train")            # "train" | "val" | "test"
    sampler = ClipSampler(len(ds), shuffle=True, seed=cfg.seed, rank=r, world_size=w, drop_last=True)
    sampler.set_epoch(epoch, start=n)                # n = items this rank already consumed
    loader = build_loader(ds, cfg.data, sampler, batch_size=per_rank_batch)
    batch = next(iter(loader))  # clip (B,3,T,H,W) float, label, video_index, view_index, valid, failures
    # data.clips_per_video=k: an item is k clips of a video (read_clips), a batch still B clips
    test = WholeVideos(build_dataset(cfg.data, "test"))  # items: every view of a video, one decode
    videos = build_loader(test, cfg.data, ClipSampler(len(test), shuffle=False, drop_last=False), 8)
    for views in regroup_views(videos, videos.views_per_batch): ...  # 8 views a model batch
"""

import nlvideo  # noqa: F401  (torchvision compat shim before any torchvision import)
from nlvideo.data.dataset import (
    ClipSpec,
    VideoDataset,
    WholeVideos,
    build_dataset,
    clip_spec,
    data_root,
    read_clip,
    read_views,
)
from nlvideo.data.decode import DecodeError, open_video
from nlvideo.data.loader import build_loader, collate_clips, regroup_views
from nlvideo.data.sampler import ClipSampler, derive_seed

__all__ = [
    "ClipSampler",
    "ClipSpec",
    "DecodeError",
    "VideoDataset",
    "WholeVideos",
    "build_dataset",
    "build_loader",
    "clip_spec",
    "collate_clips",
    "data_root",
    "derive_seed",
    "open_video",
    "read_clip",
    "read_views",
    "regroup_views",
]
