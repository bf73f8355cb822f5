"""What every training step trains on: its sampling grid (frames x crop) and its clips per process.

A standard run trains one grid, ``data.num_frames`` x ``data.train_crop_size``, at ``data.batch_size``
clips per step, every epoch the same (:func:`standard_plan`). **Multigrid training** (C.-Y. Wu, R.
Girshick, K. He, C. Feichtenhofer, P. Krähenbühl, *A Multigrid Method for Efficiently Training Video
Models*, CVPR 2020; ``trainer.multigrid``) changes the grid on a schedule and scales the batch so each
step costs about the same (clips x frames x crop² constant, :func:`batch_factor`):

- the **long cycle** (``long_cycle``) visits coarse-to-fine base grids ``long_cycle_factors`` (frames,
  crop relative to the target) once per learning-rate stage, each grid for an equal number of steps,
  then trains the last stage (fine-tuning) at the target grid; the learning rate of a stage is scaled
  with its batch (linear scaling); one grid per epoch, so it changes at epoch boundaries;
- the **short cycle** (``short_cycle``) changes the crop every step: ``short_cycle_factors`` x the
  target crop, then the epoch's base grid, in turn (batches 4x, 2x, 1x with the default factors);
- the run lasts ``epoch_factor`` x ``trainer.epochs`` epochs (multigrid epochs are cheaper).

The schedule's numbers follow PySlowFast's ``MULTIGRID.*`` (``slowfast/utils/multigrid.py``): the same
long-cycle epochs, fine-tuning length (the same step saving as the rest of the run) and learning-rate
stages. Fewer frames cover the clip's whole span (a larger sampling rate), a smaller crop the same
picture (scales shrink with it): a coarser sampling grid of the same clip, and a smaller decode
(:func:`grid_spec`).

A plan is a pure function of the config and the clips per process, so every rank computes the same one
(all ranks train the same grid each step) and a resumed run finds each step where it was.
"""

from __future__ import annotations

import bisect
import logging
import math
import statistics
from dataclasses import dataclass, replace
from itertools import accumulate

from omegaconf import DictConfig, ListConfig, OmegaConf

from nlvideo.engine.faults import FaultInjection

log = logging.getLogger("nlvideo.train")


@dataclass(frozen=True)
class Grid:
    """A clip's sampling grid: frames and square crop size."""

    frames: int
    crop: int


@dataclass(frozen=True)
class EpochShape:
    """The steps of one epoch: ``cycle`` lists (grid index, clips per process) of consecutive steps,
    repeated until the epoch's clips run out; ``lr_scale`` multiplies the learning rate."""

    cycle: tuple[tuple[int, int], ...]
    lr_scale: float = 1.0


