"""predict.py / nlvideo.Predictor with published weights (model.pretrained= and a class file) on real
mp4s: the model the weights came from, Kinetics' test views, the weights' normalisation, their classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from nlvideo.data import clip_spec
from nlvideo.models import ConfigError
from nlvideo.predict import Predictor, view_spec
from tests.test_pretrained import CAFFE2_NL, build, randomise, save_caffe2, save_pyslowfast
from tests.test_train_run import run_app

KINETICS = Path(__file__).resolve().parents[1] / "configs" / "data" / "kinetics400.yaml"
NAMES = ["abseiling", "air drumming", "answering questions", "applauding", "applying cream"]


@pytest.fixture(scope="module")
def caffe2_weights(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A tiny video-nonlocal-net NL I3D (the network, and its Caffe2 pickle): 5 classes, width 8, pool1
    unpadded, NL blocks pooling their input and scaling the softmax, none of them nlvideo's defaults."""
    source = randomise(build("i3d", CAFFE2_NL, stem_pool_padding=0))
    return source, save_caffe2(source, tmp_path_factory.mktemp("weights") / "i3d_nonlocal_8x8.pkl")


@pytest.fixture(scope="module")
def video(make_video, tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("videos") / "clip.mp4", num_frames=72, width=96, height=72)


def test_published_weights_predict_as_the_network_they_came_from(caffe2_weights, video, tmp_path):
    """The class file in PySlowFast's classids.json form; Kinetics' test views at the weights' own
    normalisation; probabilities those of the original network on the same views."""
    source, weights = caffe2_weights
    classids = tmp_path / "classids.json"
    classids.write_text(json.dumps({name: i for i, name in enumerate(NAMES)}))
    predictor = Predictor.from_pretrained(weights, "i3d_nl5", classids, views="2x3", device="cpu", width=8)
    expected = view_spec(OmegaConf.load(KINETICS), "2x3")  # 8 frames x 8, 3 crops of 256 at 256
    assert predictor.spec == expected and (expected.crop_size, expected.num_frames) == (256, 8)
    assert (expected.mean, expected.std) == ((114.75,), (57.375,)) and not predictor.multi_label
    assert predictor.class_names == NAMES and predictor.config["model"]["stem_pool_padding"] == 0
    direct = Predictor(source, NAMES, expected, multi_label=False)
    scores = predictor.scores(video)
    torch.testing.assert_close(scores, direct.scores(video), rtol=0, atol=1e-5)
    assert scores.sum().item() == pytest.approx(1.0, abs=1e-5) and scores.max() - scores.min() > 0.01
    probs, idx = scores.topk(2)
    assert predictor.predict(video, topk=2) == list(zip([NAMES[i] for i in idx], probs.tolist(), strict=True))


def test_paper_views_and_the_normalisation_the_weights_were_trained_with(tmp_path):
    """PySlowFast weights with their own DATA.MEAN: it becomes the views' mean; 32x2 from clip=."""
    path = save_pyslowfast(build("c2d"), tmp_path / "C2D.pyth", MODEL={"ARCH": "c2d"},
                           NONLOCAL={"LOCATION": []}, DATA={"MEAN": [0.5, 0.4, 0.3]})
    predictor = Predictor.from_pretrained(path, "c2d", NAMES, clip="32x2", device="cpu", width=8)
    spec = clip_spec(OmegaConf.load(KINETICS), "test")
    assert (predictor.spec.num_clips, predictor.spec.num_crops) == (10, 3) == (spec.num_clips, spec.num_crops)
    assert predictor.spec.mean == (127.5, 102.0, 76.5) and predictor.spec.std == (57.375,)
    assert (predictor.spec.num_frames, predictor.spec.sampling_rate) == (32, 2)
    assert predictor.model.spec.input_variant == "32x2"


def test_a_class_file_of_another_size_is_one_line_naming_both_counts(caffe2_weights, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(NAMES[:4]) + "\n")
    with pytest.raises(ConfigError) as info:
        Predictor.from_pretrained(caffe2_weights[1], "i3d_nl5", classes, device="cpu", width=8)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{classes} names 4 classes, the classifier of ")
    assert "(video-nonlocal-net Caffe2) has 5" in message
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(ConfigError, match=r"dup.txt:3: duplicate class name 'a'"):
        Predictor.from_pretrained(caffe2_weights[1], "i3d_nl5", tmp_path / "dup.txt", width=8)


def test_predict_command_with_published_weights(caffe2_weights, video, tmp_path):
    classes = tmp_path / "kinetics_classes.txt"
    classes.write_text("\n".join(NAMES) + "\n")
    weights = caffe2_weights[1]
    r = run_app("predict.py", "model=i3d_nl5", "model.width=8", f"model.pretrained={weights}",
                f"classes={classes}", f"video={video}", "views=1", "output=json", "device=cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    (out,) = json.loads(r.stdout)
    expected = Predictor.from_pretrained(weights, "i3d_nl5", classes, views=1, device="cpu", width=8)
    top = expected.predict(video)
    assert [c["class"] for c in out["top"]] == [name for name, _ in top]
    torch.testing.assert_close(torch.tensor([c["probability"] for c in out["top"]]),
                               torch.tensor([p for _, p in top]), rtol=0, atol=1e-5)
    r = run_app("predict.py", f"checkpoint={weights}", f"classes={classes}", f"video={video}")
    assert r.returncode == 2
    error = r.stderr.strip().splitlines()[-1]
    assert error.startswith("error: checkpoint= holds its model, data config and class names; "
                            f"['classes={classes}'] are for published weights")
