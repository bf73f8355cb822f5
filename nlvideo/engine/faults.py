"""Crash-test hooks (``trainer.debug.*``): the ways the reliability tests break a real run on purpose.

They live here, behind one object, so the training loop reads as training: it asks
:class:`FaultInjection` for the loss and for a checkpoint-writing hook and otherwise ignores it.
The output writers of eval.py and scripts/export.py have named kill points instead
(:func:`sigkill_point`), set by an environment variable: they have no ``trainer.debug`` config.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

import torch
from omegaconf import DictConfig

log = logging.getLogger("nlvideo.train")


class FaultInjection:
    """``trainer.debug``: ``nan_at_iter`` (NaN loss at this 1-based iteration), ``kill_during_checkpoint``
    (SIGKILL while writing this iteration's checkpoint), ``max_iters_per_epoch`` (truncated epochs)."""

    def __init__(self, debug: DictConfig | None = None):
        debug = debug or {}
        self.nan_at_iter = _int_or_none(debug.get("nan_at_iter"))
        self.kill_during_checkpoint = _int_or_none(debug.get("kill_during_checkpoint"))
        self.max_iters_per_epoch = _int_or_none(debug.get("max_iters_per_epoch"))

    def loss(self, loss: torch.Tensor, iteration: int) -> torch.Tensor:
        """``loss`` of 1-based ``iteration``, made NaN at ``nan_at_iter``."""
        return loss * float("nan") if iteration == self.nan_at_iter else loss

    def while_writing(self, iteration: int) -> Callable[[], None] | None:
        """Called by the checkpoint writer half-way through the file of ``iteration``."""
        if iteration != self.kill_during_checkpoint:
            return None

        def kill() -> None:
            log.warning("trainer.debug.kill_during_checkpoint=%d: SIGKILL while writing", iteration)
            os.kill(os.getpid(), signal.SIGKILL)

        return kill


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(value)


SIGKILL_AT = "NLVIDEO_DEBUG_SIGKILL_AT"


def sigkill_point(name: str) -> None:
    """SIGKILL this process here when the environment variable ``NLVIDEO_DEBUG_SIGKILL_AT`` is ``name``:
    how the tests kill an output writer at a chosen point (``staged``, ``publishing``: eval.py's result
    files, :func:`~nlvideo.engine.evaluate.one_evaluation`; ``exported``: scripts/export.py's file)."""
    if os.environ.get(SIGKILL_AT) == name:
        log.warning("%s=%s: SIGKILL", SIGKILL_AT, name)
        os.kill(os.getpid(), signal.SIGKILL)
