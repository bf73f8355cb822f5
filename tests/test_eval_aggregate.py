"""Per-video multi-view aggregation, padding removal and metrics (single-process parts)."""

import csv

import pytest
import torch

from nlvideo.engine.evaluate import (
    VideoScoreAggregator,
    compute_metrics,
    rank_positions_kept,
    write_predictions,
)


def test_softmax_scores_are_averaged_per_video_and_failed_views_skipped():
    agg = VideoScoreAggregator(num_videos=3, num_classes=2, multi_label=False)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 5.0], [1.0, 0.0], [9.0, 9.0]])
    labels = torch.tensor([0, 0, 1, 1, 0])
    vids = torch.tensor([0, 0, 1, 1, 2])
    valid = torch.tensor([True, True, True, False, False])
    agg.update(logits, labels, vids, valid)
    agg.reduce()
    present, scores, labs = agg.result()
    assert present.tolist() == [0, 1]
    torch.testing.assert_close(scores[0], torch.tensor([0.5, 0.5]))  # mean of two mirrored softmaxes
    torch.testing.assert_close(scores[1], torch.softmax(torch.tensor([0.0, 5.0]), 0))
    assert labs.tolist() == [0, 1]
    assert agg.num_failed == 1  # video 2: no decodable view at all


def test_multilabel_uses_sigmoid_and_map():
    agg = VideoScoreAggregator(num_videos=2, num_classes=3, multi_label=True)
    targets = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    agg.update(torch.tensor([[5.0, -5, 5], [-5, 5, -5]]), targets, torch.tensor([0, 1]))
    agg.reduce()
    _, scores, labs = agg.result()
    torch.testing.assert_close(scores, torch.sigmoid(torch.tensor([[5.0, -5, 5], [-5, 5, -5]])))
    assert compute_metrics(scores, labs, multi_label=True) == {"mAP": pytest.approx(100.0)}


def test_topk_metrics_in_percent():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5]])
    m = compute_metrics(scores, torch.tensor([0, 1]), multi_label=False, topk=(1, 2, 5))
    assert m == {"top1": pytest.approx(50.0), "top2": pytest.approx(100.0)}


def test_padding_positions_of_distributed_striding():
    # 5 items over 2 ranks -> 3 per rank, global positions r, r+2, r+4; position 5 is padding.
    assert rank_positions_kept(5, rank=0, world_size=2, count=3).tolist() == [True, True, True]
    assert rank_positions_kept(5, rank=1, world_size=2, count=3).tolist() == [True, True, False]


def test_predictions_csv(tmp_path):
    path = tmp_path / "p.csv"
    write_predictions(path, ["a.mp4", "b.mp4"], torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]),
                      torch.tensor([0.0, 1.0]), ["x", "y", "z"], multi_label=False, k=2)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["video"] == "a.mp4" and rows[0]["label"] == "x" and rows[0]["pred"] == "x"
    assert rows[1]["top2"] == "z;x" or rows[1]["top2"] == "z;y"


@pytest.mark.parametrize("multi_label", [False, True])
def test_a_class_order_permutes_the_probabilities_exactly(multi_label):
    """A test list that orders the model's classes differently scores exactly as the model's own order
    (the mapping is applied to the probabilities: permuting logits changes the softmax's summation order
    and with it the last bits), and the loss is the same."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=g)
    labels = (torch.rand(64, 5, generator=g) > 0.5).float() if multi_label else torch.randint(0, 5, (64,),
                                                                                            generator=g)
    order = [3, 0, 4, 1, 2]  # data class j is model output order[j]
    data_labels = labels[:, order] if multi_label else torch.argsort(torch.tensor(order))[labels]
    videos = torch.arange(64)
    own = VideoScoreAggregator(64, 5, multi_label)
    own.update(logits, labels, videos)
    mapped = VideoScoreAggregator(64, 5, multi_label, output_order=order)
    mapped.update(logits, data_labels, videos)
    assert torch.equal(mapped.scores, own.scores[:, order])
    assert torch.equal(mapped.loss_sum, own.loss_sum)
