"""Compare training runs from their TensorBoard event files: the paper's training-curve figure.

    python -m nlvideo.compare outputs/c2d/RUN outputs/c2d_nl5/RUN ... --out comparison/

Each argument is a run directory, or a folder holding several (a Hydra multirun sweep): every
directory with ``events.out.tfevents.*`` files below it is one run. Runs are grouped by the
configuration they were trained with (``config_resolved.yaml`` in the run directory, else the
newest checkpoint's ``config``): runs that differ only in ``seed`` (and in settings that change no
result: paths, loader workers, logging, checkpointing, threads, ...; see ``NOT_THE_EXPERIMENT``)
are averaged into one curve with a min-max band; any other difference (dataset, width, crop, clip,
NL blocks, instantiation, lr, ...) keeps runs apart, and each curve is labelled with the model and
what sets it apart, e.g. ``i3d_nl5 · dot_product`` or ``c2d · width=8``. Runs measured by different
metrics (mAP vs top-1) are refused; runs on different datasets are compared with a warning.
``--group-by KEYS`` groups by chosen config keys instead (runs differing in others are averaged,
with a warning); ``--label DIR=TEXT`` makes the runs under DIR one curve named TEXT. Two runs of one
configuration *and* seed are not two seeds: the one that got further stays in the curve, the other is
listed apart, with a warning. A run still being written (its run-dir lock is held) or stopped far short
of its group's longest run is flagged in the table's ``notes`` and in the legend.

Writes ``curves.png`` (training error and validation error vs iteration, shared axes, one colour
per group) and ``table.md`` (final and best validation accuracy or mAP, parameters, FLOPs, clips/s of
each group's own runs); with ``--tensorboard`` also ``tensorboard/``, one link per run named by its
label, so that ``tensorboard --logdir <out>/tensorboard`` shows the runs under these names. Runs of
different lengths and runs still in progress are fine: whatever events are on disk are read.

``--x time`` draws the curves against the training wall-clock instead of the iteration: the events' wall
times, counting only time inside train.py sessions (each process writes its own events file; a session
lasts from its file's first event to its last), so a pause between a stop and its resume is left out
(:func:`merge_sessions`); seeds are averaged on a common time grid up to the shortest seed's end.
``--reach VALUE`` adds the column "time to val top-1 >= VALUE" (mean and min-max of the seeds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from nlvideo.engine.run_lock import held_by

EVENT_GLOB = "events.out.tfevents.*"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Config keys (and key prefixes) that do not define an experiment: runs differing only in these are
# one experiment. ``seed`` is what a group averages over; the others change where files are, how fast
# data loads, what is logged or kept, or only the floating-point summation order (threads,
# deterministic kernels, channels-last, compile, TF32 matmuls, the NL block's computation path, how
# often the host reads the device); ``eval_period`` changes when validation runs, not what trains.
# ``--group-by`` can still name any of them.
NOT_THE_EXPERIMENT = (
    "seed", "checkpoint", "data.root", "data.num_workers", "data.prefetch_factor", "data.decode_threads",
    "data.pin_memory", "data.persistent_workers", "data.max_retries", "model.nonlocal.impl",
    "trainer.device", "trainer.channels_last", "trainer.compile", "trainer.cpu_threads", "trainer.tf32",
    "trainer.sync_period",
    "trainer.deterministic", "trainer.eval_period", "trainer.log_period", "trainer.progress",
    "trainer.tensorboard", "trainer.checkpoint", "trainer.resume", "trainer.allow_config_change",
    "trainer.wait_for_run_dir", "trainer.preempt_signals", "trainer.dist_timeout_min",
    "trainer.preempt_exit_code", "trainer.debug.nan_at_iter", "trainer.debug.kill_during_checkpoint",
)
# Settings that change how fast a run trains but not what it learns: named in the clips/s caveat.
SPEED_KEYS = ("processes", "trainer.device", "trainer.cpu_threads", "trainer.amp", "trainer.compile",
              "trainer.channels_last", "trainer.tf32", "data.num_workers", "data.decoder")
SHORT_FRACTION = 0.5  # a run that stopped before this share of its experiment's longest run is flagged
# What tells datasets apart (data.root does not: the same data sits at other paths on other machines).
DATASET_KEYS = ("data.name", "data.format", "data.num_classes", "data.train_list", "data.val_list",
                "data.generate")
# Label parts shown as the bare value: the value names itself (``dot_product``, ``kinetics400``, ``32x2``).
BARE = ("model.name", "model.nonlocal.instantiation", "data.name", "optim.name", "clip")
PRESET_GROUPS = ("model", "data", "optim")  # config groups whose ``name`` picks a preset in configs/
NAMES = tuple(f"{group}.name" for group in PRESET_GROUPS)


class CompareError(ValueError):
    """Runs that cannot be compared as asked (one line for the user)."""


@dataclass
class Run:
    """One run's scalars (tag -> (steps, values)), the hparams the trainer logged and its settings: the
    resolved config flattened to dotted keys (``model.width``), plus ``clip`` and ``processes``."""

    path: Path
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]
    hparams: dict[str, object] = field(default_factory=dict)
    # tag -> training seconds at each of the tag's points (aligned with ``scalars``): wall-clock time
    # inside the run's train.py sessions only (:func:`merge_sessions`); a session is one events file,
    # kept as the wall times of its first and last event
    seconds: dict[str, np.ndarray] = field(default_factory=dict)
    sessions: list[tuple[float, float]] = field(default_factory=list)
    settings: dict[str, object] = field(default_factory=dict)
    running: str = ""  # the run-dir lock's holder ("host H pid P since T") while the run is being written
    note: str = ""  # what the table and figure flag: still running, stopped short (set by flag_runs)

    @property
    def last_iteration(self) -> int:
        return max((int(s[0][-1]) for s in self.scalars.values() if len(s[0])), default=0)

    @property
    def run_dir(self) -> Path:
        """train.py writes events to ``<run dir>/tb``."""
        return self.path.parent if self.path.name == "tb" else self.path

    @property
    def model(self) -> str:
        return str(self.settings.get("model.name", self.hparams.get("model", self.run_dir.name)))

    @property
    def multi_label(self) -> bool:
        if "data.multi_label" in self.settings:
            return bool(self.settings["data.multi_label"])
        return "val/mAP" in self.scalars

    @property
    def metric(self) -> str:
        return "mAP" if self.multi_label else "top-1"

    @property
    def trained_seconds(self) -> float:
        """Wall-clock seconds inside the run's sessions (validation and precise BN included, the gaps
        between a stop and its resume not)."""
        return sum(end - start for start, end in self.sessions)

    def series(self, tag: str, x: str = "iter") -> tuple[np.ndarray, np.ndarray] | None:
        """(x, values) of a tag: x is the iteration (``x="iter"``) or the training seconds (``"time"``)."""
        if tag not in self.scalars:
            return None
        steps, values = self.scalars[tag]
        return (self.seconds[tag], values) if x == "time" else (steps, values)


def find_event_dirs(paths: list[Path]) -> list[Path]:
    """Directories holding event files under each given path; a path with none is an error."""
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"compare: {path} does not exist")
        dirs = sorted({f.parent for f in path.rglob(EVENT_GLOB)})
        if not dirs:
            raise FileNotFoundError(
                f"compare: no TensorBoard event files ({EVENT_GLOB}) under {path}; "
                "pass a run directory written by train.py (it has a tb/ folder)"
            )
        found.extend(d for d in dirs if d not in found)
    return found


# The trainer's HPARAMS names (chosen so that TensorBoard's first five columns, sorted by name, include
# model and num_nonlocal) -> the names this module uses, which older runs wrote.
HPARAM_ALIASES = {"per_clip_gflops": "gflops", "optim_batch": "global_batch"}


# The trainer's scalar tags (grouped so that TensorBoard, which sorts by tag, shows accuracy and loss
# first) -> the names this module uses, which older runs wrote.
TAG_ALIASES = {"accuracy/train_top1": "train/top1", "loss/train": "train/loss", "loss/val": "val/loss",
               "accuracy/train_epoch_top1": "train/epoch_top1", "loss/train_epoch": "train/epoch_loss",
               "accuracy/val_top1": "val/top1", "accuracy/val_top5": "val/top5",
               "accuracy/val_mAP": "val/mAP"}


def _hparams(accumulator) -> dict[str, object]:
    from tensorboard.plugins.hparams import plugin_data_pb2

    try:
        content = accumulator.PluginTagToContent("hparams")
    except KeyError:  # a run that logged no hparams (yet)
        return {}
    for blob in content.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(blob)
        if data.HasField("session_start_info"):
            out = {}
            for key, value in data.session_start_info.hparams.items():
                kind = value.WhichOneof("kind")
                out[HPARAM_ALIASES.get(key, key)] = getattr(value, kind) if kind else None
            return out
    return {}


@dataclass
class Session:
    """One events file: what one train.py process wrote (each process opens a new file). ``scalars``:
    tag -> (steps, values, wall times); ``start``/``end``: the wall time of its first and last event."""

    start: float
    end: float
    scalars: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    hparams: dict[str, object]


def read_session(path: Path) -> Session | None:
    """An events file's scalars (by this module's tag names), hparams and wall-clock span; None when it
    holds no event yet."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    walls = [event.wall_time for event in EventFileLoader(str(path)).Load()]
    if not walls:
        return None
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        scalars[TAG_ALIASES.get(tag, tag)] = tuple(
            np.array([getattr(e, name) for e in events]) for name in ("step", "value", "wall_time"))
    return Session(start=min(walls), end=max(walls), scalars=scalars, hparams=_hparams(acc))


