"""Multigrid training vs the standard schedule, side by side (issue 24): the wall-clock and the
multiply-adds each needs to reach an accuracy.

    python scripts/bench_multigrid.py                         # the benchmark: 3 variants x 3 seeds
    python scripts/bench_multigrid.py --models c2d_nl5 --seeds 0 --epochs 4 --out /tmp/mg
    python scripts/bench_multigrid.py --dry-run               # print the train.py commands, run nothing
    python scripts/bench_multigrid.py -- data.num_workers=2   # after --: overrides for every run

Variants: the first of ``--models`` (default c2d_nl5) under the standard schedule and under multigrid
(long and short cycle with the paper's factors, ``trainer.multigrid.*``); every further model (default
c2d, the baseline) under multigrid. Each variant trains ``--seeds`` seeds, one run after another, on the
built-in synthetic dataset with the ``nl_vs_baseline`` experiment's recipe (``--width``, 8x8 clips of
48x48, SGD with warm-up and cosine, one intra-op thread) for ``--epochs`` epochs (multigrid trains
``trainer.multigrid.epoch_factor`` times as many, cheaper ones). Runs go to
``OUT/runs/<model>_<schedule>_seed<S>`` (default OUT: ``outputs/bench_multigrid`` of the current directory),
their console output to ``OUT/logs/<same name>.log``.

The report (stdout and ``OUT/report.md``) gives per variant the final validation top-1 (mean, min-max over
seeds), the training wall-clock and multiply-adds to the end, and to the **target** -- the standard
schedule's final mean validation top-1 -- the wall-clock, the multiply-adds and the ratio of that
wall-clock to the standard schedule's. Wall-clock is time inside the train.py sessions
(:mod:`nlvideo.compare`; validation and precise BN included), at the first validation that reaches the
target. Multiply-adds are the forward GMACs of the training clips: each run's schedule recomputed from
its config (:func:`nlvideo.engine.plan.build_plan`: the clips of every step x ``count_macs`` of its grid;
the standard schedule is clips x one shape), checked against the shapes the trainer logged
(``multigrid/batch``, ``multigrid/frames``, ``multigrid/crop_size``). ``OUT/comparison/`` holds the curves
against training wall-clock and their table (``nlvideo.compare --x time --reach TARGET``).

Rerunning the same command goes on where it stopped: a finished run is kept (its log's first line holds
the train.py overrides that trained it; a run of other overrides is refused), an interrupted one resumes
from its checkpoint. Ctrl-C stops the run in progress at its next step (train.py checkpoints) and exits
with status 130.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where used: --help and --dry-run need no torch
    from nlvideo.compare import Run
    from nlvideo.engine.plan import TrainPlan

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SCHEDULES = {
    "standard": ["trainer.multigrid.long_cycle=false", "trainer.multigrid.short_cycle=false"],
    "multigrid": ["trainer.multigrid.long_cycle=true", "trainer.multigrid.short_cycle=true"],
}
SMOOTH = 0.6  # EMA weight of the training curves in the figure


class BenchError(ValueError):
    """A usage or setup error, one line (exit status 2)."""


@dataclass(frozen=True)
class Planned:
    """One train.py run of the benchmark."""

    model: str
    schedule: str
    seed: int
    out: Path
    overrides: tuple[str, ...]  # the user's, after --
    width: int
    epochs: int

    @property
    def variant(self) -> str:
        return f"{self.model} {self.schedule}"

    @property
    def name(self) -> str:
        return f"{self.model}_{self.schedule}_seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / self.name

    @property
    def log(self) -> Path:
        """The run's console output; it exists under this name once the run finished (``.partial`` before)."""
        return self.out / "logs" / f"{self.name}.log"

    @property
    def partial(self) -> Path:
        """The console output while the run trains (and after it was interrupted)."""
        return self.log.with_suffix(".log.partial")

    def overrides_for(self, with_run_dir: bool = True) -> list[str]:
        return ["+experiment=nl_vs_baseline", f"model={self.model}", f"model.width={self.width}",
                f"trainer.epochs={self.epochs}", f"seed={self.seed}", *SCHEDULES[self.schedule],
                *self.overrides, *([f"hydra.run.dir={self.run_dir}"] if with_run_dir else [])]

    def command(self) -> list[str]:
        return [sys.executable, str(REPO / "train.py"), *self.overrides_for()]


