"""DataLoader construction: workers, pinned memory, persistent workers, seeding, collate; the views of
whole-video batches regrouped into model batches (:func:`regroup_views`); items of several training
clips (``data.clips_per_video``) flattened into batches of clips (:func:`collate_clip_groups`).

The sampler (normally :class:`~nlvideo.data.sampler.ClipSampler`) runs in the main process, so
``sampler.set_epoch`` works with persistent workers. Augmentation randomness comes from the
sampler's per-sample seeds, so results do not depend on ``num_workers``; the worker seeding
below only makes any *other* use of ``random``/``numpy``/``torch`` in workers deterministic.
The loader gets its own ``torch.Generator`` so that creating iterators does not consume the
global torch RNG of the training process.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from nlvideo.data.config import flag, number


def collate_clips(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; concatenate the per-item ``failures`` lists into one flat list. A batch of one
    item is that item's tensors with a batch dimension, not a copy (a whole 10x3 test video is 750 MiB
    of views, and one a batch)."""
    out: dict[str, Any] = {}
    for key in items[0]:
        if key == "failures":
            out[key] = [f for item in items for f in item[key]]
        elif len(items) == 1:
            out[key] = items[0][key].unsqueeze(0)
        else:
            out[key] = torch.stack([item[key] for item in items])
    return out


def collate_clip_groups(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Items of k training clips each (``clip`` (k, 3, T, H, W) and every other tensor (k, ...):
    ``data.clips_per_video``) as one batch of their clips, each item's k clips adjacent: ``clip`` (B, 3,
    T, H, W) with B = items x k, what a batch of single clips is, so the training step and the model see
    no difference. ``failures`` concatenated."""
    return {key: [f for item in items for f in item[key]] if key == "failures"
            else torch.cat([item[key] for item in items]) for key in items[0]}


def videos_per_step(batch_size: int, clips_per_video: int) -> int:
    """Items (videos) in a training batch of ``batch_size`` clips, ``clips_per_video`` from each; a
    ``ValueError`` naming both keys when the clips do not divide evenly."""
    if batch_size % clips_per_video:
        raise ValueError(f"data.batch_size={batch_size} is not a multiple of data.clips_per_video="
                         f"{clips_per_video}: a step holds batch_size / clips_per_video videos of "
                         "clips_per_video clips each")
    return batch_size // clips_per_video


PER_VIEW = ("clip", "view_index", "valid")  # keys with one entry per view in a batch of whole videos


def views_of(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch of whole videos (``clip`` (B, V, 3, T, H, W), :class:`~nlvideo.data.dataset.WholeVideos`)
    as the batch of their B*V views, video by video: ``clip``, ``view_index`` and ``valid`` flattened
    (no copy), ``label`` and ``video_index`` repeated per view, ``failures`` as they are. A batch of
    views (``clip`` (B, 3, T, H, W)) comes back as it is."""
    if batch["clip"].dim() != 6:
        return batch
    views = batch["clip"].shape[1]
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key == "failures":
            out[key] = value
        elif key in PER_VIEW:
            out[key] = value.flatten(0, 1)
        else:
            out[key] = value.repeat_interleave(views, dim=0)
    return out


def regroup_views(batches: Iterable[dict[str, Any]], size: int | None) -> Iterator[dict[str, Any]]:
    """The views of ``batches`` (of whole videos or of views, :func:`views_of`) in batches of ``size``
    views, in order, the last one smaller: what the model is given, whatever the number of views per
    video. A batch's ``failures`` come with the first batch yielded after it arrived. ``size`` None:
    each batch's views as one batch.

    A batch that lies within one incoming batch is a slice of it (no copy, pinned memory stays
    pinned); one that spans two is concatenated."""
    pending: list[dict[str, torch.Tensor]] = []  # views not yet yielded, in order
    count, failures = 0, []
    for batch in batches:
        views = views_of(batch)
        failures += views.get("failures") or []
        tensors = {k: v for k, v in views.items() if k != "failures"}
        if size is None:
            yield {**tensors, "failures": failures}
            failures = []
            continue
        pending.append(tensors)
        count += len(tensors["clip"])
        while count >= size:
            yield {**_take(pending, size), "failures": failures}
            count, failures = count - size, []
    if count:
        yield {**_take(pending, count), "failures": failures}


