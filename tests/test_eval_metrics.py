import math

import pytest
import torch

from nlvideo.engine.metrics import (
    average_precision,
    mean_average_precision,
    per_class_average_precision,
    topk_accuracy,
)


def test_ap_hand_computed():
    # ranking: + - + - -> precision at the positives 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1])
    assert average_precision(scores, torch.tensor([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # ranking: - + + -> (1/2 + 2/3) / 2
    assert average_precision(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0, 1, 1])) == pytest.approx(7 / 12)
    assert average_precision(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])) == pytest.approx(1.0)


def test_ap_ties_count_as_one_threshold():
    # scores tied at 0.5 for a positive and a negative: one threshold with precision 1/2
    assert average_precision(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == pytest.approx(0.5)
    # + (0.9), then a tie {+,-,-} at 0.4: precision 1/1 then 2/4 -> (1 + 0.5) / 2
    s = torch.tensor([0.9, 0.4, 0.4, 0.4])
    assert average_precision(s, torch.tensor([1, 0, 1, 0])) == pytest.approx(0.75)


def test_ap_no_positive_is_nan():
    assert math.isnan(average_precision(torch.tensor([0.1, 0.2]), torch.tensor([0, 0])))


def test_map_excludes_classes_without_positives():
    scores = torch.tensor([[0.9, 3.0, 0.1], [0.8, 2.0, 0.2], [0.7, 1.0, 0.3], [0.1, 0.0, 0.4]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    per = per_class_average_precision(scores, targets)
    assert per[0] == pytest.approx(5 / 6) and per[1] == pytest.approx(7 / 12) and math.isnan(per[2])
    assert mean_average_precision(scores, targets) == pytest.approx((5 / 6 + 7 / 12) / 2)
    assert math.isnan(mean_average_precision(scores, torch.zeros_like(targets)))


def test_topk():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = torch.tensor([1, 2, 0, 1])
    acc = topk_accuracy(scores, labels, ks=(1, 2, 5))
    assert acc == {1: pytest.approx(0.25), 2: pytest.approx(0.5), 5: pytest.approx(1.0)}
    with pytest.raises(ValueError):
        topk_accuracy(scores, labels[:2])