def merge_sessions(sessions: list[Session]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                                     dict[str, np.ndarray]]:
    """One run's curves from its sessions (events files), in the order they started: (tag -> (steps,
    values), tag -> training seconds).

    A resumed session goes on from its checkpoint, so it logs again the iterations its predecessor ran
    after that checkpoint: for each tag, the earlier sessions' points at or after the resumed session's
    first step are dropped. Training seconds count wall-clock time inside sessions only (from a file's
    first event to its last, one session after another), so a run stopped overnight and resumed in the
    morning is as long as the work it did; the dropped iterations' time stays counted (it was spent)."""
    points: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    offset = 0.0
    for session in sorted(sessions, key=lambda s: s.start):
        for tag, (steps, values, walls) in session.scalars.items():
            kept = [tuple(a[p[0] < steps[0]] for a in p) for p in points.get(tag, [])]
            points[tag] = [*kept, (steps, values, offset + walls - session.start)]
        offset += session.end - session.start
    scalars = {tag: (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
               for tag, parts in points.items()}
    seconds = {tag: np.concatenate([p[2] for p in parts]) for tag, parts in points.items()}
    return scalars, seconds


def load_run(event_dir: Path) -> Run:
    sessions = [s for f in sorted(event_dir.glob(EVENT_GLOB)) if (s := read_session(f)) is not None]
    scalars, seconds = merge_sessions(sessions)
    hparams = next((s.hparams for s in sorted(sessions, key=lambda s: -s.start) if s.hparams), {})
    run = Run(path=event_dir, scalars=scalars, hparams=hparams, seconds=seconds,
              sessions=sorted((s.start, s.end) for s in sessions))
    run.running = held_by(run.run_dir)
    config = run_config(run.run_dir)
    run.settings = settings_of(config, run.hparams) if config else {}
    return run


def run_config(run_dir: Path) -> dict | None:
    """The resolved config a run was trained with: ``config_resolved.yaml``, else the newest
    checkpoint's ``config`` (read only: an unreadable checkpoint is skipped, not moved)."""
    path = run_dir / "config_resolved.yaml"
    if path.is_file():
        import yaml

        try:
            config = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            reason = getattr(exc, "problem", None) or type(exc).__name__
            raise CompareError(f"compare: {path} is not valid YAML ({reason}{line}): restore it from the "
                               "run's checkpoint config or move it aside") from None
        if not isinstance(config, dict):
            raise CompareError(f"compare: {path} holds no config mapping (found {type(config).__name__}): "
                               "restore it from the run's checkpoint config or move it aside")
        return config
    from nlvideo.engine.checkpoint import list_checkpoints, load_checkpoint

    for ckpt in reversed(list_checkpoints(run_dir / "checkpoints")):
        try:
            return load_checkpoint(ckpt).get("config")
        except Exception:  # noqa: BLE001 - any failure means "no config from this file"
            continue
    return None


def flatten(node: dict, prefix: str = "") -> dict[str, object]:
    """``{"model": {"width": 8}}`` -> ``{"model.width": 8}``; lists become tuples, nested ones too
    (``trainer.multigrid.long_cycle_factors``), so that every value is hashable."""
    out: dict[str, object] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = _hashable(value)
    return out


def _hashable(value: object) -> object:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    return value


def settings_of(config: dict, hparams: dict[str, object]) -> dict[str, object]:
    """A run's config as dotted keys, with ``clip`` (frames x sampling rate) in place of the three keys
    the ``clip`` group sets, and ``processes``, which the config does not say (the global batch the
    trainer logged over ``data.batch_size``, which is per process)."""
    flat = flatten(config)
    if not flat.get("model.nonlocal.positions"):  # no NL block: its options change nothing
        flat = {k: v for k, v in flat.items() if not k.startswith("model.nonlocal.")}
    frames, rate = flat.pop("data.num_frames", None), flat.pop("data.sampling_rate", None)
    variant = flat.pop("model.input_variant", None)
    if frames is not None:
        clip = f"{frames}x{rate}"
        flat["clip"] = clip if variant in (None, clip) else f"{clip} ({variant} strides)"
    if "global_batch" in hparams and flat.get("data.batch_size"):
        flat["processes"] = int(hparams["global_batch"]) // int(flat["data.batch_size"])
    return flat


def experiment(settings: dict[str, object]) -> dict[str, object]:
    """The settings that define an experiment (all but :data:`NOT_THE_EXPERIMENT`)."""
    return {k: v for k, v in settings.items() if not _under(k, NOT_THE_EXPERIMENT)}


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def error_curves(run: Run, x: str = "iter") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Training and validation error (%) vs iteration (``x="iter"``) or training seconds (``"time"``);
    mAP runs plot 100 - mAP for validation."""
    curves = {}
    train = run.series("train/top1", x)
    if train is not None:
        curves["train"] = (train[0], 100.0 - train[1])
    val = run.series(val_tag(run), x)
    if val is not None:
        curves["val"] = (val[0], 100.0 - val[1])
    return curves


def val_tag(run: Run) -> str:
    return "val/mAP" if run.multi_label else "val/top1"


def _mean_band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Mean and min/max over runs, on the steps all runs reached (runs may have different lengths)."""
    common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
    if not common:  # nothing shared: show the longest run alone
        steps, values = max(curves, key=lambda c: len(c[0]))
        return steps, values, values, values
    stacked = np.stack([np.interp(common, s, v) for s, v in curves])
    return np.array(common), stacked.mean(0), stacked.min(0), stacked.max(0)


TIME_GRID = 200  # points of the common time grid that seeds are averaged on


def _mean_band_in_time(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Mean and min/max over runs against training time. Seeds log at different times, so each run's
    curve is interpolated linearly on a common grid of ``TIME_GRID`` times, from the latest first point
    to the shortest run's end (no run is extrapolated; the longer runs' tails are not averaged)."""
    start, end = max(t[0] for t, _ in curves), min(t[-1] for t, _ in curves)
    if start >= end:  # no span all runs cover: show the longest run alone
        times, values = max(curves, key=lambda c: c[0][-1])
        return times, values, values, values
    grid = np.linspace(start, end, TIME_GRID)
    stacked = np.stack([np.interp(grid, t, v) for t, v in curves])
    return grid, stacked.mean(0), stacked.min(0), stacked.max(0)


def time_unit(groups: dict[str, list[Run]]) -> tuple[float, str]:
    """Seconds per unit of the time axis: hours, or minutes when every run is shorter than an hour."""
    longest = max((r.trained_seconds for rs in groups.values() for r in rs), default=0.0)
    return (3600.0, "hours") if longest >= 3600 else (60.0, "minutes")


def reach_index(run: Run, target: float) -> int | None:
    """Index of the run's first validation whose metric (top-1 or mAP, %) is >= target."""
    val = run.series(val_tag(run))
    if val is None or not (val[1] >= target).any():
        return None
    return int(np.argmax(val[1] >= target))


def first_reach(run: Run, target: float) -> float | None:
    """Training seconds at the run's first validation whose metric is >= target (:func:`reach_index`)."""
    index = reach_index(run, target)
    return None if index is None else float(run.seconds[val_tag(run)][index])


def clock(seconds: float) -> str:
    """``H:MM:SS``."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def reach_cell(runs: list[Run], target: float) -> str:
    """A group's time to reach ``target``: mean of its runs' (min–max), ``—`` when none reached it, and
    how many did when only some."""
    times = [t for r in runs if (t := first_reach(r, target)) is not None]
    if not times:
        return "—"
    text = clock(statistics.mean(times))
    if len(times) > 1:
        text += f" ({clock(min(times))}–{clock(max(times))})"
    return text + (f", {len(times)} of {len(runs)} runs" if len(times) < len(runs) else "")


def group_runs(runs: list[Run], group_by: list[str] | None = None,
               labels: list[tuple[Path, str]] | None = None) -> tuple[dict[str, list[Run]], list[str]]:
    """Runs grouped into curves, keyed by label, and the warnings to show.

    Default: one group per :func:`experiment` (seeds average). ``group_by``: one group per value of
    these settings. ``labels`` (directory, text): the runs under a directory form one group named
    text. Runs measured by different metrics are refused (:class:`CompareError`)."""
    metrics = defaultdict(list)
    for run in runs:
        metrics[run.metric].append(run)
    if len(metrics) > 1:
        raise CompareError("compare: these runs report different validation metrics and cannot share a "
                           "figure or a table: " + "; ".join(
                               f"{m}: {', '.join(str(r.run_dir) for r in rs)}" for m, rs in metrics.items())
                           + ". Compare them separately.")
    if group_by:
        missing = [k for k in group_by if not any(k in r.settings for r in runs)]
        if missing:
            raise CompareError(f"compare: --group-by {','.join(missing)}: no run has this setting "
                               "(keys are dotted config keys, e.g. model.width, or clip, processes)")
    keyed: dict[tuple, list[Run]] = {}
    for run in runs:
        keyed.setdefault(group_key(run, group_by, labels or []), []).append(run)
    for family in keyed.values():
        flag_runs(family)
    repeats = {} if group_by else split_repeats(keyed)
    names = group_labels(list(keyed), [rs[0] for rs in keyed.values()], group_by)
    groups: dict[str, list[Run]] = {}
    warnings = dataset_warnings(runs)
    for name, (key, members) in zip(names, keyed.items(), strict=True):
        groups[name] = members
        for run in repeats.get(key, []):
            apart = f"{name} · {run.run_dir.name}"
            apart = apart if apart not in groups else f"{name} · {run.run_dir}"
            groups[apart] = [run]
            warnings.append(f"{run.run_dir} has the same config and seed ({_text(run.settings.get('seed'))}) "
                            f"as a run of '{name}': one experiment run twice, not two seeds; listed apart "
                            f"as '{apart}'")
    return groups, [*warnings, *averaging_warnings(groups)]


def split_repeats(keyed: dict[tuple, list[Run]]) -> dict[tuple, list[Run]]:
    """Take runs of one experiment *and* seed out of their group: the same config and seed run twice (a
    leftover aborted run, a rerun in a new directory) is not a second seed. The run that got furthest
    stays in the group; the others, by group key, are listed apart."""
    apart: dict[tuple, list[Run]] = {}
    for key, runs in keyed.items():
        if key[0][0] == "label" or not runs[0].settings:  # named by --label, or seeds unknown
            continue
        by_seed: dict[str, list[Run]] = defaultdict(list)
        for run in runs:
            by_seed[_text(run.settings.get("seed"))].append(run)
        if all(len(rs) == 1 for rs in by_seed.values()):
            continue
        ranked = [sorted(rs, key=lambda r: (not r.running, r.last_iteration), reverse=True)
                  for rs in by_seed.values()]
        keyed[key] = [rs[0] for rs in ranked]
        apart[key] = [r for rs in ranked for r in rs[1:]]
    return apart


def flag_runs(runs: list[Run]) -> None:
    """Note the runs of one group (one experiment) that are still being written (their run dir's lock is
    held) or that stopped far short of the group's longest run (before ``SHORT_FRACTION`` of it)."""
    longest = max(r.last_iteration for r in runs)
    for run in runs:
        if run.running:
            run.note = f"still running ({run.running})"
        elif run.last_iteration < SHORT_FRACTION * longest:
            run.note = f"stopped at iteration {run.last_iteration} of {longest}"


def group_key(run: Run, group_by: list[str] | None, labels: list[tuple[Path, str]]) -> tuple:
    for directory, text in labels:
        if run.run_dir.resolve().is_relative_to(directory.resolve()):
            return (("label", text),)
    if group_by:
        return tuple((k, run.settings.get(k)) for k in group_by)
    if not run.settings:  # no config found: the model name (or directory) is all there is
        return (("model.name", run.model),)
    return tuple(sorted(experiment(run.settings).items(), key=str))


def group_labels(keys: list[tuple], firsts: list[Run], group_by: list[str] | None) -> list[str]:
    """Each group's label: ``--label``'s text; with ``--group-by`` the chosen settings' values; else the
    model, then what sets the group apart (:func:`distinguishing_settings`). Parts are bare values for
    keys that name themselves (``dot_product``, ``32x2``), ``name=value`` otherwise."""
    with_config = [r for r in firsts if r.settings]
    apart = dict(zip(map(id, with_config), distinguishing_settings(with_config), strict=True))
    every_key = {k for r in firsts for k in r.settings}
    labels = []
    for key, run in zip(keys, firsts, strict=True):
        if key[0][0] == "label":
            labels.append(str(key[0][1]))
        elif group_by:
            labels.append(" · ".join(_part(k, v, every_key) for k, v in key))
        else:  # a run without config: its model name alone
            labels.append(" · ".join([run.model, *(_part(k, run.settings[k], every_key)
                                                   for k in apart.get(id(run), []))]))
    return _unique(labels)


def distinguishing_settings(runs: list[Run]) -> list[list[str]]:
    """For each run (one per group), the experiment settings its label names besides the model.

    A setting that differs between groups is named in a group's label when the group's value is not
    the one most groups share (every value is named when none is), or is not the default of its own
    model / data / optim config; except that a setting where every group has its config's default
    (the NL positions of ``c2d_nl5`` vs ``c2d``, the crop of ``kinetics400`` vs ``synthetic``) is left
    out: the names say it. E.g. ``i3d_nl5 · width=8`` and ``i3d_nl5 · width=8 · dot_product``."""
    exps = [experiment(r.settings) for r in runs]
    presets = [preset_settings(r.settings) or {} for r in runs]
    keys = list(dict.fromkeys(k for e in exps for k in e if k != "model.name"))
    shown: list[list[str]] = [[] for _ in runs]
    for key in keys:
        having = [i for i, e in enumerate(exps) if key in e]
        values = [_text(exps[i][key]) for i in having]
        at_preset = {i: key not in NAMES and key in presets[i] and _text(presets[i][key]) == value
                     for i, value in zip(having, values, strict=True)}
        if len(set(values)) + (len(having) < len(runs)) < 2 or all(at_preset.values()):
            continue
        counts = sorted(((values.count(v), v) for v in set(values)), reverse=True)
        mode = counts[0][1] if len(counts) == 1 or counts[0][0] > counts[1][0] else None
        for i, value in zip(having, values, strict=True):
            if value != mode or not at_preset[i]:
                shown[i].append(key)
    return shown


def _part(key: str, value: object, every_key: set[str]) -> str:
    text = _text(value)
    if key in BARE:
        return text
    parts = key.split(".")
    for n in range(1, len(parts) + 1):  # the shortest key suffix that names one setting
        suffix = ".".join(parts[-n:])
        if sum(k == suffix or k.endswith("." + suffix) for k in every_key) <= 1:
            return f"{suffix}={text}"
    return f"{key}={text}"


def _text(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_text, value)) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _unique(labels: list[str]) -> list[str]:
    """Labels made unique (two ``--label`` texts or runs without config may coincide)."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for label in labels:
        seen[label] += 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def preset_settings(settings: dict[str, object]) -> dict[str, object] | None:
    """The settings train.py composes from ``configs/`` for this run's model, data and optim names with
    no other override, or None when a name is not a config of this repository."""
    return _compose(tuple(settings.get(name) for name in NAMES))


@lru_cache
def _compose(names: tuple) -> dict[str, object] | None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    import nlvideo.data.config  # noqa: F401  (registers the resolvers the data configs use)

    if not all(isinstance(n, str) and (CONFIGS / g / f"{n}.yaml").is_file()
               for g, n in zip(PRESET_GROUPS, names, strict=True)):
        return None
    overrides = [f"{g}={n}" for g, n in zip(PRESET_GROUPS, names, strict=True)]
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except HydraException:
        return None
    return settings_of(OmegaConf.to_container(cfg, resolve=True), {})


def dataset_warnings(runs: list[Run]) -> list[str]:
    """A warning when the runs were trained on different datasets (their numbers do not compare)."""
    by_data: dict[str, list[Run]] = defaultdict(list)
    for run in (r for r in runs if r.settings):  # a run without config: its data is unknown
        data = {k: v for k, v in run.settings.items() if _under(k, DATASET_KEYS)}
        by_data[", ".join(f"{k}={_text(v)}" for k, v in sorted(data.items()))].append(run)
    if len(by_data) < 2:
        return []
    names = "; ".join(f"{rs[0].settings.get('data.name', 'unknown')} ({len(rs)} run(s): "
                      f"{', '.join(r.run_dir.name for r in rs)})" for rs in by_data.values())
    return [f"runs on different datasets: {names}. Their curves are drawn apart, but accuracies on "
            "different data do not compare."]


def averaging_warnings(groups: dict[str, list[Run]]) -> list[str]:
    """A warning for each group whose runs differ in more than the seed (``--group-by``/``--label``)."""
    out = []
    for label, runs in groups.items():
        exps = [experiment(r.settings) for r in runs]
        keys = sorted({k for e in exps for k in e}, key=str)
        values = {k: sorted({_text(e.get(k)) for e in exps}) for k in keys}
        differ = [k for k in keys if len(values[k]) > 1]
        if differ:
            shown = "; ".join(f"{k} ({', '.join(values[k])})" for k in differ[:5])
            out.append(f"'{label}' averages {len(runs)} runs that differ in {shown}"
                       + (f" and {len(differ) - 5} more" if len(differ) > 5 else ""))
    return out


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard-style exponential smoothing (weight 0 = raw values)."""
    out, last = np.empty_like(values, dtype=float), float(values[0]) if len(values) else 0.0
    for i, v in enumerate(values):
        last = weight * last + (1 - weight) * float(v)
        out[i] = last
    return out


