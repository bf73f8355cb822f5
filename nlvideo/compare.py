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

    def series(self, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self.scalars.get(tag)


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


def load_run(event_dir: Path) -> Run:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps, values = np.array([e.step for e in events]), np.array([e.value for e in events])
        scalars[TAG_ALIASES.get(tag, tag)] = (steps, values)
    run = Run(path=event_dir, scalars=scalars, hparams=_hparams(acc))
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
    """``{"model": {"width": 8}}`` -> ``{"model.width": 8}``; lists become tuples (hashable)."""
    out: dict[str, object] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


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


def error_curves(run: Run) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Training and validation error (%) vs iteration; mAP runs plot 100 - mAP for validation."""
    curves = {}
    train = run.series("train/top1")
    if train is not None:
        curves["train"] = (train[0], 100.0 - train[1])
    val = run.series("val/mAP" if run.multi_label else "val/top1")
    if val is not None:
        curves["val"] = (val[0], 100.0 - val[1])
    return curves


def _mean_band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Mean and min/max over runs, on the steps all runs reached (runs may have different lengths)."""
    common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
    if not common:  # nothing shared: show the longest run alone
        steps, values = max(curves, key=lambda c: len(c[0]))
        return steps, values, values, values
    stacked = np.stack([np.interp(common, s, v) for s, v in curves])
    return np.array(common), stacked.mean(0), stacked.min(0), stacked.max(0)


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


def plot(groups: dict[str, list[Run]], out: Path, title: str = "", smooth: float = 0.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    metric = "mAP" if any(r.multi_label for rs in groups.values() for r in rs) else "top-1"
    for i, (name, runs) in enumerate(groups.items()):
        colour = colours[i % len(colours)]
        for ax, which in zip(axes, ("train", "val"), strict=True):
            curves = [c[which] for c in map(error_curves, runs) if which in c]
            if not curves:
                continue
            if which == "train" and smooth:
                curves = [(s, ema(v, smooth)) for s, v in curves]
            steps, mean, low, high = _mean_band(curves)
            style = "--" if "nl" not in runs[0].model else "-"
            ax.plot(steps, mean, style, color=colour, label=legend(name, runs),
                    marker="o" if which == "val" else None, markersize=3)
            if len(curves) > 1:
                ax.fill_between(steps, low, high, color=colour, alpha=0.15)
    axes[0].set_title("training error (100 - train top-1, %)" + (f", EMA {smooth}" if smooth else ""))
    axes[1].set_title(f"validation error (100 - val {metric}, %)")
    for ax in axes:
        ax.set_xlabel("iteration")
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


def table(groups: dict[str, list[Run]], warnings: list[str]) -> str:
    multi = any(r.multi_label for rs in groups.values() for r in rs)
    metric = "val mAP" if multi else "val top-1"
    lines = [f"> **Warning**: {w}\n" for w in warnings] + [
        f"| model | #NL | runs | last iteration | final {metric} | best {metric} | final train err | "
        "params (M) | GFLOPs/clip | clips/s ¹ | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    tag = "val/mAP" if multi else "val/top1"
    for label, runs in groups.items():
        finals = [float(s[1][-1]) for r in runs if (s := r.series(tag)) is not None]
        bests = [float(s[1].max()) for r in runs if (s := r.series(tag)) is not None]
        train_err = [float(c["train"][1][-1]) for c in map(error_curves, runs) if "train" in c]
        last = max(r.last_iteration for r in runs)
        speed = [float(np.median(s[1])) for r in runs if (s := r.series("train/clips_per_s")) is not None]
        lines.append(
            f"| {label} | {_num_nonlocal(runs)} | {len(runs)} | {last} | {_stat(finals)} | {_stat(bests)} "
            f"| {_stat(train_err)} | {_own(runs, 'params_M')} | {_own(runs, 'gflops')} | {_stat(speed)} "
            f"| {notes(runs)} |"
        )
    return "\n".join(lines) + f"\n\n¹ {speed_caveat(groups)}\n"


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
            tensorboard: bool = False) -> tuple[Path, Path, dict[str, list[Run]], list[str]]:
    """Read, group, plot and tabulate the runs under ``paths`` (and link them for TensorBoard); returns
    (curves.png, table.md, the groups by label, warnings)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CompareError(f"compare: --out {out_dir} is a file: pass a directory (curves.png and table.md "
                           "are written into it)")
    runs = [load_run(d) for d in find_event_dirs(paths)]
    groups, warnings = group_runs(runs, group_by, labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, md = out_dir / "curves.png", out_dir / "table.md"
    plot(groups, png, title, smooth)
    md.write_text(table(groups, warnings))
    if tensorboard:
        link_runs(groups, out_dir / "tensorboard")
    return png, md, groups, warnings


def _label_arg(text: str) -> tuple[Path, str]:
    directory, sep, label = text.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"--label expects DIR=TEXT, got {text!r}")
    return Path(directory), label


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
    args = parser.parse_args(argv)
    try:
        png, md, groups, warnings = compare(args.runs, args.out, args.title, args.smooth, args.group_by,
                                            args.label, args.tensorboard)
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
