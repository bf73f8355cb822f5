"""Console progress and TensorBoard, rank 0 only.

* :class:`Progress` wraps an iterable: a tqdm bar (ETA, loss, clips/s) when stdout is a terminal,
  otherwise plain ``logging`` lines every ``log_period`` iterations (cluster logs stay readable).
  ``trainer.progress`` forces ``bar``, ``lines`` or ``off``. Ranks other than 0 are silent.
* :class:`TensorBoard` is a ``SummaryWriter`` on rank 0 and a no-op elsewhere; :func:`name_run` lists a
  run under a readable name (``i3d_nl5 seed=0 <time>``) in ``outputs/tensorboard``.
* :func:`write_history_row` keeps ``metrics.csv``, one row per validation, so the history of a run
  survives outside TensorBoard (a spreadsheet, pandas).
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nlvideo.engine import distributed as du

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("nlvideo")

PROGRESS_MODES = ("auto", "bar", "lines", "off")


def setup_rank_logging(rank: int) -> None:
    """Silence INFO on non-zero ranks (warnings and errors still show)."""
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("nlvideo").setLevel(logging.WARNING)


def progress_mode(requested: str = "auto") -> str:
    if not du.is_main_process():
        return "off"
    if requested == "auto":
        return "bar" if sys.stdout.isatty() else "lines"
    return requested


class Progress:
    """Iterate ``iterable`` reporting progress; ``update(**stats)`` after each step."""

    def __init__(self, iterable: Iterable, total: int, desc: str, mode: str = "auto", log_period: int = 10,
                 initial: int = 0, rest: Callable[[float, int], tuple[float, str]] | None = None):
        """``rest(seconds per step, steps left here)`` -> (seconds, note): the time the whole job needs
        from now (this loop's rest included), shown as ``run eta`` (the training loop's whole run)."""
        self.rest = rest
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.mode = progress_mode(mode)
        self.log_period = max(1, int(log_period))
        self.n = initial
        self.start_n = initial
        self.t0 = time.perf_counter()
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True,
                             file=sys.stdout)

    def __iter__(self) -> Iterator:
        return iter(self.iterable)

    def ticking(self) -> Iterator:
        """Iterate, ticking after each item (loops with no per-step statistics to show)."""
        for item in self.iterable:
            yield item
            self.update()

    @property
    def step_seconds(self) -> float:
        """Mean wall-clock seconds per step of this loop so far."""
        return (time.perf_counter() - self.t0) / max(self.n - self.start_n, 1)

    def run_eta(self) -> str:
        """``run eta H:MM:SS`` (with ``rest``'s note), or "" without ``rest``."""
        if self.rest is None:
            return ""
        seconds, note = self.rest(self.step_seconds, self.total - self.n)
        return f"run eta {hms(seconds)}{note}"

    def update(self, **stats: Any) -> None:
        self.n += 1
        if self.mode == "bar":
            run_eta = self.run_eta()
            postfix = {k: _fmt(v) for k, v in stats.items()} | ({"run_eta": run_eta[8:]} if run_eta else {})
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)
        elif self.mode == "lines" and (self.n % self.log_period == 0 or self.n == self.total):
            eta = self.step_seconds * (self.total - self.n)
            fields = "  ".join(f"{k} {_fmt(v)}" for k, v in stats.items())
            log.info("%s [%d/%d]  %s  %s eta %s%s", self.desc, self.n, self.total, fields,
                     self.desc.split()[0], hms(eta), f"  {self.run_eta()}" if self.rest else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class TensorBoard:
    """SummaryWriter on rank 0; every method is a no-op on other ranks or when disabled."""

    def __init__(self, log_dir: str | None, enabled: bool = True):
        self.log_dir = log_dir if enabled and du.is_main_process() else None
        self._writer = None

    @property
    def enabled(self) -> bool:
        """Whether anything is written (callers skip work whose only output is TensorBoard)."""
        return self.log_dir is not None

    @property
    def writer(self):
        """The SummaryWriter, made on first use: a start refused before any work writes no event file."""
        if self._writer is None and self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir)
        return self._writer

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if v is not None:
                self.writer.add_scalar(k, v, step)

    def hparams(self, hparams: dict[str, Any], metric_tags: list[str]) -> None:
        """Write hparams into the main event file (not a sub-run), so one run = one directory.

        ``metric_tags`` name scalars logged elsewhere (e.g. ``val/top1``) that the HPARAMS tab shows.
        """
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hp_summary

        clean = {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in hparams.items()}
        exp, ssi, sei = hp_summary(clean, dict.fromkeys(metric_tags, 0.0))
        fw = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)

    def figure(self, tag: str, figure: Figure, step: int) -> None:
        """A matplotlib figure as an image (IMAGES tab); the figure is closed."""
        if self.writer is not None:
            self.writer.add_figure(tag, figure, step, close=True)

    def layout(self, charts: dict[str, dict[str, list[str]]]) -> None:
        """A CUSTOM SCALARS layout: {category: {chart title: [tag regexes]}}, one multi-line chart per
        title with every run's matching tags. TensorBoard merges the layouts of all runs it shows."""
        if self.writer is not None:
            self.writer.add_custom_scalars({
                category: {title: ["Multiline", tags] for title, tags in group.items()}
                for category, group in charts.items()})

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer, self.log_dir = None, None