def plot(groups: dict[str, list[Run]], out: Path, title: str = "", smooth: float = 0.0,
         x: str = "iter") -> None:
    """The two panels (training, validation error) against the iteration or, ``x="time"``, the training
    wall-clock (:func:`time_unit`; seeds averaged on a common time grid, :func:`_mean_band_in_time`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    metric = "mAP" if any(r.multi_label for rs in groups.values() for r in rs) else "top-1"
    scale, unit = time_unit(groups) if x == "time" else (1.0, "")
    for i, (name, runs) in enumerate(groups.items()):
        colour = colours[i % len(colours)]
        for ax, which in zip(axes, ("train", "val"), strict=True):
            curves = [c[which] for c in (error_curves(r, x) for r in runs) if which in c]
            if not curves:
                continue
            if which == "train" and smooth:
                curves = [(s, ema(v, smooth)) for s, v in curves]
            band = _mean_band_in_time if x == "time" and len(curves) > 1 else _mean_band
            steps, mean, low, high = band(curves)
            steps = steps / scale
            style = "--" if "nl" not in runs[0].model else "-"
            ax.plot(steps, mean, style, color=colour, label=legend(name, runs),
                    marker="o" if which == "val" and band is _mean_band else None, markersize=3)
            if len(curves) > 1:
                ax.fill_between(steps, low, high, color=colour, alpha=0.15)
    axes[0].set_title("training error (100 - train top-1, %)" + (f", EMA {smooth}" if smooth else ""))
    axes[1].set_title(f"validation error (100 - val {metric}, %)")
    for ax in axes:
        ax.set_xlabel(f"training wall-clock ({unit}; stops between sessions left out)" if x == "time"
                      else "iteration")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("error (%)")
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def legend(label: str, runs: list[Run]) -> str:
    seeds = f", {len(runs)} seeds" if len(runs) > 1 else ""
    flagged = notes(runs)
    return f"{label} ({_num_nonlocal(runs)} NL{seeds})" + (f"\n  ⚠ {flagged}" if flagged else "")


def notes(runs: list[Run]) -> str:
    """The flags of a group's runs (:func:`flag_runs`), each with its seed when the group averages."""
    if len(runs) == 1:
        return runs[0].note
    return "; ".join(f"seed {_text(r.settings.get('seed', '?'))} {r.note}" for r in runs if r.note)


