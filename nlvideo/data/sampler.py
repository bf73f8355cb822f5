"""Epoch-wise sampler that makes clips reproducible across worker counts, ranks and resumes.

:class:`ClipSampler` yields ``(index, aug_seed)`` tuples. The per-epoch order is a permutation
seeded by ``(seed, epoch)``; ``aug_seed`` is derived from ``(seed, epoch, position in that global
order)``. The dataset draws *all* of a sample's randomness from ``aug_seed``, so the same (seed,
epoch, position) gives the same clip whether it is decoded in the main process or any worker, by
whichever rank, and whether or not the run was resumed mid-epoch.

Distributed split as ``torch.utils.data.DistributedSampler``: rank ``r`` of ``W`` takes global
positions ``r, r + W, r + 2W, ...``; with ``drop_last`` the order is truncated to a multiple of
``W``, otherwise padded by repeating its beginning, so every rank has the same number of samples
(DDP deadlocks when ranks run different numbers of batches). With padding some samples appear
twice in an epoch; evaluation drops them again (the padded positions are those past the end of the
order, see :func:`nlvideo.engine.evaluate.rank_positions_kept`), so every view counts once.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def derive_seed(*parts: int) -> int:
    """A well-mixed non-negative 63-bit seed from integers (stable across runs and platforms)."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class ClipSampler(Sampler):
    """``(index, aug_seed)`` for this rank, in the epoch's order (see the module docstring).

    ``set_epoch(epoch, start)`` selects the epoch and, to resume mid-epoch, skips the ``start``
    samples this rank already consumed: the remaining ones are the same as in an uninterrupted run.
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        if drop_last:
            self.per_rank = num_samples // world_size
        else:
            self.per_rank = -(-num_samples // world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch; ``start`` = samples this rank already consumed in it (mid-epoch resume)."""
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start {start} not in [0, {self.per_rank}] (samples per rank)")
        self.epoch = int(epoch)
        self.start = int(start)

    def global_order(self) -> list[int]:
        """The epoch's order over all ranks, truncated or padded to ``per_rank * world_size``."""
        n = self.num_samples
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        total = self.per_rank * self.world_size
        while len(order) < total:  # padding (drop_last=False); n >= 1 here
            order += order[: total - len(order)]
        return order[:total]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.global_order()
        for i in range(self.start, self.per_rank):
            pos = self.rank + i * self.world_size
            yield order[pos], derive_seed(self.seed, self.epoch, pos)

    def __len__(self) -> int:
        return self.per_rank - self.start


class GridBatchSampler(Sampler):
    """Batches of a :class:`ClipSampler`'s ``(index, aug_seed)`` items whose sizes and sampling grids
    follow a training plan (:class:`~nlvideo.engine.plan.TrainPlan`: multigrid training): step ``s`` of
    the epoch is ``plan.batch(epoch, s)`` = (grid, clips per process), each item ``(index, aug_seed,
    grid)`` for the dataset to decode at that grid.

    It follows the clip sampler's ``set_epoch(epoch, start)``: ``start`` (this rank's clips already
    trained) is a step boundary of the plan, and batching goes on from that step, so a resumed epoch
    has the same batches as an uninterrupted one. Every rank batches its own share the same way: all
    ranks train the same grid each step. An incomplete last batch is dropped."""

    def __init__(self, sampler: ClipSampler, plan):
        self.sampler = sampler
        self.plan = plan

    def _steps(self) -> tuple[int, int]:
        epoch = self.sampler.epoch
        return self.plan.step_after(epoch, self.sampler.start), self.plan.steps(epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch, (step, steps) = self.sampler.epoch, self._steps()
        items = iter(self.sampler)
        for s in range(step, steps):
            grid, size = self.plan.batch(epoch, s)
            batch = [(index, seed, grid) for index, seed in itertools.islice(items, size)]
            if len(batch) < size:
                return
            yield batch

    def __len__(self) -> int:
        step, steps = self._steps()
        return steps - step
