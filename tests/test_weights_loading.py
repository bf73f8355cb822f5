"""Weights enter a model one way (nlvideo.models.pretrained.load_weights): every tensor fits, the backbone
is whole, each non-local block and the classifier wholly in the file or wholly absent; a file whose
settings describe another network, or with damaged values, is refused in one line. Files are written
the way the peers write them (tests/test_pretrained.py's Caffe2 and PySlowFast writers)."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch

from nlvideo import create_model
from nlvideo.engine.trainer import load_weights_for_finetuning
from nlvideo.models import ConfigError
from nlvideo.models import pretrained as pt
from tests.test_pretrained import (
    CAFFE2_NL,
    NL5,
    PYSLOWFAST_NL,
    assert_same_logits,
    build,
    in_format,
    randomise,
    save_caffe2,
    save_pyslowfast,
)
from tests.test_train_run import run_app


@pytest.fixture(scope="module")
def caffe2_nl(tmp_path_factory):
    """A video-nonlocal-net NL I3D (width 8) and its blobs, as its save_model_params writes them."""
    source = randomise(build("i3d", CAFFE2_NL, stem_pool_padding=0))
    path = save_caffe2(source, tmp_path_factory.mktemp("caffe2") / "i3d_nonlocal.pkl")
    with path.open("rb") as f:
        return source, pickle.load(f)["blobs"]


def write_blobs(blobs: dict, path) -> str:
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    return str(path)


# ---- a part of the model is wholly in the file or wholly absent ---------------------------------

@pytest.mark.parametrize(("dropped", "missing"), [
    (("nonlocal_conv4_1_theta_w", "nonlocal_conv4_1_theta_b"), "res4.nl1"),
    (("nonlocal_conv4_1_bn_s",), "res4.nl1"),
    (("nonlocal_conv3_3_out_w", "nonlocal_conv3_3_out_b"), "res3.nl3"),
    (("pred_w",), "head.fc"),
])
def test_a_part_missing_some_of_its_caffe2_blobs_is_refused_naming_them(caffe2_nl, dropped, missing,
                                                                         tmp_path):
    """Before: the block kept its output conv and BN from the file and a random theta (a logit 21.5 ->
    48.1), logged as a 'new non-local block (identity)'; pred_b without pred_w loaded a random head."""
    _, blobs = caffe2_nl
    path = write_blobs({k: v for k, v in blobs.items() if k not in dropped}, tmp_path / "half.pkl")
    with pytest.raises(ConfigError) as err:
        build("i3d", NL5, pretrained=path)
    message = str(err.value)
    assert f"of {missing}: it must hold each part of the model" in message and "\n" not in message
    assert all(name in message for name in dropped)


def test_a_pyslowfast_block_missing_theta_is_refused(tmp_path):
    source = randomise(build("i3d", PYSLOWFAST_NL))
    weights = {k: v for k, v in in_format(source, pt.PYSLOWFAST_KEYS).items()
               if not k.startswith("s4.pathway0_nonlocal1.conv_theta.")}
    path = tmp_path / "half.pyth"
    torch.save({"model_state": weights}, path)
    with pytest.raises(ConfigError, match=r"lacks 2 of the model's tensors, e.g. \['res4.nl1.theta.weight', "
                                          r"'res4.nl1.theta.bias'\] \(PySlowFast names \['s4.pathway0_"
                                          r"nonlocal1.conv_theta.weight'"):
        build("i3d", NL5, pretrained=str(path))


def test_blocks_wholly_absent_are_new_identities_and_logged(caffe2_nl, tmp_path, caplog):
    source, blobs = caffe2_nl
    kept = {k: v for k, v in blobs.items() if not k.startswith("nonlocal_conv4_1_")}
    path = write_blobs(kept, tmp_path / "a.pkl")
    with caplog.at_level(logging.INFO, logger="nlvideo.models.pretrained"):
        model = build("i3d", NL5, pretrained=path)
    assert "new non-local blocks (identities): ['res4.nl1']; head loaded" in caplog.text
    assert torch.equal(model.res4.nl3.theta.weight, source.res4.nl3.theta.weight)


# ---- PySlowFast cfg: what nlvideo cannot build is refused ----------------------------------------

@pytest.mark.parametrize(("sections", "message"), [
    ({"RESNET": {"SPATIAL_STRIDES": [[1], [2], [2], [1]], "SPATIAL_DILATIONS": [[1], [1], [1], [2]]}},
     r"RESNET.SPATIAL_STRIDES=\[\[1\], \[2\], \[2\], \[1\]\]: nlvideo builds its C2D/I3D with "
     r"RESNET.SPATIAL_STRIDES=\[\[1\], \[2\], \[2\], \[2\]\]"),
    ({"RESNET": {"SPATIAL_DILATIONS": [[1], [1], [1], [2]]}}, r"RESNET.SPATIAL_DILATIONS="),
    ({"RESNET": {"TRANS_FUNC": "basic_transform"}}, r"RESNET.TRANS_FUNC=basic_transform"),
    ({"RESNET": {"NUM_GROUPS": 32}}, r"RESNET.NUM_GROUPS=32"),
])
def test_pyslowfast_settings_of_another_network_are_refused(sections, message, tmp_path):
    """Before: SPATIAL_STRIDES res5 = 1 with SPATIAL_DILATIONS res5 = 2 (a detection backbone) loaded into
    i3d, its logits 23 % off."""
    path = save_pyslowfast(build("i3d", PYSLOWFAST_NL), tmp_path / "det.pyth", **sections)
    with pytest.raises(ConfigError, match=rf"model.pretrained={path} \(PySlowFast\): PySlowFast {message}"):
        build("i3d", NL5, pretrained=str(path))


def test_pyslowfast_cfg_that_is_empty_is_one_line(tmp_path):
    path = tmp_path / "empty_cfg.pyth"
    torch.save({"model_state": in_format(build("i3d"), pt.PYSLOWFAST_KEYS), "cfg": ""}, path)
    with pytest.raises(ConfigError, match=r"PySlowFast cfg is empty: nlvideo needs the settings"):
        build("i3d", pretrained=str(path))


# ---- damaged or odd blobs ---------------------------------------------------------------------------

def test_caffe2_pred_w_stored_5d_is_reshaped_as_caffe2_does(caffe2_nl, tmp_path):
    """video-nonlocal-net's test nets build pred_w (classes, C, 1, 1, 1); it was re-initialised."""
    source, blobs = caffe2_nl
    path = write_blobs({**blobs, "pred_w": blobs["pred_w"].reshape(*blobs["pred_w"].shape, 1, 1, 1)},
                       tmp_path / "5d.pkl")
    assert_same_logits(build("i3d", NL5, pretrained=path), source)


