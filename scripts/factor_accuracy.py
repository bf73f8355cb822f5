"""Per-factor accuracy of eval.py runs on the built-in synthetic dataset.

    python scripts/factor_accuracy.py outputs/nl_vs_baseline/*/eval

Reads each eval directory's ``predictions.csv`` and ``metrics.json`` and prints a Markdown table:
top-1 over the 4 classes, and the accuracy of each relation on its own (``colour``: the probe has
the cue's colour, across time; ``pair``: the two movers share a colour, across space; chance is
50 % for each). See :mod:`nlvideo.data.synthetic` for why C2D cannot beat chance on ``colour``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from nlvideo.data.synthetic import factor_accuracy


def read_eval(run: Path) -> dict:
    """``metrics.json`` plus per-factor accuracies of one eval directory; errors name the file."""
    preds, metrics = run / "predictions.csv", run / "metrics.json"
    for f in (preds, metrics):
        if not f.is_file():
            raise FileNotFoundError(f"{f} does not exist: pass directories written by eval.py")
    with open(preds, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        factors = factor_accuracy([r["label"] for r in rows], [r["pred"] for r in rows])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{preds}: {exc}") from None
    return {**json.loads(metrics.read_text()), **factors}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="eval.py output directories")
    a = p.parse_args(argv)
    try:
        results = [read_eval(r) for r in a.runs]
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("| model | run | iteration | videos | top-1 | colour (across time) | pair (across space) |")
    print("|---|---|---|---|---|---|---|")
    for m in results:
        run = Path(m["checkpoint"]).parent.parent.name  # <run>/checkpoints/checkpoint_*.pt
        print(f"| {m['model']} | {run} | {m['iteration']} | {m['num_videos']} | {m['top1']:.1f} "
              f"| {m['colour']:.1f} | {m['pair']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
