"""Which checkpoint a training job continues, and what it refuses to continue: the resume rules of
:func:`nlvideo.engine.trainer.start_or_resume`, apart from the loop that applies them.

    checkpoint_to_resume  rank 0: the run dir's newest valid checkpoint, or trainer.resume=PATH (a new
                          run dir, a rerun after a requeue, a roll-back), refusing another run's files
    check_resumable       the same model, classes, data the model sees, multigrid plan (speed settings
                          may change, logged)
    lr_change             why the configured learning rate is not the checkpoint's
"""

from __future__ import annotations

import logging
import os
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING

from nlvideo.engine import checkpoint as ckpt_io
from nlvideo.engine.config import ConfigError
from nlvideo.engine.state import saved_global_batch

if TYPE_CHECKING:
    from nlvideo.engine.trainer import Loop

log = logging.getLogger("nlvideo.train")


def checkpoint_to_resume(loop: Loop, loaded: dict[str, dict]) -> tuple[str | None, bool]:
    """Rank 0: which checkpoint to resume, and whether it is ``trainer.resume=PATH`` itself, refusing
    whatever would mix two runs' files in one run dir. A checkpoint it had to read whole (to know it is
    valid) is left in ``loaded``.

    ``trainer.resume=PATH`` starts a run dir that has no valid checkpoint of its own; afterwards the run
    dir's newest valid checkpoint wins, so a requeued job (the same command again) goes on where it
    stopped. The exception is a roll-back: PATH is an older checkpoint of this run dir that the run was
    not already continued from; the newer ones are then moved to ``checkpoints/abandoned-<time>/``."""
    wanted, d = loop.cfg.trainer.resume, loop.ckpt_dir
    existing = ckpt_io.list_checkpoints(d)
    if wanted in (None, "null", False):
        if existing:
            raise ConfigError(f"trainer.resume=null, but {d} already holds {len(existing)} checkpoint(s) "
                              f"(newest {existing[-1].name}): pass trainer.resume=auto to continue that run, "
                              "or choose a new hydra.run.dir")
        return None, False
    if wanted != "auto":
        check_same_run(Path(str(wanted)), existing)
    found = ckpt_io.load_latest_valid(d)
    if found is not None:
        loaded[str(found[0])] = found[1]
    if wanted == "auto":
        if found is None:
            log.info("no valid checkpoint in %s: starting from scratch", d)
            return None, False
        return str(found[0]), False
    return explicit_resume(Path(str(wanted)), found)


def check_same_run(path: Path, existing: list[Path]) -> None:
    """``trainer.resume=PATH`` must be a readable checkpoint of the run whose checkpoints the run dir
    holds (unreadable ones are set aside)."""
    theirs = ckpt_io.run_id_of(path) if path.is_file() else None
    if theirs is None and not existing:
        raise ConfigError(f"trainer.resume={path} is not a readable nlvideo checkpoint")
    for other in existing:
        found = ckpt_io.run_id_of(other)
        if found is None:
            ckpt_io.set_aside(other, "found before resuming")
        elif theirs is not None and found != theirs:
            raise ConfigError(f"{other.parent} holds checkpoints of another run (e.g. {other.name}) than "
                              f"trainer.resume={path}: choose a new hydra.run.dir")


def explicit_resume(path: Path, newest: tuple[Path, dict] | None) -> tuple[str, bool]:
    """Rank 0, ``trainer.resume=PATH``: PATH, or the run dir's ``newest`` valid checkpoint (see
    :func:`checkpoint_to_resume`), logging which and why."""
    if newest is None:
        if not path.is_file():
            raise ConfigError(f"trainer.resume={path} does not exist, and the run dir has no checkpoint")
        log.info("trainer.resume=%s: the run dir has no checkpoint of its own; starting from it", path)
        return str(path), True
    newest_path, saved = newest
    real = os.path.realpath(path)
    if saved.get("resumed_from") == real:
        log.info("trainer.resume=%s: this run was started from it before; continuing from the run dir's "
                 "newest checkpoint %s (the same command after a requeue goes on, not back)", path,
                 newest_path)
        return str(newest_path), False
    if os.path.realpath(newest_path) == real:
        return str(newest_path), True
    if os.path.realpath(path.parent) == os.path.realpath(newest_path.parent):
        iteration = ckpt_io.iteration_of(path)
        if iteration is not None and path.is_file():
            ckpt_io.set_aside_newer(newest_path.parent, iteration,
                                    f"trainer.resume={path.name} rolls the run back; resume=auto would "
                                    "otherwise pick the abandoned branch's newer files")
            log.warning("rolling the run back to %s", path)
            return str(path), True
    log.warning("trainer.resume=%s not used: the run dir has checkpoints of its own (newest %s), which "
                "continue the run; trainer.resume=PATH only starts a run dir without any (to go back to an "
                "older checkpoint of this run, pass one of %s)", path, newest_path, newest_path.parent)
    return str(newest_path), False


def lr_change(loop: Loop, saved: dict) -> str:
    """Why the configured learning rate is not the checkpoint's: ``optim`` keys, or the global batch
    that linear scaling multiplies it by."""
    old_cfg = saved.get("config", {}).get("optim", {})
    new_cfg = loop.meta["config"]["optim"]
    keys = ("lr", "reference_batch_size", "linear_scaling")
    why = config_changes({k: old_cfg.get(k) for k in keys if k in old_cfg},
                         {k: new_cfg.get(k) for k in keys if k in new_cfg}, "optim")
    old_batch = saved_global_batch(saved, loop.global_batch)
    if old_batch != loop.global_batch and new_cfg.get("linear_scaling", True):
        why.append(f"global batch {old_batch} -> {loop.global_batch}, which optim.linear_scaling scales the "
                   "rate by")
    old_lr, new_lr = saved["scheduler"]["base_lrs"][0], loop.scheduler.base_lrs[0]
    return (f"learning rate {old_lr:g} -> {new_lr:g} ({'; '.join(why) or 'the optimizer config changed'}): "
            "continuing with the configured rate")


