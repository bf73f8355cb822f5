"""Classification metrics: top-k accuracy (Kinetics) and mean average precision (Charades).

``average_precision`` follows the usual (scikit-learn ``average_precision_score``) definition:
``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds in decreasing order, i.e.
the mean of the precision at each positive's rank with tied scores counted as one threshold.
``mean_average_precision`` averages it over classes that have at least one positive (classes
without positives are excluded, as in PySlowFast's Charades evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction (0..1) of rows whose label is among the ``k`` highest scores, for each ``k``.

    ``scores`` (N, K), ``labels`` (N,) integer. ``k`` larger than K counts as K. Ties are broken by
    ``torch.topk`` order. Returns ``{k: accuracy}``; NaN for N == 0.
    """
    scores = torch.as_tensor(scores)
    labels = torch.as_tensor(labels).long()
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(
            f"expected scores (N, K) and labels (N,), got {tuple(scores.shape)}, {tuple(labels.shape)}"
        )
    n, num_classes = scores.shape
    if n == 0:
        return {k: float("nan") for k in ks}
    top = scores.topk(min(max(ks), num_classes), dim=1).indices
    hits = top == labels[:, None]
    return {k: hits[:, : min(k, num_classes)].any(dim=1).float().mean().item() for k in ks}


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """AP of one class: ``scores`` (N,), ``targets`` (N,) in {0, 1}. NaN when there is no positive."""
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    targets = torch.as_tensor(targets, dtype=torch.float64).flatten()
    if scores.shape != targets.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} differ")
    num_pos = targets.sum()
    if num_pos <= 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    s, t = scores[order], targets[order]
    tp = torch.cumsum(t, 0)
    # Last position of each run of equal scores = one threshold.
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp = tp[last]
    count = torch.arange(1, len(s) + 1, dtype=torch.float64)[last]
    precision = tp / count
    recall = tp / num_pos
    prev_recall = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
    return float(((recall - prev_recall) * precision).sum())


def per_class_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """AP for each column of ``scores``/``targets`` (N, K); NaN for classes without positives."""
    scores, targets = torch.as_tensor(scores), torch.as_tensor(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"expected (N, K) scores and targets, got {tuple(scores.shape)}, {tuple(targets.shape)}"
        )
    return [average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])]


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean AP over classes with at least one positive; NaN when no class has one."""
    aps = [a for a in per_class_average_precision(scores, targets) if not math.isnan(a)]
    return float(sum(aps) / len(aps)) if aps else float("nan")