def _take(pending: list[dict[str, torch.Tensor]], size: int) -> dict[str, torch.Tensor]:
    """The first ``size`` views of ``pending``, removed from it."""
    pieces = []
    while size:
        head = pending[0]
        n = len(head["clip"])
        if n <= size:
            pieces.append(pending.pop(0))
        else:
            pieces.append({k: v[:size] for k, v in head.items()})
            pending[0] = {k: v[size:] for k, v in head.items()}
        size -= min(n, size)
    if len(pieces) == 1:
        return pieces[0]
    return {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}


def seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # per-worker seed set by the DataLoader from its generator
    random.seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)  # decoding/transforms of one clip per worker; avoid oversubscription


def build_loader(
    dataset: Dataset,
    cfg: Mapping,
    sampler: Sampler,
    batch_size: int,
    drop_last: bool | None = None,
    num_workers: int | None = None,
    batch_sampler: Sampler | None = None,
) -> DataLoader:
    """DataLoader over ``dataset`` in ``sampler`` order, ``batch_size`` clips a batch.

    ``drop_last`` (incomplete final batch) defaults to True for the train split, False otherwise.
    ``num_workers`` defaults to ``data.num_workers``. A dataset of whole videos (``views_per_item`` V
    views an item: :class:`~nlvideo.data.dataset.WholeVideos`) is batched ``max(1, batch_size // V)``
    videos at a time, and the loader's ``views_per_batch`` (``batch_size``; None for other datasets) is
    the model batch that the evaluation regroups their views into (:func:`regroup_views`). A dataset of
    k clips an item (``clips_per_item`` > 1: ``data.clips_per_video``) is batched ``batch_size / k``
    items at a time, collated into ``batch_size`` clips (:func:`collate_clip_groups`). A
    ``batch_sampler`` (multigrid training: :class:`~nlvideo.data.sampler.GridBatchSampler` over
    ``sampler``) makes the batches instead, of the sizes it chooses.
    """
    views = getattr(dataset, "views_per_item", None)
    clips = getattr(dataset, "clips_per_item", 1)
    kwargs = loader_options(cfg)
    if num_workers is not None:
        kwargs["num_workers"] = num_workers
    if drop_last is None:
        drop_last = getattr(dataset, "split", "train") == "train"
    if kwargs["num_workers"] == 0:  # torch refuses these without workers
        del kwargs["persistent_workers"], kwargs["prefetch_factor"]
    else:
        kwargs["worker_init_fn"] = seed_worker
    items = videos_per_step(batch_size, clips) if views is None else max(1, batch_size // views)
    if batch_sampler is None:
        batching = {"batch_size": items, "sampler": sampler, "drop_last": drop_last}
    else:
        batching = {"batch_sampler": batch_sampler}
    loader = DataLoader(
        dataset,
        **batching,
        collate_fn=collate_clips if clips == 1 else collate_clip_groups,
        generator=torch.Generator().manual_seed(int(getattr(sampler, "seed", 0))),
        **kwargs,
    )
    loader.views_per_batch = None if views is None else batch_size
    return loader


def loader_options(cfg: Mapping) -> dict[str, Any]:
    """The ``data`` keys of :class:`~torch.utils.data.DataLoader`, checked: ``num_workers``,
    ``prefetch_factor`` (null or 0: torch's default, 2), ``persistent_workers``, ``pin_memory`` (only
    with CUDA)."""
    prefetch = number(cfg, "prefetch_factor", integer=True, at_least=0, optional=True)
    return {
        "num_workers": number(cfg, "num_workers", integer=True, at_least=0),
        "prefetch_factor": prefetch or None,
        "persistent_workers": flag(cfg, "persistent_workers"),
        "pin_memory": flag(cfg, "pin_memory") and torch.cuda.is_available(),
    }

