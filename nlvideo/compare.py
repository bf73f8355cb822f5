"""Compare training runs from their TensorBoard event files: the paper's training-curve figure.

    python -m nlvideo.compare outputs/c2d/RUN outputs/c2d_nl5/RUN ... --out comparison/

Each argument is a run directory, or a folder holding several (a Hydra multirun sweep): every
directory with ``events.out.tfevents.*`` files below it is one run. Runs of the same model (the
``model`` hparam the trainer logs, e.g. several seeds) are averaged into one curve with a min-max
band. Writes ``curves.png`` (training error and validation error vs iteration, shared axes, one
colour per model, labelled with its number of non-local blocks) and ``table.md`` (final and best
validation accuracy or mAP, parameters, FLOPs, clips/s). Runs of different lengths and runs still
in progress are fine: whatever events are on disk are read.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EVENT_GLOB = "events.out.tfevents.*"


@dataclass
class Run:
    """One run's scalars (tag -> (steps, values)) and the hparams the trainer logged."""

    path: Path
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]
    hparams: dict[str, object] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return str(self.hparams.get("model", self.path.parent.name))

    @property
    def multi_label(self) -> bool:
        return "val/mAP" in self.scalars

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
                out[key] = getattr(value, kind) if kind else None
            return out
    return {}


def load_run(event_dir: Path) -> Run:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        scalars[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
    return Run(path=event_dir, scalars=scalars, hparams=_hparams(acc))


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


def group_by_model(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.model].append(run)
    return dict(groups)


def label(runs: list[Run]) -> str:
    nl = runs[0].hparams.get("num_nonlocal", "?")
    nl = int(nl) if isinstance(nl, float) else nl
    seeds = f", {len(runs)} seeds" if len(runs) > 1 else ""
    return f"{runs[0].model} ({nl} NL{seeds})"


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
    for i, (_model, runs) in enumerate(groups.items()):
        colour = colours[i % len(colours)]
        for ax, which in zip(axes, ("train", "val"), strict=True):
            curves = [c[which] for c in map(error_curves, runs) if which in c]
            if not curves:
                continue
            if which == "train" and smooth:
                curves = [(s, ema(v, smooth)) for s, v in curves]
            steps, mean, low, high = _mean_band(curves)
            style = "--" if "nl" not in runs[0].model else "-"
            ax.plot(
                steps,
                mean,
                style,
                color=colour,
                label=label(runs),
                marker="o" if which == "val" else None,
                markersize=3,
            )
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


def _stat(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(groups: dict[str, list[Run]]) -> str:
    multi = any(r.multi_label for rs in groups.values() for r in rs)
    metric = "val mAP" if multi else "val top-1"
    lines = [
        f"| model | #NL | runs | last iteration | final {metric} | best {metric} | final train err | "
        "params (M) | GFLOPs/clip | clips/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, runs in groups.items():
        tag = "val/mAP" if multi else "val/top1"
        finals = [float(s[1][-1]) for r in runs if (s := r.series(tag)) is not None]
        bests = [float(s[1].max()) for r in runs if (s := r.series(tag)) is not None]
        train_err = [float(c["train"][1][-1]) for c in map(error_curves, runs) if "train" in c]
        last = max((int(s[0][-1]) for r in runs for s in r.scalars.values() if len(s[0])), default=0)
        speed = [float(np.median(s[1])) for r in runs if (s := r.series("train/clips_per_s")) is not None]
        hp = runs[0].hparams
        params = f"{hp['params_M']:.2f}" if "params_M" in hp else "—"
        flops = f"{hp['gflops']:.2f}" if "gflops" in hp else "—"
        nl = hp.get("num_nonlocal", "?")
        nl = int(nl) if isinstance(nl, float) else nl
        lines.append(
            f"| {model} | {nl} | {len(runs)} | {last} | {_stat(finals)} | {_stat(bests)} "
            f"| {_stat(train_err)} | {params} | {flops} | {_stat(speed)} |"
        )
    return "\n".join(lines) + "\n"


def compare(paths: list[Path], out_dir: Path, title: str = "", smooth: float = 0.0) -> tuple[Path, Path]:
    runs = [load_run(d) for d in find_event_dirs(paths)]
    groups = group_by_model(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, md = out_dir / "curves.png", out_dir / "table.md"
    plot(groups, png, title, smooth)
    md.write_text(table(groups))
    return png, md


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
    args = parser.parse_args(argv)
    try:
        png, md = compare(args.runs, args.out, args.title, args.smooth)
    except FileNotFoundError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(md.read_text(), end="")
    print(f"wrote {png} and {md}")


if __name__ == "__main__":
    main()
