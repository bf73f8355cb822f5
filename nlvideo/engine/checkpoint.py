"""Atomic checkpoints with keep-last-K rotation, newest-valid lookup and RNG capture.

Layout: ``<run_dir>/checkpoints/checkpoint_<iteration:09d>.pt``. A write goes to a temporary file in
the same directory, is fsync'ed and then renamed over the final name (``os.replace`` is atomic on
POSIX), so a crash or SIGKILL leaves either the previous set of checkpoints or the new one, never a
truncated ``.pt``. Loading still verifies: :func:`load_latest_valid` walks the checkpoints newest
first and skips any that ``torch.load`` cannot read (e.g. a file copied in half by hand).

A checkpoint is a plain dict; the trainer decides its content (model, optimizer, scheduler, scaler,
epoch, iteration, sampler position, per-rank RNG states, config). Files hold Python objects, so
they are loaded with ``weights_only=False``: only load checkpoints you produced or trust.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")


def checkpoint_path(directory: str | os.PathLike, iteration: int) -> Path:
    return Path(directory) / f"checkpoint_{iteration:09d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files in ``directory``, oldest (lowest iteration) first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict[str, Any], directory: str | os.PathLike, iteration: int,
                    keep_last: int | None = None, _while_writing: Callable[[], None] | None = None) -> Path:
    """Atomically write ``state`` as ``checkpoint_<iteration>.pt``; then prune to the last ``keep_last``.

    ``_while_writing`` (fault injection, ``trainer.debug.kill_during_checkpoint``) is called after
    ``torch.save`` returned and before the file is flushed, synced and renamed."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(d, iteration)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            if _while_writing is not None:
                _while_writing()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(d)
    for stale in d.glob(".checkpoint_*.tmp"):  # left behind by a killed writer
        stale.unlink(missing_ok=True)
    if keep_last is not None and keep_last > 0:
        for old in list_checkpoints(d)[:-keep_last]:
            old.unlink(missing_ok=True)
    return final


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=False)


def load_latest_valid(directory: str | os.PathLike,
                      map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``directory`` that loads; unreadable ones are reported and skipped."""
    for path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path, map_location)
        except Exception as exc:  # noqa: BLE001 - any failure means "not a usable checkpoint"
            log.warning("checkpoint %s is unreadable (%s: %s); trying the previous one",
                        path, type(exc).__name__, exc)
            continue
        if not isinstance(state, dict) or "model" not in state:
            log.warning("checkpoint %s has no model state; trying the previous one", path)
            continue
        return path, state
    return None


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and, if present, CUDA) generator states of this process."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