def test_nan_or_inf_weights_are_refused_naming_the_blob(caffe2_nl, tmp_path):
    _, blobs = caffe2_nl
    bad = blobs["res4_2_branch2b_w"].copy()
    bad.flat[7] = np.nan
    path = write_blobs({**blobs, "res4_2_branch2b_w": bad}, tmp_path / "nan.pkl")
    with pytest.raises(ConfigError, match=r"res4_2_branch2b_w holds NaN or infinite values"):
        build("i3d", NL5, pretrained=path)
    path = save_pyslowfast(build("i3d"), tmp_path / "inf.pyth", NONLOCAL={"LOCATION": []})
    state = torch.load(path, weights_only=True)
    state["model_state"]["head.projection.bias"][0] = float("inf")
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"head.projection.bias holds NaN or infinite values"):
        build("i3d", pretrained=str(path))


@pytest.mark.parametrize(("blob", "value", "found"), [
    ("res_conv1_bn_s", np.ones(8, np.int64),
     r"res_conv1_bn_s is torch.int64 \(8,\), model stem.bn.weight needs floating-point \(8,\)"),
    ("res_conv1_bn_b", np.float32(0.5), r"res_conv1_bn_b has shape \(\), model stem.bn.bias needs \(8,\)"),
    ("res_conv1_bn_b", "abc", r"res_conv1_bn_b is a str, not a numeric array: model stem.bn.bias needs one"),
])
def test_int_typed_or_0_dim_blobs_are_named_with_what_was_expected(caffe2_nl, blob, value, found, tmp_path):
    """Before: 'lacks 1 of the model's tensors', although the blob is there."""
    _, blobs = caffe2_nl
    path = write_blobs({**blobs, blob: np.asarray(value) if not isinstance(value, str) else value},
                       tmp_path / "odd.pkl")
    with pytest.raises(ConfigError, match=found):
        build("i3d", NL5, pretrained=path)


def test_a_truncated_file_is_named_truncated_or_corrupt(caffe2_nl, tmp_path):
    pyth = save_pyslowfast(build("i3d"), tmp_path / "full.pyth", NONLOCAL={"LOCATION": []})
    pkl = save_caffe2(build("i3d"), tmp_path / "full.pkl")
    for full in (pyth, pkl):
        cut = tmp_path / f"cut{full.suffix}"
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        with pytest.raises(ConfigError, match=rf"^model.pretrained={cut}: the file is truncated or corrupt"):
            build("i3d", pretrained=str(cut))


# ---- trainer.init_weights: the same reader and policy ------------------------------------------------

def test_init_weights_names_model_pretrained_for_published_weights_and_truncation(caffe2_nl, tmp_path):
    """Before: 'Invalid magic number' for a Caffe2 .pkl, a traceback for a truncated file."""
    _, blobs = caffe2_nl
    pkl = write_blobs(blobs, tmp_path / "i3d_nonlocal.pkl")
    model = build("i3d", NL5)
    with pytest.raises(ConfigError, match=rf"^trainer.init_weights={pkl} \(video-nonlocal-net Caffe2\): pass "
                                          rf"published weights as model.pretrained={pkl}"):
        load_weights_for_finetuning(model, pkl, ["a"] * 5)
    good = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "class_names": list("abcde")}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ConfigError, match=rf"^trainer.init_weights={cut}: the file is truncated or corrupt"):
        load_weights_for_finetuning(model, str(cut), list("abcde"))


