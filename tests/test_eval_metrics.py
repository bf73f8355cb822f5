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


def test_ap_and_map_match_scikit_learn_on_random_scores_with_ties():
    """Scores on 5 levels make ties everywhere; one class has no positive (excluded from the mAP)."""
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (60, 8), generator=g).double() / 4
    targets = (torch.rand(60, 8, generator=g) < 0.3).long()
    targets[:, 7] = 0
    targets[0, :7] = 1  # every other class has a positive
    per = per_class_average_precision(scores, targets)
    for k in range(7):
        assert per[k] == pytest.approx(average_precision_score(targets[:, k], scores[:, k]), abs=1e-12)
    assert math.isnan(per[7])
    reference = average_precision_score(targets[:, :7], scores[:, :7], average="macro")
    assert mean_average_precision(scores, targets) == pytest.approx(reference, abs=1e-12)