class TrainPlan:
    """Grids and batch sizes of every step of a run. ``grids[0]`` is the target grid (validation,
    precise BN). Epochs past the last listed one repeat it (a standard run's ``trainer.max_iters`` may
    go beyond ``trainer.epochs``)."""

    def __init__(self, grids: list[Grid], epochs: list[EpochShape], clips_per_rank: int, batch: int,
                 max_steps_per_epoch: int | None = None, lr_steps: list[float] | None = None,
                 base_epochs: int | None = None):
        self.grids = grids
        self.batch_size = batch  # clips per process of a step of the target grid
        self.epochs = epochs
        self.clips_per_rank = clips_per_rank
        self.max_steps_per_epoch = max_steps_per_epoch
        self.lr_steps = lr_steps  # learning-rate milestones in epochs of this plan (None: optim.steps)
        self.base_epochs = base_epochs or len(epochs)  # trainer.epochs: what the plan's epochs stand for
        self._starts = [0, *accumulate(self.steps(e) for e in range(len(epochs)))]

    @property
    def varies(self) -> bool:
        """Whether grids or batch sizes change during the run (multigrid)."""
        return len(set(self.epochs)) > 1 or len(self.epochs[0].cycle) > 1

    @property
    def num_epochs(self) -> int:
        return len(self.epochs)

    @property
    def target_steps(self) -> int:
        """Steps of a standard epoch (the target grid at ``batch_size``), at most ``max_steps_per_epoch``."""
        return self._truncated(self.clips_per_rank // self.batch_size)

    def _truncated(self, steps: int) -> int:
        return min(steps, self.max_steps_per_epoch) if self.max_steps_per_epoch else steps

    def shape(self, epoch: int) -> EpochShape:
        return self.epochs[min(epoch, len(self.epochs) - 1)]

    def steps(self, epoch: int) -> int:
        """Steps of ``epoch``: whole batches of the cycle out of ``clips_per_rank`` (the rest is dropped,
        as a standard loader drops an incomplete last batch), at most ``max_steps_per_epoch``."""
        return self._truncated(self._whole_steps(epoch, self.clips_per_rank)[0])

    def _whole_steps(self, epoch: int, clips: int) -> tuple[int, int]:
        """(steps of ``epoch`` that ``clips`` clips per process fill, clips left over)."""
        sizes = [size for _, size in self.shape(epoch).cycle]
        full, rest = divmod(clips, sum(sizes))
        steps = full * len(sizes)
        for size in sizes:
            if rest < size:
                break
            rest, steps = rest - size, steps + 1
        return steps, rest

    def batch(self, epoch: int, step: int) -> tuple[int, int]:
        """(grid index, clips per process) of ``step`` (0-based) of ``epoch``."""
        cycle = self.shape(epoch).cycle
        return cycle[step % len(cycle)]

    def clips_before(self, epoch: int, step: int) -> int:
        """Clips per process of the first ``step`` steps of ``epoch``."""
        cycle = self.shape(epoch).cycle
        full, rest = divmod(step, len(cycle))
        return full * sum(c for _, c in cycle) + sum(c for _, c in cycle[:rest])

    def step_after(self, epoch: int, clips: int) -> int:
        """The step of ``epoch`` that starts after ``clips`` clips per process; ValueError if ``clips``
        ends inside a step (a resume always lands on a step boundary of the plan it was written with)."""
        step, rest = self._whole_steps(epoch, clips)
        if rest:
            raise ValueError(f"{clips} clips per process end inside a step of epoch {epoch + 1}")
        return step

    def epoch_start(self, epoch: int) -> int:
        """Global iteration at which ``epoch`` starts."""
        if epoch < len(self._starts):
            return self._starts[epoch]
        return self._starts[-1] + (epoch - len(self.epochs)) * self.steps(len(self.epochs) - 1)

    def locate(self, iteration: int) -> tuple[int, int]:
        """(epoch, step) of global ``iteration`` (0-based)."""
        if iteration < self._starts[-1]:
            epoch = bisect.bisect_right(self._starts, iteration) - 1
        else:
            last = max(self.steps(len(self.epochs) - 1), 1)
            epoch = len(self.epochs) + (iteration - self._starts[-1]) // last
        return epoch, iteration - self.epoch_start(epoch)

    def epochs_at(self, iteration: int, per_iteration: bool = True) -> float:
        """Training progress at ``iteration`` in (fractional) epochs: the learning rate's clock."""
        epoch, step = self.locate(iteration)
        return epoch + (step / max(self.steps(epoch), 1) if per_iteration else 0.0)

    def configured_epochs(self, epochs: int) -> int:
        """Whole configured epochs (``trainer.epochs``) that ``epochs`` epochs of this plan stand for:
        validation keeps its ``trainer.eval_period`` cadence under multigrid's more, cheaper epochs."""
        return epochs * self.base_epochs // len(self.epochs)

    def fingerprint(self) -> str:
        """What a resumed run must find unchanged: every epoch's steps, the learning-rate milestones."""
        return "; ".join(self.describe()) + f"; lr steps {self.lr_steps}"

    def total_iters(self, max_iters: int | None) -> int:
        """Steps of the whole run: ``max_iters`` if set (may go past the listed epochs), else the plan's."""
        return int(max_iters) if max_iters else self._starts[-1]

    def describe(self, clips_per_sample: int = 1) -> list[str]:
        """One line per run of epochs with the same steps, for the log (``clips_per_sample``:
        ``data.clips_per_video``, the clips of each sample the plan counts)."""
        lines, e = [], 0
        while e < len(self.epochs):
            end = e
            while end + 1 < len(self.epochs) and self.epochs[end + 1] == self.epochs[e]:
                end += 1
            shape = self.epochs[e]
            steps = ", ".join(f"{self.grids[g].frames}x{self.grids[g].crop}² x{c * clips_per_sample}"
                              for g, c in shape.cycle)
            lines.append(f"epochs {e + 1}-{end + 1}: {steps} (frames x crop² x clips per process), "
                         f"{self.steps(e)} steps an epoch, lr x{shape.lr_scale:g}")
            e = end + 1
        return lines


def batch_factor(target: Grid, grid: Grid) -> int:
    """How many times more clips a step of ``grid`` holds than one of ``target`` (same cost a step)."""
    return max(1, round(target.frames * target.crop ** 2 / (grid.frames * grid.crop ** 2)))


def standard_plan(frames: int, crop: int, batch: int, epochs: int, clips_per_rank: int,
                  max_steps_per_epoch: int | None = None) -> TrainPlan:
    """One grid and batch for every step: a run without multigrid."""
    return TrainPlan([Grid(frames, crop)], [EpochShape(((0, batch),))] * max(int(epochs), 1),
                     clips_per_rank, batch, max_steps_per_epoch)


def build_plan(cfg: DictConfig, clips_per_rank: int, batch: int) -> TrainPlan:
    """The plan of ``cfg`` (``trainer.multigrid``; standard when both cycles are off) for a training
    split of ``clips_per_rank`` samples per process, ``batch`` a step at the target grid. A sample is a
    clip, or a video of ``data.clips_per_video`` clips (what the sampler yields)."""
    t, d, mg = cfg.trainer, cfg.data, cfg.trainer.multigrid
    frames, crop = int(d.num_frames), int(d.train_crop_size)
    truncate = FaultInjection(t.debug).max_iters_per_epoch  # smoke tests' short epochs
    if not (mg.long_cycle or mg.short_cycle):
        return standard_plan(frames, crop, batch, int(t.epochs), clips_per_rank, truncate)
    target = Grid(frames, crop)
    grids = [target]

    def index(grid: Grid) -> int:
        if grid not in grids:
            grids.append(grid)
        return grids.index(grid)

    short = [round(crop * f) for f in mg.short_cycle_factors] if mg.short_cycle else []

    def cycle(base: Grid) -> tuple[tuple[int, int], ...]:
        """The steps of an epoch whose base grid is ``base``: the short cycle's crops, then ``base``."""
        steps = [Grid(base.frames, c) for c in short] + [base]
        return tuple((index(g), batch * batch_factor(target, g)) for g in steps)

    epochs, factor = int(t.epochs), float(mg.epoch_factor)
    if not mg.long_cycle:  # PySlowFast: epochs and milestones x epoch_factor, rounded down
        steps = [float(int(float(m) * factor)) for m in cfg.optim.get("steps") or []]
        return TrainPlan(grids, [EpochShape(cycle(target))] * max(1, int(epochs * factor)), clips_per_rank,
                         batch, truncate, lr_steps=steps, base_epochs=epochs)
    bases = [Grid(max(1, round(frames * ft)), max(1, round(crop * fs))) for ft, fs in mg.long_cycle_factors]
    bounds = lr_stage_bounds(cfg, epochs)
    fine_tuning = len(bounds) - 1  # the last stage, at the target grid
    scaled = bool(cfg.optim.get("linear_scaling", True))
    mean_factors = [statistics.fmean(clips / batch for _, clips in cycle(b)) for b in bases]
    parts = long_cycle_schedule(bounds, epochs, factor, mean_factors)
    shapes, stage_of = [], []
    for stage, base_index, end in parts:
        base = target if stage == fine_tuning else bases[base_index]
        shape = EpochShape(cycle(base), lr_scale=float(batch_factor(target, base)) if scaled else 1.0)
        shapes += [shape] * (end - len(shapes))
        stage_of += [stage] * (end - len(stage_of))
    lr_steps = stage_milestones(stage_of, fine_tuning) if step_schedule(cfg) else []
    return TrainPlan(grids, shapes, clips_per_rank, batch, truncate, lr_steps=lr_steps, base_epochs=epochs)


def stage_milestones(stage_of: list[int], fine_tuning: int) -> list[float]:
    """A step schedule's milestones (in the plan's epochs) from each epoch's stage: the rate drops at each
    stage's first epoch (twice where a stage rounded away) and in the middle of the fine-tuning stage,
    whose first half keeps the last long cycle's rate (PySlowFast). Stages made of
    ``trainer.multigrid.long_cycles`` (cosine, constant) add no drops: the caller gives none."""
    milestones = [float(next((e for e, st in enumerate(stage_of) if st >= s), len(stage_of)))
                  for s in range(1, fine_tuning)]
    return [*milestones, float((stage_of.index(fine_tuning) + len(stage_of)) // 2)]


def step_schedule(cfg: DictConfig) -> bool:
    """Whether ``optim`` is a step schedule with milestones: its stages hold the long cycles."""
    return cfg.optim.get("schedule") == "step" and bool(cfg.optim.get("steps"))


def lr_stage_bounds(cfg: DictConfig, epochs: int) -> list[float]:
    """Starts of the learning-rate stages that hold long cycles, in configured epochs (the last stage,
    from the last bound to the end, is the fine-tuning one): ``optim.steps`` of a step schedule, else
    ``trainer.multigrid.long_cycles`` equal stages before a fine-tuning stage of the same length."""
    if step_schedule(cfg):
        return [0.0, *sorted(float(s) for s in cfg.optim.steps if 0 < float(s) < epochs)]
    n = int(cfg.trainer.multigrid.long_cycles)
    return [epochs * i / (n + 1) for i in range(n + 1)]


def long_cycle_schedule(bounds: list[float], epochs: int, epoch_factor: float,
                        avg_batch: list[float]) -> list[tuple[int, int, int]]:
    """(stage, long-cycle grid index, end epoch) of every part of the run, PySlowFast's rule: in each
    stage the grids get epochs in proportion to their mean batch factor ``avg_batch`` (so equal steps
    each); the fine-tuning stage (last grid) keeps the step saving of the rest; the whole is scaled to
    ``epochs x epoch_factor`` epochs and rounded to whole epochs (parts rounded away are dropped). The
    fine-tuning stage keeps at least one epoch: a short run still ends at the target grid."""
    parts, steps = [], 0.0
    for stage in range(len(bounds) - 1):
        span = bounds[stage + 1] - bounds[stage]
        for g, b in enumerate(avg_batch):
            length = span * b / sum(avg_batch)
            steps += length / b
            parts.append((stage, g, length))
    saving = bounds[-1] / steps if steps else 1.0
    parts.append((len(bounds) - 1, len(avg_batch) - 1, (epochs - bounds[-1]) / saving * avg_batch[-1]))
    scale = epochs * epoch_factor / sum(p[2] for p in parts)
    out, total = [], 0.0
    for stage, g, length in parts:
        total += length * scale
        end = int(round(total))
        if end > (out[-1][2] if out else 0):
            out.append((stage, g, end))
    if not out or out[-1][0] != len(bounds) - 1:
        out.append((len(bounds) - 1, len(avg_batch) - 1, (out[-1][2] if out else 0) + 1))
    return out


def grid_spec(spec, target: Grid, grid: Grid):
    """The training :class:`~nlvideo.data.dataset.ClipSpec` of ``grid``, from the target's ``spec``: the
    same picture (scales x crop / target crop) and the same span from first to last frame (sampling rate
    x (target frames - 1) / (frames - 1)), so a coarse clip still holds what the target clip holds at
    both ends, e.g. the cue and the probe of the built-in data. (PySlowFast draws a rate between the
    target's and target's x target frames / frames, which covers up to the same number of frames.)"""
    if grid == target:
        return spec
    zoom = grid.crop / target.crop
    steps = (target.frames - 1) / (grid.frames - 1) if grid.frames > 1 else target.frames
    return replace(spec, num_frames=grid.frames, crop_size=grid.crop,
                   sampling_rate=spec.sampling_rate * steps,
                   min_scale=max(grid.crop, round(spec.min_scale * zoom)),
                   max_scale=max(grid.crop, round(spec.max_scale * zoom)))


def log_plan(plan: TrainPlan, clips_per_sample: int = 1) -> None:
    if not plan.varies:
        return
    log.info("multigrid: %d epochs, %d steps (a standard run of the target grid at %d clips per process: "
             "%d steps an epoch)", plan.num_epochs, plan.total_iters(None),
             plan.batch_size * clips_per_sample, plan.target_steps)
    for line in plan.describe(clips_per_sample):
        log.info("multigrid: %s", line)


def long_cycle_frames(cfg: DictConfig) -> list[int]:
    """Frames of the long cycle's grids (none without it), for the model's temporal-stride check."""
    mg = cfg.trainer.get("multigrid")
    if not mg or not mg.long_cycle:
        return []
    return [max(1, round(int(cfg.data.num_frames) * ft)) for ft, _ in mg.long_cycle_factors]


def check_multigrid(cfg: DictConfig) -> None:
    """``trainer.multigrid`` keys (one-line :class:`ValueError` naming the key)."""
    mg = cfg.trainer.multigrid
    for key in ("long_cycle", "short_cycle"):
        if not isinstance(mg.get(key), bool):
            raise ValueError(f"trainer.multigrid.{key}={mg.get(key)!r} must be true or false")
    if not (mg.long_cycle or mg.short_cycle):
        return
    if not _positive(mg.get("epoch_factor")):
        raise ValueError(f"trainer.multigrid.epoch_factor={mg.get('epoch_factor')!r} must be a number > 0")
    crop = int(cfg.data.train_crop_size)
    pairs = mg.get("long_cycle_factors")
    if not _listed(pairs) or not all(_listed(p) and len(p) == 2 and all(map(_fraction, p)) for p in pairs):
        raise ValueError(f"trainer.multigrid.long_cycle_factors={_shown(pairs)} must be a list of [frames, "
                         "crop] factors in (0, 1], e.g. [[0.5, 0.5], [1, 1]]")
    factors = mg.get("short_cycle_factors")
    if not _listed(factors) or not all(_fraction(x) and round(crop * x) >= 1 for x in factors):
        raise ValueError(f"trainer.multigrid.short_cycle_factors={_shown(factors)} must be a list of crop "
                         f"factors in (0, 1] that leave a crop of at least 1 of data.train_crop_size={crop}")
    for key in ("bn_base_size", "long_cycles"):
        value = mg.get(key)
        if type(value) is not int or value < 1:
            raise ValueError(f"trainer.multigrid.{key}={value!r} must be an integer >= 1")
    if cfg.optim.get("unit", "epoch") != "epoch":
        raise ValueError("trainer.multigrid needs optim.unit=epoch: its schedule is in epochs, and a step's "
                         f"size changes under it (optim.unit={cfg.optim.unit})")
    if cfg.trainer.get("compile"):
        raise ValueError("trainer.compile with trainer.multigrid: every grid and batch would compile anew "
                         "(and split batch norm recompiles per batch size); set trainer.compile=false")


def _listed(x: object) -> bool:
    return isinstance(x, (list, tuple, ListConfig))


def _fraction(x: object) -> bool:
    return _positive(x) and x <= 1


def _shown(x: object) -> str:
    return str(OmegaConf.to_container(x) if isinstance(x, ListConfig) else x)


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