def test_init_weights_refuses_a_checkpoint_of_another_width_instead_of_skipping_tensors(tmp_path):
    """Before: tensors of other shapes were skipped and left at their initialisation."""
    path = tmp_path / "wide.pt"
    torch.save({"model": create_model("c2d", num_classes=5, width=16).state_dict(),
                "class_names": list("abcde")}, path)
    with pytest.raises(ConfigError, match=r"stem.conv.weight has shape \(16, 3, 1, 7, 7\), model "
                                          r"stem.conv.weight needs \(8, 3, 1, 7, 7\); channel counts differ"):
        load_weights_for_finetuning(build("c2d"), str(path), list("abcde"))


# ---- commands reading a train.py checkpoint: one line, exit 2 ----------------------------------------

def edited_checkpoint(trained_checkpoint, path, model=None, weights=None):
    state = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)
    state["config"]["model"].update(model or {})
    if weights is not None:
        state["model"] = weights(state["model"])
    torch.save(state, path)
    return path


def one_error_line(r) -> str:
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    (line,) = r.stderr.strip().splitlines()
    return line


def test_predict_and_export_name_a_truncated_or_garbage_checkpoint(trained_checkpoint, synthetic_root,
                                                                   tmp_path):
    cut, garbage = tmp_path / "cut.pt", tmp_path / "garbage.pt"
    cut.write_bytes(trained_checkpoint.read_bytes()[:20000])
    garbage.write_bytes(b"not a checkpoint\n" * 50)
    video = next((synthetic_root / "videos").rglob("*.mp4"))
    for bad in (cut, garbage):
        for script, extra in (("predict.py", f"video={video}"),
                              ("scripts/export.py", f"out={tmp_path}/m.onnx")):
            line = one_error_line(run_app(script, f"checkpoint={bad}", extra))
            assert line.startswith(f"error: checkpoint={bad}: the file is truncated or corrupt ("), line


def test_a_checkpoint_whose_config_does_not_fit_its_weights_is_one_line(trained_checkpoint, synthetic_root,
                                                                         tmp_path):
    video = next((synthetic_root / "videos").rglob("*.mp4"))
    wide = edited_checkpoint(trained_checkpoint, tmp_path / "wide.pt", model={"width": 16})
    line = one_error_line(run_app("predict.py", f"checkpoint={wide}", f"video={video}"))
    assert f"checkpoint={wide} (nlvideo): stem.conv.weight has shape (8, 3, 1, 7, 7), model " \
           "stem.conv.weight needs (16, 3, 1, 7, 7); channel counts differ" in line
    no_nl = edited_checkpoint(trained_checkpoint, tmp_path / "no_nl.pt",
                              weights=lambda w: {k: v for k, v in w.items() if ".nl" not in k})
    line = one_error_line(run_app("predict.py", f"checkpoint={no_nl}", f"video={video}"))
    assert "(nlvideo) lacks 12 of the model's tensors, e.g. ['res4.nl4." in line
    assert line.endswith("of res4.nl4: it must hold every tensor of the model")


@pytest.mark.parametrize(("override", "message"), [
    ("model=i3d", "(nlvideo) has non-local blocks ['res4.nl4'] the model lacks: set "
                  "model.nonlocal.positions=[res4.4]"),
    ("model.width=32", "stem.conv.weight has shape (8, 3, 1, 7, 7), model stem.conv.weight needs "
                       "(32, 3, 1, 7, 7); channel counts differ"),
])
def test_eval_with_a_model_override_that_does_not_fit_is_one_line(override, message, trained_checkpoint,
                                                                   tmp_path):
    r = run_app("eval.py", f"checkpoint={trained_checkpoint}", override, f"hydra.run.dir={tmp_path}/eval")
    assert message in one_error_line(r)


def test_visualize_names_a_baseline_checkpoint_in_one_line(trained_checkpoint, tmp_path):
    baseline = edited_checkpoint(trained_checkpoint, tmp_path / "c2d.pt",
                                 model={"name": "c2d", "nonlocal": {"positions": []}},
                                 weights=lambda w: {k: v for k, v in w.items() if ".nl" not in k})
    r = run_app("-m", "nlvideo.visualize", "--checkpoint", str(baseline), "--out", f"{tmp_path}/a.png")
    assert one_error_line(r) == f"error: --checkpoint {baseline}: its model c2d has no non-local blocks to " \
                                "visualise (a baseline); pass a checkpoint of a model with them, e.g. c2d_nl5"
