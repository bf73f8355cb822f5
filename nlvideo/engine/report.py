"""Per-class results of a test, worst first: what ``eval.py`` writes beside ``metrics.json``.

One number hides where a model fails; these files say which classes and which mix-ups:

* ``per_class.csv``, sorted worst first. Single-label data (Kinetics): each class's top-1 accuracy
  over its videos (its recall), top-5 when there are at least 5 classes, and the class its videos are
  most often taken for. Multi-label data (Charades): each class's average precision (the terms of the
  mAP). Classes without a test video (or positive) have no value and come last.
* Single-label only (a multi-label video has no single prediction to confuse): ``confused_pairs.csv``,
  the most frequent (true, predicted) mistakes, and ``confusion.png``, the row-normalised confusion
  matrix, when there are at most :data:`CONFUSION_PNG_MAX_CLASSES` classes (beyond that a matrix
  is unreadable and the pairs list is the report).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import torch

from nlvideo.engine.metrics import per_class_average_precision

log = logging.getLogger("nlvideo.eval")

CONFUSION_PNG_MAX_CLASSES = 50
NUM_CONFUSED_PAIRS = 50
PAIR_COLUMNS = ["true", "predicted", "videos", "percent_of_true"]
REPORT_FILES = ("per_class.csv", "confused_pairs.csv", "confusion.png")  # what write_report may write


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_rows(scores: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                   multi_label: bool) -> list[dict[str, object]]:
    """One row per class (percentages, ``None`` where a class has nothing to measure), worst first."""
    if multi_label:
        aps = per_class_average_precision(scores, labels.float())
        positives = (labels > 0.5).sum(0).tolist()
        rows = [{"class": name, "index": k, "positives": int(positives[k]),
                 "AP": None if math.isnan(ap) else 100.0 * ap}
                for k, (name, ap) in enumerate(zip(class_names, aps, strict=True))]
        return sorted(rows, key=lambda r: _worst_first(r["AP"]))
    num_classes = scores.shape[1]
    cm = confusion_matrix(scores.argmax(1), labels, num_classes)
    videos = cm.sum(1)
    top5 = None
    if num_classes >= 5:
        hit = (scores.topk(5, dim=1).indices == labels.long()[:, None]).any(1).double()
        top5 = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels.long(), hit)
    off_diagonal = cm - torch.diag(torch.diagonal(cm))
    rows = []
    for k, name in enumerate(class_names):
        n = int(videos[k])
        row: dict[str, object] = {"class": name, "index": k, "videos": n,
                                  "top1": 100.0 * int(cm[k, k]) / n if n else None}
        if top5 is not None:
            row["top5"] = 100.0 * float(top5[k]) / n if n else None
        mistaken = int(off_diagonal[k].argmax())
        count = int(off_diagonal[k, mistaken])
        row["most_confused_with"] = class_names[mistaken] if count else ""
        row["confused_videos"] = count
        rows.append(row)
    return sorted(rows, key=lambda r: _worst_first(r["top1"]))


def _worst_first(value: object) -> tuple[bool, float]:
    return (value is None, float(value) if value is not None else 0.0)


def confused_pairs(cm: torch.Tensor, class_names: list[str], n: int = NUM_CONFUSED_PAIRS) -> list[dict]:
    """The ``n`` most frequent mistakes: (true, predicted, videos, % of the true class's videos)."""
    off = cm.clone()
    off.fill_diagonal_(0)
    counts, flat = off.flatten().sort(descending=True, stable=True)
    k = cm.shape[0]
    rows = []
    for count, index in zip(counts.tolist()[:n], flat.tolist()[:n], strict=True):
        if count == 0:
            break
        true, pred = divmod(index, k)
        rows.append(dict(zip(PAIR_COLUMNS, (class_names[true], class_names[pred], count,
                                            100.0 * count / int(cm[true].sum())), strict=True)))
    return rows


def plot_confusion(cm: torch.Tensor, class_names: list[str], path: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (each true class's videos sum to 100 %) with class names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = cm.shape[0]
    rows = cm.double().sum(1, keepdim=True).clamp_min(1)
    percent = (100.0 * cm.double() / rows).numpy()
    side = min(max(4.0, 0.28 * k + 2.5), 18.0)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(k), class_names, rotation=90, fontsize=max(4, 9 - k // 10))
    ax.set_yticks(range(k), class_names, fontsize=max(4, 9 - k // 10))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 20:  # cells large enough to carry their counts
        for t in range(k):
            for p in range(k):
                if cm[t, p]:
                    ax.text(p, t, str(int(cm[t, p])), ha="center", va="center", fontsize=7,
                            color="white" if percent[t, p] > 50 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="% of the true class's videos")
    ax.set_title(title or f"confusion matrix ({int(cm.sum())} videos)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_csv(path: Path, rows: list[dict[str, object]], fieldnames: list[str]) -> Path:
    """``rows`` as CSV; floats to 2 decimals, ``None`` as an empty cell."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else f"{v:.2f}" if isinstance(v, float) else v
                             for k, v in row.items()})
    return path


def write_report(out_dir: Path, scores: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                 multi_label: bool) -> list[Path]:
    """Write the per-class report of per-video ``scores`` (N, K) and ``labels`` into ``out_dir``."""
    rows = per_class_rows(scores, labels, class_names, multi_label)
    written = [write_csv(out_dir / "per_class.csv", rows, list(rows[0]))]
    key = "AP" if multi_label else "top1"
    worst = [f"{r['class']} {r[key]:.1f}" for r in rows[:3] if r[key] is not None]
    log.info("worst classes (%s %%): %s", key, ", ".join(worst) or "none measured")
    if multi_label:
        return written
    cm = confusion_matrix(scores.argmax(1), labels, len(class_names))
    written.append(write_csv(out_dir / "confused_pairs.csv", confused_pairs(cm, class_names), PAIR_COLUMNS))
    if len(class_names) <= CONFUSION_PNG_MAX_CLASSES:
        written.append(plot_confusion(cm, class_names, out_dir / "confusion.png"))
    return written
