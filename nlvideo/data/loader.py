"""DataLoader construction: workers, pinned memory, persistent workers, seeding, collate.

The sampler (normally :class:`~nlvideo.data.sampler.ClipSampler`) runs in the main process, so
``sampler.set_epoch`` works with persistent workers. Augmentation randomness comes from the
sampler's per-sample seeds, so results do not depend on ``num_workers``; the worker seeding
below only makes any *other* use of ``random``/``numpy``/``torch`` in workers deterministic.
The loader gets its own ``torch.Generator`` so that creating iterators does not consume the
global torch RNG of the training process.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from nlvideo.data.config import flag, number


def collate_clips(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; concatenate the per-item ``failures`` lists into one flat list."""
    out: dict[str, Any] = {}
    for key in items[0]:
        if key == "failures":
            out[key] = [f for item in items for f in item[key]]
        else:
            out[key] = torch.stack([item[key] for item in items])
    return out


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
) -> DataLoader:
    """DataLoader over ``dataset`` in ``sampler`` order.

    ``drop_last`` (incomplete final batch) defaults to True for the train split, False otherwise.
    ``num_workers`` defaults to ``data.num_workers``.
    """
    kwargs = loader_options(cfg)
    if num_workers is not None:
        kwargs["num_workers"] = num_workers
    if drop_last is None:
        drop_last = getattr(dataset, "split", "train") == "train"
    if kwargs["num_workers"] == 0:  # torch refuses these without workers
        del kwargs["persistent_workers"], kwargs["prefetch_factor"]
    else:
        kwargs["worker_init_fn"] = seed_worker
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        collate_fn=collate_clips,
        generator=torch.Generator().manual_seed(int(getattr(sampler, "seed", 0))),
        **kwargs,
    )


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