def speed_caveat(groups: dict[str, list[Run]]) -> str:
    """The clips/s column's caveat: each run's own throughput on its own machine and load, naming the
    speed settings in which the runs differ."""
    runs = [r for rs in groups.values() for r in rs]
    differ = [k for k in SPEED_KEYS if len({_text(r.settings.get(k)) for r in runs if r.settings}) > 1]
    text = ("clips/s is each run's median training throughput, measured on whatever machine, device and "
            "load it ran with (other jobs on the machine included): it compares only runs made side by "
            "side on one idle machine, not these numbers as they stand")
    return text + (f"; these runs also differ in {', '.join(differ)}" if differ else "") + "."


def _num_nonlocal(runs: list[Run]) -> object:
    nl = next((r.hparams["num_nonlocal"] for r in runs if "num_nonlocal" in r.hparams), "?")
    return int(nl) if isinstance(nl, float) else nl


def _stat(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _own(runs: list[Run], key: str, scale: float = 1.0) -> str:
    """A statistic the trainer logged (params, FLOPs), from this group's own runs."""
    values = sorted({f"{float(r.hparams[key]) * scale:.2f}" for r in runs if key in r.hparams})
    return " / ".join(values) or "—"


def table(groups: dict[str, list[Run]], warnings: list[str], reach: float | None = None) -> str:
    """The markdown table; ``reach``: add the column of the training time to that validation metric."""
    multi = any(r.multi_label for rs in groups.values() for r in rs)
    metric = "val mAP" if multi else "val top-1"
    reach_head = f" time to {metric} ≥ {reach:g} ² |" if reach is not None else ""
    lines = [f"> **Warning**: {w}\n" for w in warnings] + [
        f"| model | #NL | runs | last iteration | final {metric} | best {metric} | final train err | "
        f"params (M) | GFLOPs/clip | clips/s ¹ |{reach_head} notes |",
        "|---" * (11 + (reach is not None)) + "|",
    ]
    tag = "val/mAP" if multi else "val/top1"
    for label, runs in groups.items():
        finals = [float(s[1][-1]) for r in runs if (s := r.series(tag)) is not None]
        bests = [float(s[1].max()) for r in runs if (s := r.series(tag)) is not None]
        train_err = [float(c["train"][1][-1]) for c in map(error_curves, runs) if "train" in c]
        last = max(r.last_iteration for r in runs)
        speed = [float(np.median(s[1])) for r in runs if (s := r.series("train/clips_per_s")) is not None]
        reach_col = f" {reach_cell(runs, reach)} |" if reach is not None else ""
        lines.append(
            f"| {label} | {_num_nonlocal(runs)} | {len(runs)} | {last} | {_stat(finals)} | {_stat(bests)} "
            f"| {_stat(train_err)} | {_own(runs, 'params_M')} | {_own(runs, 'gflops')} | {_stat(speed)} "
            f"|{reach_col} {notes(runs)} |"
        )
    text = "\n".join(lines) + f"\n\n¹ {speed_caveat(groups)}\n"
    if reach is not None:
        text += (f"\n² training wall-clock (H:MM:SS) at the first validation whose {metric} is ≥ {reach:g}: "
                 "the mean of the runs that got there (min–max); — when none did. Time is counted inside "
                 "the train.py sessions only (validation and precise BN included, the pause between a "
                 "stop and its resume not), on each run's own machine and load.\n")
    return text


def link_runs(groups: dict[str, list[Run]], folder: Path) -> dict[str, Path]:
    """``folder/<label>`` (``· seed N`` for averaged groups) -> each run's event directory, so that
    ``tensorboard --logdir folder`` names the runs as this comparison does. Replaces earlier links."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.is_symlink():
            old.unlink()
    names = [f"{label} · seed {_text(r.settings.get('seed', '?'))}" if len(runs) > 1 else label
             for label, runs in groups.items() for r in runs]
    events = [r.path.resolve() for runs in groups.values() for r in runs]
    linked = {}
    for name, target in zip(_unique([n.replace("/", "_") for n in names]), events, strict=True):
        (folder / name).symlink_to(target, target_is_directory=True)
        linked[name] = target
    return linked


def compare(paths: list[Path], out_dir: Path, title: str = "", smooth: float = 0.0,
            group_by: list[str] | None = None, labels: list[tuple[Path, str]] | None = None,
            tensorboard: bool = False, x: str = "iter",
            reach: float | None = None) -> tuple[Path, Path, dict[str, list[Run]], list[str]]:
    """Read, group, plot and tabulate the runs under ``paths`` (and link them for TensorBoard); returns
    (curves.png, table.md, the groups by label, warnings). ``x``: the curves' axis, ``"iter"`` or
    ``"time"`` (training wall-clock); ``reach``: add the time-to-this-validation-metric column."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CompareError(f"compare: --out {out_dir} is a file: pass a directory (curves.png and table.md "
                           "are written into it)")
    runs = [load_run(d) for d in find_event_dirs(paths)]
    groups, warnings = group_runs(runs, group_by, labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, md = out_dir / "curves.png", out_dir / "table.md"
    plot(groups, png, title, smooth, x)
    md.write_text(table(groups, warnings, reach))
    if tensorboard:
        link_runs(groups, out_dir / "tensorboard")
    return png, md, groups, warnings


def _label_arg(text: str) -> tuple[Path, str]:
    directory, sep, label = text.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"--label expects DIR=TEXT, got {text!r}")
    return Path(directory), label


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a validation accuracy in % (0 to 100), got {text!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (or folders of runs)")
    parser.add_argument(
        "--out", type=Path, default=Path("comparison"), help="where curves.png and table.md go"
    )
    parser.add_argument("--title", default="")
    parser.add_argument("--smooth", type=float, default=0.0, help="EMA weight for training curves, e.g. 0.6")
    parser.add_argument("--group-by", type=lambda s: [k for k in s.split(",") if k],
                        help="comma-separated config keys that make a group, e.g. model.name,model.width "
                             "(default: every setting but the seed)")
    parser.add_argument("--label", action="append", type=_label_arg, default=[], metavar="DIR=TEXT",
                        help="the runs under DIR are one curve named TEXT (repeatable)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write OUT/tensorboard/: a link per run named by its label, for "
                             "tensorboard --logdir OUT/tensorboard")
    parser.add_argument("--x", choices=("iter", "time"), default="iter",
                        help="the curves' x axis: the iteration (default) or the training wall-clock "
                             "(time inside the train.py sessions; seeds averaged on a common time grid)")
    parser.add_argument("--reach", type=_percent, metavar="VALUE",
                        help="add to table.md the training wall-clock at which each group's validation "
                             "top-1 (or mAP), in %%, first reaches VALUE")
    args = parser.parse_args(argv)
    try:
        png, md, groups, warnings = compare(args.runs, args.out, args.title, args.smooth, args.group_by,
                                            args.label, args.tensorboard, args.x, args.reach)
    except (FileNotFoundError, CompareError) as exc:
        parser.exit(2, f"error: {exc}\n")
    for warning in warnings:
        print(f"compare: WARNING: {warning}", file=sys.stderr)
    print(md.read_text(), end="")
    for label, runs in groups.items():
        print(f"{label}: {', '.join(str(r.run_dir) for r in runs)}")
    print(f"wrote {png} and {md}")
    if args.tensorboard:
        print(f"tensorboard --logdir {args.out / 'tensorboard'}  shows the runs by these names")


if __name__ == "__main__":
    main()