def plan_runs(args: argparse.Namespace, overrides: list[str]) -> list[Planned]:
    """The runs, seed by seed, every variant of a seed in turn (the first model under both schedules, the
    others under multigrid): a machine whose load changes during the benchmark slows all variants alike."""
    variants = [(args.models[0], "standard"), *((m, "multigrid") for m in args.models)]
    return [Planned(m, s, seed, args.out, tuple(overrides), args.width, args.epochs)
            for seed in args.seeds for m, s in variants]


def check_plan(runs: list[Planned]) -> None:
    """Refuse, before any training, overrides that train.py would refuse (unknown keys, bad group
    choices) and finished runs under OUT that another command trained."""
    from nlvideo.engine.config import check_command_line
    from nlvideo.models.spec import ConfigError

    for variant in {r.variant: r for r in runs}.values():
        try:
            check_command_line(variant.overrides_for(with_run_dir=False), CONFIGS)
        except ConfigError as exc:
            raise BenchError(f"{exc} (train.py overrides of {variant.variant})") from None
    for run in runs:
        for log in (run.log, run.partial):
            if log.is_file() and (first := log.read_text().split("\n", 1)[0]) != header(run):
                raise BenchError(f"{run.run_dir} was trained by another command ({first.lstrip('# ')}); "
                                 "choose another --out, or remove it")


def header(run: Planned) -> str:
    """The first line of a run's log: the train.py overrides that trained it (the interpreter's path is
    left out: a rerun through another path to the same Python is the same command)."""
    return "# train.py " + shlex.join(run.overrides_for())


