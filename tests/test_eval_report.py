"""eval.py's per-class report (engine/report.py) and the loss and view count of the aggregation."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nlvideo.engine.evaluate import VideoScoreAggregator
from nlvideo.engine.metrics import per_class_average_precision
from nlvideo.engine.report import confused_pairs, confusion_matrix, per_class_rows, write_report


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_loss_is_the_mean_clip_loss_over_the_views_actually_scored():
    agg = VideoScoreAggregator(num_videos=2, num_classes=3, multi_label=False)
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 2.0, 0.0], [9.0, 9.0, 9.0], [1.0, 1.0, 3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    agg.update(logits, labels, torch.tensor([0, 0, 1, 1]), valid=torch.tensor([True, True, False, True]))
    agg.reduce()
    kept = torch.tensor([0, 1, 3])
    assert agg.num_views_scored == 3
    metrics = agg.metrics()
    assert metrics["loss"] == pytest.approx(float(F.cross_entropy(logits[kept], labels[kept])))
    assert set(metrics) == {"top1", "loss"}  # 3 classes: no top-5


def test_multilabel_loss_is_the_training_objective():
    agg = VideoScoreAggregator(num_videos=2, num_classes=3, multi_label=True)
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    targets = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    agg.update(logits, targets, torch.tensor([0, 1]))
    agg.reduce()
    assert agg.metrics()["loss"] == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, targets)))


def test_nothing_scored_gives_no_metrics():
    agg = VideoScoreAggregator(num_videos=1, num_classes=3, multi_label=False)
    agg.update(torch.zeros(1, 3), torch.tensor([0]), torch.tensor([0]), valid=torch.tensor([False]))
    agg.reduce()
    assert agg.metrics() == {} and agg.num_views_scored == 0


def single_label_case():
    """6 classes; class 'c' (index 2) is always taken for 'd', class 'f' has no video."""
    names = ["a", "b", "c", "d", "e", "f"]
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4, 4, 4])
    predicted = torch.tensor([0, 0, 1, 0, 3, 3, 3, 4, 4, 1])
    scores = F.one_hot(predicted, 6).float() + 0.01 * torch.arange(6).float()
    return names, labels, predicted, scores


def test_per_class_accuracy_sorted_worst_first_with_what_each_class_is_taken_for(tmp_path):
    names, labels, predicted, scores = single_label_case()
    cm = confusion_matrix(predicted, labels, 6)
    assert cm.sum() == 10 and cm[2, 3] == 2 and cm[1, 0] == 1
    write_report(tmp_path, scores, labels, names, multi_label=False)
    rows = read_csv(tmp_path / "per_class.csv")
    assert [r["class"] for r in rows] == ["c", "b", "e", "a", "d", "f"]
    c, b = rows[0], rows[1]
    assert (c["videos"], c["top1"], c["most_confused_with"], c["confused_videos"]) == ("2", "0.00", "d", "2")
    assert (b["top1"], b["most_confused_with"]) == ("50.00", "a")
    assert rows[-1]["top1"] == "" and rows[-1]["videos"] == "0"  # no video: nothing measured, last
    assert rows[3]["class"] == "a" and rows[3]["top5"] == "100.00"
    pairs = read_csv(tmp_path / "confused_pairs.csv")
    assert (pairs[0]["true"], pairs[0]["predicted"], pairs[0]["videos"], pairs[0]["percent_of_true"]) == (
        "c", "d", "2", "100.00")
    assert len(pairs) == 3  # c->d, b->a, e->b: the only mistakes
    image = Image.open(tmp_path / "confusion.png")
    image.verify()
    assert image.size[0] > 300


def test_many_classes_get_the_pairs_list_but_no_matrix_picture(tmp_path):
    g = torch.Generator().manual_seed(0)
    names = [f"class{k}" for k in range(60)]
    labels = torch.randint(0, 60, (300,), generator=g)
    scores = torch.rand(300, 60, generator=g)
    written = write_report(tmp_path, scores, labels, names, multi_label=False)
    assert [p.name for p in written] == ["per_class.csv", "confused_pairs.csv"]
    assert len(read_csv(tmp_path / "confused_pairs.csv")) == 50
    assert len(read_csv(tmp_path / "per_class.csv")) == 60


def test_multilabel_report_is_per_class_ap_worst_first(tmp_path):
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(40, 5, generator=g)
    targets = (torch.rand(40, 5, generator=g) < 0.4).float()
    targets[:, 4] = 0
    written = write_report(tmp_path, scores, targets, list("vwxyz"), multi_label=True)
    assert [p.name for p in written] == ["per_class.csv"]
    rows = read_csv(tmp_path / "per_class.csv")
    aps = per_class_average_precision(scores, targets)
    measured = sorted((ap, k) for k, ap in enumerate(aps) if not math.isnan(ap))
    assert [int(r["index"]) for r in rows] == [k for _, k in measured] + [4]
    assert float(rows[0]["AP"]) == pytest.approx(100 * measured[0][0], abs=0.005)
    assert rows[-1]["AP"] == "" and rows[-1]["positives"] == "0"


def test_rows_and_pairs_of_a_perfect_model():
    names = ["a", "b"]
    labels = torch.tensor([0, 1])
    rows = per_class_rows(torch.eye(2), labels, names, multi_label=False)
    assert all(r["top1"] == 100.0 and r["most_confused_with"] == "" for r in rows)
    assert confused_pairs(confusion_matrix(labels, labels, 2), names) == []
