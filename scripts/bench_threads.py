"""Thread settings of CPU training: torch intra-op threads x data-loader workers, through train.py.

Each cell is a real ``train.py`` run on the built-in dataset (decode, transforms, forward, backward,
SGD step) with ``trainer.cpu_threads`` set for the main process (loader workers always use one
thread, ``nlvideo.data.loader.seed_worker``). clips/s is the mean of the ``train/clips_per_s`` TensorBoard
scalar after the first logging window (start-up and the first batches are not counted).

    python scripts/bench_threads.py                                   # both presets, ~6 min on 2 cores
    python scripts/bench_threads.py --preset tiny --threads 1 2 --workers 0 1 2

Presets: ``tiny`` is the NL-vs-baseline experiment's C2D-NL5 (width 8, 48x48 crops: the data
pipeline matters), ``full`` the full-width I3D-NL5 of the README's first command (compute-bound).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from nlvideo.compare import find_event_dirs, load_run

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "tiny": ["+experiment=nl_vs_baseline", "model=c2d_nl5", "trainer.max_iters=60", "trainer.log_period=10"],
    "full": ["model=i3d_nl5", "trainer.max_iters=8", "trainer.log_period=2"],
}


def clips_per_s(preset: str, threads: int, workers: int) -> float:
    """Mean training clips/s of one short run, first logging window excluded."""
    with tempfile.TemporaryDirectory(prefix="nlvideo_threads_") as tmp:
        cmd = [sys.executable, "train.py", *PRESETS[preset], f"trainer.cpu_threads={threads}",
               f"data.num_workers={workers}",
               "trainer.eval_period=0", "trainer.checkpoint.every_iters=0", "trainer.progress=off",
               f"hydra.run.dir={tmp}"]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
        series = load_run(find_event_dirs([Path(tmp)])[0]).series("train/clips_per_s")
        if series is None or len(series[1]) < 2:
            raise RuntimeError(f"{' '.join(cmd)}: fewer than 2 train/clips_per_s values in TensorBoard; "
                               "raise trainer.max_iters or lower trainer.log_period")
        return float(np.mean(series[1][1:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    print(f"# bench_threads: {os.cpu_count()} CPUs; torch threads of the main process x loader workers\n")
    print("| preset | workers | " + " | ".join(f"{t} thread(s) clips/s" for t in a.threads)
          + f" | best vs {a.threads[-1]} thread(s) |")
    print("|---|---|" + "---|" * len(a.threads) + "---|")
    for preset in a.preset:
        for w in a.workers:
            rates = [clips_per_s(preset, t, w) for t in a.threads]
            best = int(np.argmax(rates))
            print(f"| {preset} | {w} | " + " | ".join(f"{r:.1f}" for r in rates)
                  + f" | {a.threads[best]} thr: {rates[best] / rates[-1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