def train(run: Planned, number: int, total: int) -> None:
    """Train one run (its console output to its log), unless it finished before."""
    if run.log.is_file():
        print(f"[{number}/{total}] {run.variant} seed {run.seed}: finished before, kept ({run.run_dir})")
        return
    print(f"[{number}/{total}] {run.variant} seed {run.seed}: training in {run.run_dir}", flush=True)
    run.log.parent.mkdir(parents=True, exist_ok=True)
    partial = run.partial  # an interrupted run's output stays, its resume's follows
    with partial.open("a") as log:
        if log.tell() == 0:
            log.write(header(run) + "\n")
            log.flush()
        child = subprocess.Popen(run.command(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            status = child.wait()
        except KeyboardInterrupt:  # the child got the same SIGINT: let it checkpoint
            child.wait()
            raise
    if status != 0:
        tail = "".join(partial.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{run.variant} seed {run.seed}: train.py exited with status {status}; its "
                           f"output is in {partial}:\n{tail}")
    os.replace(partial, run.log)


# --- the report -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one finished run measured: final top-1, training seconds and GMACs to the end and to the
    target (None when it never got there)."""

    final: float
    seconds: float
    gmacs: float
    reach_seconds: float | None
    reach_gmacs: float | None


def step_gmacs(run: Run) -> tuple[np.ndarray, list[str]]:
    """Forward GMACs of each training step of a run (all processes), from its schedule recomputed from its
    config, and the warnings where it disagrees with the shapes the trainer logged."""
    import torch
    from omegaconf import OmegaConf

    from nlvideo.compare import run_config
    from nlvideo.data import build_dataset
    from nlvideo.engine.plan import build_plan
    from nlvideo.engine.runtime import build_model
    from nlvideo.models.stats import count_macs

    cfg = OmegaConf.create(run_config(run.run_dir))
    processes = int(run.settings.get("processes", 1))
    k = int(cfg.data.get("clips_per_video", 1) or 1)  # clips per sampler item
    items = len(build_dataset(cfg.data, "train")) // processes  # per process (the sampler drops the rest)
    plan = build_plan(cfg, items, int(cfg.data.batch_size) // k)
    net = build_model(cfg, torch.device("cpu"))
    macs = [count_macs(net, (1, 3, g.frames, g.crop, g.crop)) / 1e9 for g in plan.grids]
    steps = [plan.batch(*plan.locate(i)) for i in range(run.last_iteration)]
    warnings = logged_shape_mismatches(run, plan, steps, k)
    return np.array([clips * k * processes * macs[g] for g, clips in steps]), warnings


def logged_shape_mismatches(run: Run, plan: TrainPlan, steps: list[tuple[int, int]], k: int) -> list[str]:
    """The logged iterations where the trainer's ``multigrid/*`` shape (clips per process, frames, crop)
    is not the recomputed schedule's: the GMACs would then be wrong."""
    logged = [run.series(f"multigrid/{tag}") for tag in ("batch", "frames", "crop_size")]
    if any(series is None for series in logged):
        return []
    bad = []
    for i, iteration in enumerate(logged[0][0].tolist()):
        grid, clips = steps[int(iteration) - 1]
        expected = (clips * k, plan.grids[grid].frames, plan.grids[grid].crop)
        shape = tuple(int(series[1][i]) for series in logged)
        if shape != expected:
            bad.append(f"iteration {iteration}: logged {shape}, schedule {expected}")
    if not bad:
        return []
    return [f"{run.run_dir.name}: the logged multigrid shapes (clips, frames, crop) differ from the schedule "
            f"recomputed from its config at {len(bad)} iteration(s), e.g. {bad[0]}: its GMACs are not exact"]


def measure(run: Run, target: float, gmacs_per_step: np.ndarray) -> Outcome:
    from nlvideo.compare import reach_index

    steps, values = run.series("val/top1")
    cumulative = np.cumsum(gmacs_per_step)
    index = reach_index(run, target)
    reach_iteration = int(steps[index]) if index is not None else None
    return Outcome(
        final=float(values[-1]), seconds=run.trained_seconds, gmacs=float(cumulative[-1]),
        reach_seconds=float(run.seconds["val/top1"][index]) if index is not None else None,
        reach_gmacs=float(cumulative[reach_iteration - 1]) if reach_iteration else None)


def spread(values: list[float], fmt: Callable[[float], str]) -> str:
    """``mean (min–max)`` of values formatted by ``fmt``; the value alone for one."""
    if not values:
        return "—"
    text = fmt(statistics.mean(values))
    return text + (f" ({fmt(min(values))}–{fmt(max(values))})" if len(values) > 1 else "")


def reached(values: list[float | None], fmt: Callable[[float], str]) -> str:
    """:func:`spread` of the runs that reached the target, saying how many did when not all."""
    got = [v for v in values if v is not None]
    note = f", {len(got)} of {len(values)} runs" if got and len(got) < len(values) else ""
    return spread(got, fmt) + note


def report(outcomes: dict[str, list[Outcome]], standard: str, target: float, warnings: list[str],
           runs: list[Planned]) -> str:
    import torch

    from nlvideo.compare import clock

    def gmacs(x: float) -> str:
        return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"

    base = [o.reach_seconds for o in outcomes[standard] if o.reach_seconds is not None]
    seeds = ", ".join(str(r.seed) for r in runs if r.variant == standard)
    lines = [
        "# Multigrid vs the standard schedule",
        "",
        f"Target: **{target:.1f} %** validation top-1, the final mean of `{standard}` over "
        f"{len(outcomes[standard])} seed(s) ({seeds}); "
        f"standard schedule of {runs[0].epochs} epoch(s) (multigrid: x `trainer.multigrid.epoch_factor`), "
        f"width {runs[0].width}, built-in synthetic data; one run after another on {os.cpu_count()} CPU "
        f"core(s), torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        "",
        "| variant | runs | final val top-1 | wall-clock to the end | GMACs to the end "
        "| wall-clock to target | GMACs to target | wall-clock to target vs standard |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, group in outcomes.items():
        times = [o.reach_seconds for o in group if o.reach_seconds is not None]
        ratio = f"{statistics.mean(times) / statistics.mean(base):.2f}x" if times and base else "—"
        lines.append(
            f"| {variant} | {len(group)} | {spread([o.final for o in group], lambda x: f'{x:.1f}')} "
            f"| {spread([o.seconds for o in group], clock)} | {spread([o.gmacs for o in group], gmacs)} "
            f"| {reached([o.reach_seconds for o in group], clock)} "
            f"| {reached([o.reach_gmacs for o in group], gmacs)} | {ratio} |")
    lines += [
        "",
        "Mean (min–max) over seeds; `—`: no run reached the target; `, 1 of 3 runs`: only that many did (the "
        "mean is theirs). Wall-clock (H:MM:SS) is time inside the train.py sessions (validation and precise "
        "BN included), at the first validation at or above the target, so it is as fine as "
        "`trainer.eval_period`. GMACs: forward multiply-adds of the training clips (clips x multiply-adds "
        "of their frames x crop², from each run's schedule), up to the end or to that validation's "
        "iteration; validation and precise BN are not counted.",
        "",
        "Curves against training wall-clock: [comparison/curves.png](comparison/curves.png), "
        "[comparison/table.md](comparison/table.md).",
    ]
    lines += [f"\n> **Warning**: {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def summarise(runs: list[Planned], out: Path) -> str:
    """Read every run's events, write OUT/comparison/ and OUT/report.md; returns the report."""
    from nlvideo.compare import compare, find_event_dirs, load_run

    loaded = {run: load_run(find_event_dirs([run.run_dir])[0]) for run in runs}
    missing = [str(r.run_dir) for r, lr in loaded.items() if lr.series("val/top1") is None]
    if missing:
        raise BenchError(f"no validation in {', '.join(missing)}: the benchmark needs "
                         "trainer.eval_period >= 1")
    standard = runs[0].variant
    finals = [float(lr.series("val/top1")[1][-1]) for r, lr in loaded.items() if r.variant == standard]
    target = statistics.mean(finals)
    outcomes: dict[str, list[Outcome]] = {}
    warnings: list[str] = []
    for run, lr in loaded.items():
        per_step, mismatches = step_gmacs(lr)
        warnings += mismatches
        outcomes.setdefault(run.variant, []).append(measure(lr, target, per_step))
    compare([r.run_dir for r in runs], out / "comparison", smooth=SMOOTH, x="time", reach=target,
            labels=[(r.run_dir, r.variant) for r in runs],
            title=f"multigrid vs standard schedule (width {runs[0].width}, built-in synthetic data)")
    text = report(outcomes, standard, target, warnings, runs)
    write_atomically(out / "report.md", text)
    return text


# --- command line ---------------------------------------------------------------------------------------


def _list(kind: Callable[[str], object]) -> Callable[[str], list]:
    """An argparse type: a comma-separated list of ``kind``."""
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return values
    return parse


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Options, and the train.py overrides after ``--``."""
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_multigrid"),
                        help="where runs, logs, report.md and comparison/ go (default: %(default)s)")
    parser.add_argument("--models", type=_list(str), default=["c2d_nl5", "c2d"],
                        help="the first under both schedules, the others under multigrid "
                             "(default: c2d_nl5,c2d)")
    parser.add_argument("--seeds", type=_list(int), default=[0, 1, 2], help="default: 0,1,2")
    parser.add_argument("--epochs", type=_positive, default=6,
                        help="epochs of the standard schedule (default: %(default)s)")
    parser.add_argument("--width", type=_positive, default=8, help="model.width (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print the train.py commands, run nothing")
    args = parser.parse_args(argv[:split])
    args.out = args.out.absolute()
    unknown = [m for m in args.models if not (CONFIGS / "model" / f"{m}.yaml").is_file()]
    if unknown:
        known = ", ".join(sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml")))
        parser.exit(2, f"error: --models {','.join(unknown)}: no such model; choose from {known}\n")
    if args.out.exists() and not args.out.is_dir():
        parser.exit(2, f"error: --out {args.out} is a file: pass a directory\n")
    return args, argv[split + 1:]


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    runs = plan_runs(args, overrides)
    if args.dry_run:
        print("\n".join(shlex.join(run.command()) for run in runs))
        return 0
    try:
        check_plan(runs)
        for number, run in enumerate(runs, 1):
            train(run, number, len(runs))
        print(summarise(runs, args.out), end="")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_multigrid: interrupted; the same command goes on where it stopped", file=sys.stderr)
        return 130
    print(f"wrote {args.out / 'report.md'} and {args.out / 'comparison'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
