"""Where a training run stands, apart from weights and optimizer: what a checkpoint must carry so a
killed run resumes without losing or repeating an iteration.

On disk the fields keep the names checkpoints have always used (``epoch``, ``iter_in_epoch``,
``iteration``, ``best``, per-rank ``rng``, and the ``world_size``/``per_rank_batch`` that wrote them),
so older checkpoints resume too. Newer fields: ``run_id`` (which run wrote it: checkpoint rotation
deletes only its own run's files), ``epoch_sums`` (the running epoch's loss/accuracy/skipped
totals, so epoch metrics after a mid-epoch resume cover the whole epoch), ``samples`` and
``iters_per_epoch`` (the position in the epoch in clips, and the epoch's length in steps: a resume with
another global batch continues at the same clip) and ``resumed_from`` (the ``trainer.resume=PATH``
the run was started or rolled back from: a rerun of that command continues the run instead).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from nlvideo.engine import checkpoint as ckpt_io
from nlvideo.engine import distributed as du

log = logging.getLogger("nlvideo.train")


@dataclass
class Meter:
    """Sums over a span of iterations (a logging window or an epoch); all but the times are summed over
    ranks, so every rank holds the same values."""

    loss: float = 0.0  # loss x clips
    correct: float = 0.0  # top-1 hits
    n: float = 0.0  # clips
    skipped: float = 0.0  # unreadable reads replaced by another video
    data_time: float = 0.0  # this rank's seconds waiting for data
    time: float = 0.0  # this rank's seconds per iteration
    iters: int = 0

    def add(self, reduced: torch.Tensor, data_time: float, iter_time: float) -> None:
        """Add one step's all-reduced (loss x clips, hits, clips, ..., skipped) and its times."""
        self.loss += float(reduced[0])
        self.correct += float(reduced[1])
        self.n += float(reduced[2])
        self.skipped += float(reduced[5])
        self.data_time += data_time
        self.time += iter_time
        self.iters += 1


@dataclass
class TrainState:
    """Position of a run. ``step`` counts the steps of ``epoch`` already done; ``iteration`` counts
    optimizer steps over the whole run (the LR schedule's argument)."""

    epoch: int = 0
    step: int = 0
    iteration: int = 0
    best: float | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    epoch_sum: Meter = field(default_factory=Meter)  # totals of the steps of ``epoch`` done so far
    samples: int = 0  # clips of ``epoch`` trained so far, all ranks together: the epoch order's first ones
    resumed_from: str | None = None  # the trainer.resume=PATH (real path) this run was started from
    # This rank's generator states, restored just before the next batch is drawn (set by a resume).
    pending_rng: dict[str, Any] | None = None

    def state_dict(self, per_rank_batch: int, iters_per_epoch: int) -> dict[str, Any]:
        """Collective (gathers every rank's RNG state); call on every rank. A state resumed but not yet
        trained from saves the generator states it will restore."""
        return {
            "epoch": self.epoch, "iter_in_epoch": self.step, "iteration": self.iteration, "best": self.best,
            "run_id": self.run_id, "epoch_sums": asdict(self.epoch_sum),
            "world_size": du.get_world_size(), "per_rank_batch": per_rank_batch,
            "iters_per_epoch": iters_per_epoch, "samples": self.samples,
            "samples_per_rank": self.samples // du.get_world_size(), "resumed_from": self.resumed_from,
            "rng": du.all_gather_object(self.pending_rng or ckpt_io.rng_state()),
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], global_batch: int, iters_per_epoch: int) -> TrainState:
        """The position a checkpoint recorded, for this job's process count and global batch."""
        info, saved_batch = du.info(), saved_global_batch(saved, global_batch)
        state = cls(epoch=saved["epoch"], step=saved["iter_in_epoch"], iteration=saved["iteration"],
                    best=saved.get("best"), run_id=str(saved.get("run_id") or ""),
                    epoch_sum=Meter(**saved.get("epoch_sums") or {}),
                    samples=int(saved.get("samples", saved["iter_in_epoch"] * saved_batch)),
                    resumed_from=saved.get("resumed_from"))
        if state.step and "epoch_sums" not in saved:
            log.warning("checkpoint has no epoch totals: this epoch's train/epoch_* cover only the steps "
                        "after the resume")
        rngs = saved.get("rng") or []
        if len(rngs) == info.world_size:
            state.pending_rng = rngs[info.rank]
        else:
            log.warning("checkpoint was written by %d process(es), this job has %d: RNG streams restart",
                        len(rngs), info.world_size)
        if saved_batch != global_batch:
            state.renumber(saved, saved_batch, global_batch, iters_per_epoch)
        return state

    def renumber(self, saved: dict[str, Any], old_batch: int, global_batch: int,
                 iters_per_epoch: int) -> None:
        """Count the position in steps of ``global_batch`` clips (data.batch_size or the process count
        changed): the epoch goes on after the same clips (:attr:`samples`; when they are not a whole
        number of new steps, the next step is a short one: :func:`nlvideo.engine.trainer.short_batch`),
        and the iteration (the LR schedule's argument, the checkpoints' number) is that of the epoch's
        start in epochs of ``iters_per_epoch`` steps plus the steps done in it."""
        old_step, old_iteration = self.step, self.iteration
        old_per_epoch = saved.get("iters_per_epoch") or (
            (old_iteration - old_step) // self.epoch if self.epoch else iters_per_epoch)
        epoch_start = round((old_iteration - old_step) * iters_per_epoch / max(old_per_epoch, 1))
        self.step = self.samples // global_batch
        self.iteration = epoch_start + self.step
        log.warning("global batch %d -> %d (data.batch_size %s -> %d, %s -> %d process(es)): epoch %d "
                    "goes on after its first %d clips, at step %d of %d (was step %d); iteration %d -> %d",
                    old_batch, global_batch, saved.get("per_rank_batch", "?"),
                    global_batch // du.get_world_size(), saved.get("world_size", "?"), du.get_world_size(),
                    self.epoch + 1, self.samples, self.step, iters_per_epoch, old_step, old_iteration,
                    self.iteration)

    def restore_rng(self) -> None:
        """Restore the generators a resume recorded (once)."""
        if self.pending_rng is not None:
            ckpt_io.set_rng_state(self.pending_rng)
            self.pending_rng = None


def saved_global_batch(saved: dict[str, Any], default: int) -> int:
    """Clips per step, all ranks together, of the run that wrote checkpoint ``saved`` (``default`` for
    checkpoints that do not say)."""
    if "per_rank_batch" not in saved:
        return default
    return int(saved.get("world_size", du.get_world_size())) * int(saved["per_rank_batch"])