def tensorboard_index(run_dir: Path) -> Path | None:
    """``outputs/tensorboard`` for a run in the default layout (``outputs/<job>/<model>/<time>``), where
    :func:`name_run` links it; None for a run dir named on the command line or a sweep's job (their
    layout is the user's: ``nlvideo.compare --tensorboard`` names those)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra = HydraConfig.get()
    if hydra.mode != RunMode.RUN or any(o.startswith("hydra.run.dir=") for o in hydra.overrides.hydra):
        return None
    return run_dir.parents[2] / "tensorboard"


def name_run(tb_dir: Path, index: Path, name: str) -> Path:
    """Link ``index/<name>`` -> ``tb_dir`` (made atomically) and return it. TensorBoard names a run by its
    path under ``--logdir``: over ``outputs/train`` two runs of a model read ``i3d_nl5/<time>/tb`` and
    differ only by time; ``tensorboard --logdir outputs/tensorboard`` lists them by these names. A run
    dir started again keeps its link; another run of the same name gets `` (2)``, `` (3)``, ..."""
    index.mkdir(parents=True, exist_ok=True)
    target = tb_dir.resolve()
    base = name.replace("/", "_")
    for n in range(1, 1000):
        link = index / (base if n == 1 else f"{base} ({n})")
        if link.is_symlink() and link.resolve() == target:
            return link
        if not link.is_symlink() and not link.exists():
            tmp = index / f".{link.name}.{os.getpid()}.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target, target_is_directory=True)
            os.replace(tmp, link)
            return link
    raise FileExistsError(f"{index}: 999 runs named {base!r}")


def gpu_memory_gib(device: torch.device) -> dict[str, float]:
    """Peak allocated (since the previous call) and reserved CUDA memory of ``device`` in GiB; ``{}``
    on other devices."""
    if device.type != "cuda":
        return {}
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return {"train/gpu_max_allocated_GiB": peak,
            "train/gpu_reserved_GiB": torch.cuda.memory_reserved(device) / 2**30}


def write_history_row(path: Path, row: dict[str, Any]) -> None:
    """Add ``row`` to the CSV at ``path``, replacing rows of the same or a later ``iteration`` (a run
    resumed from before a validation it had logged repeats that validation: it stays one row). New
    columns widen the header; the file is replaced atomically."""
    rows: list[dict[str, Any]] = []
    columns = list(row)
    if path.is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if int(r["iteration"]) < int(row["iteration"])]
            columns = list(reader.fieldnames or []) + [c for c in row if c not in (reader.fieldnames or [])]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows([*rows, row])
    os.replace(tmp, path)
