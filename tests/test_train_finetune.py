"""trainer.init_weights: a checkpoint's weights start a run on other data. Classifier rows follow the
class names (the same classes listed in another order keep their rows), and a classifier trained on
other classes is left at its initialisation, which the log says."""

from __future__ import annotations

import logging

import torch

from nlvideo import create_model
from nlvideo.engine.trainer import load_weights_for_finetuning


def test_finetuning_maps_classifier_rows_by_name_and_says_when_the_classifier_is_new(tmp_path, caplog):
    torch.manual_seed(0)
    source = create_model("c2d", num_classes=3, width=8)
    path = tmp_path / "kinetics.pt"
    torch.save({"model": source.state_dict(), "class_names": ["archery", "bowling", "curling"]}, path)

    reordered = create_model("c2d", num_classes=3, width=8)
    load_weights_for_finetuning(reordered, str(path), ["curling", "archery", "bowling"])
    assert torch.equal(reordered.head.fc.weight, source.head.fc.weight[[2, 0, 1]])
    assert torch.equal(reordered.head.fc.bias, source.head.fc.bias[[2, 0, 1]])

    other = create_model("c2d", num_classes=3, width=8)
    initial = other.head.fc.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="nlvideo.train"):
        load_weights_for_finetuning(other, str(path), ["x", "y", "z"])
    assert torch.equal(other.head.fc.weight, initial)
    assert torch.equal(other.stem.conv.weight, source.stem.conv.weight)  # the backbone is loaded
    assert f"new classifier: {path} was trained on other classes than this data's" in caplog.text