# What the model sees: a change trains something else from the same weights.
SEEN_BY_MODEL = tuple(f"data.{k}" for k in (
    "num_frames", "sampling_rate", "target_fps", "train_jitter_scales", "train_crop_size", "train_hflip",
    "test_scale", "test_crop_size", "mean", "std"))
# How fast the same computation runs: a resume may change them (logged).
SPEED_ONLY = ("model.nonlocal.impl", "trainer.channels_last", "trainer.compile", "trainer.sync_period",
              "trainer.tf32", "trainer.cpu_threads", "data.num_workers", "data.prefetch_factor",
              "data.decode_threads", "data.pin_memory", "data.persistent_workers")


def check_resumable(loop: Loop, saved: dict, path: str) -> None:
    """Refuse to continue a checkpoint with another model config, other data settings the model sees
    (:data:`SEEN_BY_MODEL`) or another class list (same tensor shapes would load silently and train
    something else), unless ``trainer.allow_config_change``. Settings of speed alone
    (:data:`SPEED_ONLY`, e.g. ``model.nonlocal.impl``: a computation path) may change; the log says so."""
    names = loop.meta["class_names"]
    if saved.get("class_names") is not None and list(saved["class_names"]) != names:
        raise ConfigError(f"checkpoint {path} was trained on {len(saved['class_names'])} classes "
                          f"({_preview(saved['class_names'])}), the training data has {len(names)} "
                          f"({_preview(names)}): point data.root/lists at the run's data, or choose a new "
                          "hydra.run.dir (trainer.init_weights= fine-tunes on other classes)")
    old, new = saved.get("config", {}), loop.meta["config"]
    multigrid_change(loop, saved, old, path)
    k_old, k_new = (c.get("data", {}).get("clips_per_video", 1) for c in (old, new))
    if k_old != k_new:  # the epoch's position and length count videos of k clips
        raise ConfigError(f"checkpoint {path} was trained with data.clips_per_video={k_old}, this run has "
                          f"{k_new}: resume with data.clips_per_video={k_old}, or choose a new hydra.run.dir")
    every = [c for group in ("model", "data", "trainer") for c in config_changes(old.get(group, {}),
                                                                                 new[group], group)]
    speed = [c for c in every if c.split(":")[0] in SPEED_ONLY]
    changed = [c for c in every if c not in speed
               and (c.startswith("model.") or c.split(":")[0] in SEEN_BY_MODEL)]
    if speed:
        log.info("resuming with other speed settings (same computation): %s", "; ".join(speed))
    if not changed:
        return
    what = " and ".join(sorted({c.split(".")[0] for c in changed}, reverse=True))  # model, data
    if not loop.cfg.trainer.allow_config_change:
        raise ConfigError(f"checkpoint {path} was trained with another {what} config "
                          f"({'; '.join(changed[:4])}{'; ...' if len(changed) > 4 else ''}): pass "
                          "trainer.allow_config_change=true to resume anyway, or choose a new hydra.run.dir")
    log.warning("resuming with a changed %s config (trainer.allow_config_change): %s", what,
                "; ".join(changed))


def multigrid_change(loop: Loop, saved: dict, old: dict, path: str) -> None:
    """Refuse a resume that would move the run to another multigrid plan: other ``trainer.multigrid``
    settings, another global batch, or anything else that changes the plan's epochs and steps
    (``trainer.epochs``, ``optim.steps``, the training split; the checkpoint's ``plan``): its position
    would land elsewhere in another schedule."""
    off = {"long_cycle": False, "short_cycle": False}
    before = old.get("trainer", {}).get("multigrid") or off
    now = loop.meta["config"]["trainer"].get("multigrid") or off
    active = [mg for mg in (before, now) if mg.get("long_cycle") or mg.get("short_cycle")]
    changed = config_changes(before, now, "trainer.multigrid") if active else []
    batch = saved_global_batch(saved, loop.global_batch)
    if active and batch != loop.global_batch:
        changed.append(f"global batch {batch} -> {loop.global_batch}")
    plans = [str(p).split("; ") for p in (saved.get("plan"), loop.meta.get("plan"))]
    if active and not changed and plans[0] != plans[1]:  # e.g. trainer.epochs: show the first difference
        changed += [f"{a or 'none'} -> {b or 'none'}" for a, b in zip_longest(*plans) if a != b][:1]
    if changed:
        raise ConfigError(f"checkpoint {path} was trained on another multigrid plan ({'; '.join(changed)}): "
                          "resume with its settings, or choose a new hydra.run.dir")


def config_changes(old: dict, new: dict, prefix: str) -> list[str]:
    """``key: old -> new`` for every leaf both configs have with different values."""
    out = []
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}.{key}")
        elif a != b:
            out.append(f"{prefix}.{key}: {a} -> {b}")
    return out


def _preview(names: list[str], n: int = 3) -> str:
    return ", ".join(map(str, names[:n])) + (", ..." if len(names) > n else "")
