"""Where a training run stands, apart from weights and optimizer: what a checkpoint must carry so a
killed run resumes without losing or repeating an iteration.

On disk the fields keep the names checkpoints have always used (``epoch``, ``iter_in_epoch``,
``iteration``, ``best``, per-rank ``rng``, and the ``world_size``/``per_rank_batch`` that wrote them),
so older checkpoints resume too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from nlvideo.engine import checkpoint as ckpt_io
from nlvideo.engine import distributed as du

log = logging.getLogger("nlvideo.train")


@dataclass
class TrainState:
    """Position of a run. ``step`` counts the steps of ``epoch`` already done; ``iteration`` counts
    optimizer steps over the whole run (the LR schedule's argument)."""

    epoch: int = 0
    step: int = 0
    iteration: int = 0
    best: float | None = None
    # This rank's generator states, restored just before the next batch is drawn (set by a resume).
    pending_rng: dict[str, Any] | None = None

    def state_dict(self, per_rank_batch: int) -> dict[str, Any]:
        """Collective (gathers every rank's RNG state); call on every rank."""
        return {
            "epoch": self.epoch, "iter_in_epoch": self.step, "iteration": self.iteration, "best": self.best,
            "world_size": du.get_world_size(), "per_rank_batch": per_rank_batch,
            "samples_per_rank": self.step * per_rank_batch,
            "rng": du.all_gather_object(ckpt_io.rng_state()),
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], global_batch: int) -> TrainState:
        """The position a checkpoint recorded, for this job's process count and global batch."""
        info = du.info()
        state = cls(epoch=saved["epoch"], step=saved["iter_in_epoch"], iteration=saved["iteration"],
                    best=saved.get("best"))
        rngs = saved.get("rng") or []
        if len(rngs) == info.world_size:
            state.pending_rng = rngs[info.rank]
        else:
            log.warning("checkpoint was written by %d process(es), this job has %d: RNG streams restart",
                        len(rngs), info.world_size)
        if saved.get("world_size", info.world_size) != info.world_size:  # keep the global position
            consumed = saved["iter_in_epoch"] * saved["world_size"] * saved["per_rank_batch"]
            state.step = consumed // global_batch
        return state

    def restore_rng(self) -> None:
        """Restore the generators a resume recorded (once)."""
        if self.pending_rng is not None:
            ckpt_io.set_rng_state(self.pending_rng)
            self.pending_rng = None
