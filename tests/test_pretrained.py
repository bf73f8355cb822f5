"""model.pretrained: PyTorchVideo hub, PySlowFast, video-nonlocal-net Caffe2, torchvision and nlvideo
checkpoints give the original network's function; errors name what is wrong; the normalisation the
weights were trained with is reported and applied to the data config."""

import logging
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from torch import nn

import nlvideo  # noqa: F401  (torchvision compat before torchvision/pytorchvideo imports)
from nlvideo.models import ConfigError, NonLocalBlock, VideoResNet, build_video_resnet
from nlvideo.models import pretrained as pt

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NL5 = {"positions": ["res3.1", "res3.3", "res4.1", "res4.3", "res4.5"]}


def clip() -> torch.Tensor:
    """The clip every model here is compared on (res5 is 4 x 2 x 2)."""
    return torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(1))


def build(arch: str, nl: dict | None = None, **kwargs) -> VideoResNet:
    torch.manual_seed(0)
    return build_video_resnet(name=arch, arch=arch, num_classes=5, width=8, dropout=0.0,
                              **{"nonlocal": nl or {}}, **kwargs).eval()


def randomise(model: nn.Module) -> nn.Module:
    """Random BN affine parameters, NL blocks that are not identities and a classifier with a spread of
    logits; then BN running statistics of :func:`clip`: non-trivial, and they keep a deep random
    network's activations in range (the dot-product blocks are cubic in their input)."""
    gen = torch.Generator().manual_seed(0)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NonLocalBlock):
                for p in m.parameters():
                    p.normal_(0.0, 0.2, generator=gen)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
        for m in bns:
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.normal_(0.0, 0.1, generator=gen)
            m.momentum = 1.0
        model.train()(clip())
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def assert_same_logits(model: nn.Module, reference: nn.Module) -> None:
    with torch.no_grad():
        ref = reference(clip())
        torch.testing.assert_close(model(clip()), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def in_format(model: nn.Module, keys: pt.KeyMap) -> dict[str, torch.Tensor]:
    """The model's state dict under a format's names: the inverse mapping."""
    out = {keys.to_theirs(k): v.clone() for k, v in model.state_dict().items()}
    out.pop(None, None)  # num_batches_tracked: Caffe2 has no such blob
    return out


# ---- PyTorchVideo hub: a parity test against pytorchvideo's own models -------------------------

def ptv_model(arch: str, **kwargs) -> nn.Module:
    """``hub.c2d_r50`` / ``hub.i3d_r50`` (no download), 1/8 width, head pooling for 64x64 crops."""
    from pytorchvideo.models import hub  # after nlvideo's torchvision compat shim

    builder = getattr(hub, f"{arch}_r50")
    return randomise(builder(pretrained=False, stem_dim_out=8, model_num_class=5,
                             head_pool_kernel_size=(4, 2, 2), dropout_rate=0.0, **kwargs))


@pytest.mark.parametrize("arch", ["c2d", "i3d"])
def test_pytorchvideo_hub_checkpoint_gives_its_logits_with_and_without_new_nl_blocks(arch, tmp_path):
    """The paper's recipe: NL blocks inserted into a trained baseline are identities at first."""
    reference = ptv_model(arch)
    path = tmp_path / f"{arch.upper()}_8x8_R50.pyth"
    torch.save({"model_state": reference.state_dict(), "epoch": 196}, path)
    for nl in (None, NL5):
        model = build(arch, nl, pretrained=str(path))
        assert model.num_nonlocal == (5 if nl else 0)
        assert_same_logits(model, reference)


# ---- PySlowFast: the inverse mapping, its NL blocks (pool before embedding, scaled softmax) -----

PYSLOWFAST_NL = {**NL5, "pool": "before_embed", "scale": True}


def pyslowfast_cfg(**sections) -> str:
    """What PySlowFast stores as ``cfg`` (``cfg.dump()``): the I3D_NLN_8x8_R50 settings, overridable."""
    cfg = {"MODEL": {"ARCH": "i3d"}, "RESNET": {"STRIDE_1X1": False, "DEPTH": 50},
           "NONLOCAL": {"LOCATION": [[[]], [[1, 3]], [[1, 3, 5]], [[]]], "GROUP": [[1]] * 4,
                        "INSTANTIATION": "softmax", "POOL": [[[1, 2, 2], [1, 2, 2]]] * 4},
           "DATA": {"MEAN": [0.45] * 3, "STD": [0.225] * 3}}
    for name, values in sections.items():
        cfg[name].update(values)
    return yaml.safe_dump(cfg)


def save_pyslowfast(model: nn.Module, path: Path, **cfg_sections) -> Path:
    torch.save({"epoch": 196, "model_state": in_format(model, pt.PYSLOWFAST_KEYS),
                "cfg": pyslowfast_cfg(**cfg_sections)}, path)
    return path


def test_pyslowfast_i3d_nln_round_trip_is_the_same_function(tmp_path):
    source = randomise(build("i3d", PYSLOWFAST_NL))
    path = save_pyslowfast(source, tmp_path / "I3D_NLN_8x8_R50.pyth")
    model = build("i3d", NL5, pretrained=str(path))  # configured as nlvideo's default NL blocks
    assert {(b.pool, b.scale) for _, b in model.nonlocal_blocks()} == {("before_embed", True)}
    assert_same_logits(model, source)
    as_configured = build("i3d", NL5)
    as_configured.load_state_dict(source.state_dict())
    with pytest.raises(AssertionError):  # the adapted options are what makes it the same function
        assert_same_logits(as_configured, source)


def test_pyslowfast_cfg_sets_stride_1x1_and_dot_product(tmp_path):
    nl = {**NL5, "pool": "before_embed", "instantiation": "dot_product"}
    source = randomise(build("c2d", nl, stride_1x1=True))
    path = save_pyslowfast(source, tmp_path / "C2D_NLN.pyth", MODEL={"ARCH": "c2d"},
                           RESNET={"STRIDE_1X1": True}, NONLOCAL={"INSTANTIATION": "dot_product"})
    model = build("c2d", NL5, pretrained=str(path))
    assert model.spec.stride_1x1 and model.spec.nonlocal_.instantiation == "dot_product"
    assert_same_logits(model, source)


def test_unsupported_pyslowfast_settings_are_named(tmp_path):
    source = build("i3d")
    for section, message in [({"MODEL": {"ARCH": "slow"}}, "MODEL.ARCH=slow is not a C2D/I3D"),
                             ({"NONLOCAL": {"GROUP": [[1], [2], [1], [1]]}}, "grouped non-local")]:
        with pytest.raises(ConfigError, match=message):
            build("i3d", pretrained=str(save_pyslowfast(source, tmp_path / "x.pyth", **section)))


# ---- video-nonlocal-net Caffe2 pickles -----------------------------------------------------------

CAFFE2_NL = {**NL5, "pool": "before_embed", "scale": True}


def save_caffe2(model: nn.Module, path: Path, affine: bool = False) -> Path:
    """As video-nonlocal-net's checkpoints.save_model_params writes them (Python 2 pickles, protocol 2),
    with the optimizer blobs it stores beside the weights; ``affine``: BN as scale and bias only."""
    blobs = {k: v.numpy() for k, v in in_format(model, pt.CAFFE2_KEYS).items()
             if not (affine and k.endswith(("_rm", "_riv")))}
    blobs = {**blobs, "lr": np.array(0.0001, np.float32), "model_iter": np.array(400000),
             "conv1_w_momentum": np.zeros_like(blobs["conv1_w"])}
    with path.open("wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    return path


@pytest.mark.parametrize("arch", ["c2d", "i3d"])
def test_caffe2_nonlocal_round_trip_is_the_same_function(arch, tmp_path):
    """video-nonlocal-net: pool1 without padding, NL blocks pooling their input, scaled softmax."""
    source = randomise(build(arch, CAFFE2_NL, stem_pool_padding=0))
    path = save_caffe2(source, tmp_path / f"{arch}_nonlocal_8x8_IN_pretrain_400k.pkl")
    model = build(arch, NL5, pretrained=str(path))
    assert model.spec.stem_pool_padding == 0 and model.stem.pool.padding == (0, 0, 0)
    assert_same_logits(model, source)


def test_caffe2_frozen_bn_model_loads_as_the_same_affine_map(tmp_path):
    """The 'affine' models store BN as scale and bias only (lib/models/model_builder_video.AffineNd)."""
    source = randomise(build("i3d", stem_pool_padding=0))
    for m in source.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.zero_()
            m.running_var.fill_(1.0 - m.eps)
    assert_same_logits(build("i3d", pretrained=str(save_caffe2(source, tmp_path / "a.pkl", True))), source)
    nl_path = save_caffe2(build("i3d", CAFFE2_NL), tmp_path / "affine_nl.pkl", affine=True)
    with pytest.raises(ConfigError, match="group res3's non-local blocks in time"):
        build("i3d", NL5, pretrained=str(nl_path))


def test_a_pickle_with_anything_but_arrays_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with path.open("wb") as f:
        pickle.dump({"blobs": {"conv1_w": Counter()}}, f, protocol=2)
    with pytest.raises(ConfigError, match="collections.Counter is not allowed"):
        build("c2d", pretrained=str(path))


# ---- key names written down by hand from the reference code, so the mapping is not only self-consistent

DOCUMENTED_KEYS = [  # (format's keys, its name, nlvideo's name)
    # PyTorchVideo models/resnet.py, hub/resnet.py (blocks.2 is the parameterless res2 -> res3 pool)
    (pt.PYTORCHVIDEO_KEYS, "blocks.0.conv.weight", "stem.conv.weight"),
    (pt.PYTORCHVIDEO_KEYS, "blocks.0.norm.running_var", "stem.bn.running_var"),
    (pt.PYTORCHVIDEO_KEYS, "blocks.1.res_blocks.2.branch2.conv_b.weight", "res2.2.conv2.weight"),
    (pt.PYTORCHVIDEO_KEYS, "blocks.3.res_blocks.0.branch1_norm.bias", "res3.0.downsample.1.bias"),
    (pt.PYTORCHVIDEO_KEYS, "blocks.5.res_blocks.1.branch2.norm_c.bias", "res5.1.bn3.bias"),
    (pt.PYTORCHVIDEO_KEYS, "blocks.6.proj.weight", "head.fc.weight"),
    # PySlowFast models/stem_helper.py, resnet_helper.py (ResStage), nonlocal_helper.py, head_helper.py
    (pt.PYSLOWFAST_KEYS, "s1.pathway0_stem.conv.weight", "stem.conv.weight"),
    (pt.PYSLOWFAST_KEYS, "s3.pathway0_nonlocal1.conv_theta.weight", "res3.nl1.theta.weight"),
    (pt.PYSLOWFAST_KEYS, "s4.pathway0_nonlocal5.conv_g.bias", "res4.nl5.g.0.bias"),
    (pt.PYSLOWFAST_KEYS, "s4.pathway0_nonlocal5.conv_out.weight", "res4.nl5.W.0.weight"),
    (pt.PYSLOWFAST_KEYS, "s4.pathway0_nonlocal5.bn.running_var", "res4.nl5.W.1.running_var"),
    (pt.PYSLOWFAST_KEYS, "s2.pathway0_res0.branch1_bn.weight", "res2.0.downsample.1.weight"),
    (pt.PYSLOWFAST_KEYS, "s3.pathway0_res1.branch2.a.weight", "res3.1.conv1.weight"),
    (pt.PYSLOWFAST_KEYS, "s5.pathway0_res2.branch2.c_bn.bias", "res5.2.bn3.bias"),
    (pt.PYSLOWFAST_KEYS, "head.projection.bias", "head.fc.bias"),
    # video-nonlocal-net lib/models/resnet_video.py, resnet_helper.py, nonlocal_helper.py
    (pt.CAFFE2_KEYS, "conv1_w", "stem.conv.weight"),
    (pt.CAFFE2_KEYS, "res_conv1_bn_riv", "stem.bn.running_var"),
    (pt.CAFFE2_KEYS, "res3_1_branch2a_w", "res3.1.conv1.weight"),
    (pt.CAFFE2_KEYS, "res3_1_branch2c_bn_s", "res3.1.bn3.weight"),
    (pt.CAFFE2_KEYS, "res4_0_branch1_w", "res4.0.downsample.0.weight"),
    (pt.CAFFE2_KEYS, "res4_0_branch1_bn_rm", "res4.0.downsample.1.running_mean"),
    (pt.CAFFE2_KEYS, "nonlocal_conv3_1_theta_w", "res3.nl1.theta.weight"),
    (pt.CAFFE2_KEYS, "nonlocal_conv3_1_phi_b", "res3.nl1.phi.0.bias"),
    (pt.CAFFE2_KEYS, "nonlocal_conv4_5_out_w", "res4.nl5.W.0.weight"),
    (pt.CAFFE2_KEYS, "nonlocal_conv4_5_bn_b", "res4.nl5.W.1.bias"),
    (pt.CAFFE2_KEYS, "pred_w", "head.fc.weight"),
]


@pytest.mark.parametrize(("keys", "theirs", "ours"), DOCUMENTED_KEYS)
def test_documented_key_names_map_both_ways(keys, theirs, ours):
    assert keys.to_ours(theirs) == ours and keys.to_theirs(ours) == theirs


def test_caffe2_names_reach_pyslowfasts_as_its_caffe2_loader_converts_them():
    """PySlowFast utils/c2_model_loading.py: nonlocal_conv3_1_theta_w -> s3.pathway0_nonlocal1.conv_theta."""
    for caffe2, pyslowfast in [("nonlocal_conv3_1_theta_w", "s3.pathway0_nonlocal1.conv_theta.weight"),
                               ("res4_4_branch2b_bn_b", "s4.pathway0_res4.branch2.b_bn.bias"),
                               ("res_conv1_bn_rm", "s1.pathway0_stem.bn.running_mean")]:
        assert pt.PYSLOWFAST_KEYS.to_theirs(pt.CAFFE2_KEYS.to_ours(caffe2)) == pyslowfast
    assert pt.PYTORCHVIDEO_KEYS.to_ours("blocks.2.weight") is None


# ---- nlvideo's own checkpoints, torchvision ------------------------------------------------------

def test_nlvideo_checkpoint_loads_with_the_options_it_was_trained_with(tmp_path):
    nl = {**NL5, "pool": "before_embed", "instantiation": "dot_product"}
    source = randomise(build("i3d", nl))
    path = tmp_path / "checkpoint_000001000.pt"
    config = {"model": {"nonlocal": nl, "stem_pool_padding": 1},
              "data": {"mean": [1.0, 2.0, 3.0], "std": 4.0}}
    torch.save({"model": source.state_dict(), "config": config, "iteration": 1000,
                "rng": {"numpy": np.random.get_state()}}, path)
    assert_same_logits(build("i3d", NL5, pretrained=str(path)), source)
    assert normalization(path) == pt.Normalization((1.0, 2.0, 3.0), (4.0,) * 3)


def test_torchvision_means_resnet101_for_depth_101(monkeypatch):
    from torchvision.models import resnet101

    asked = []

    def fake_download(depth: int) -> dict[str, torch.Tensor]:
        asked.append(depth)
        return resnet101(num_classes=5).state_dict()

    monkeypatch.setattr(pt, "torchvision_resnet_state_dict", fake_download)
    model = build_video_resnet(name="r101", arch="i3d", depth=101, num_classes=5, pretrained="torchvision")
    assert asked == [101] and model.res4.depth == 23


# ---- errors: one line, naming what was found -----------------------------------------------------

def test_checkpoint_of_another_depth_is_named(tmp_path):
    path = tmp_path / "R101.pyth"
    torch.save({"model_state": ptv_model("i3d", model_depth=101).state_dict()}, path)
    with pytest.raises(ConfigError, match=r"is a ResNet-101, the model a ResNet-50: set model.depth"):
        build("i3d", pretrained=str(path))


def test_missing_surplus_and_misshapen_tensors_are_named(tmp_path):
    state = ptv_model("i3d").state_dict()
    path = tmp_path / "x.pyth"
    cases = [
        ({k: v for k, v in state.items() if "norm_b" not in k or "res_blocks.0" not in k}, "i3d",
         r"lacks 16 of the model's tensors, e.g. \['res2.0.bn2.weight'"),
        ({**state, "blocks.6.extra.weight": torch.zeros(1)}, "i3d", r"not part of a C2D/I3D ResNet"),
        (state, "c2d", r"blocks.0.conv.weight has shape \(8, 3, 5, 7, 7\), model stem.conv.weight needs "
                       r"\(8, 3, 1, 7, 7\); temporal kernels differ"),
    ]
    for weights, arch, message in cases:
        torch.save({"model_state": weights}, path)
        with pytest.raises(ConfigError, match=message):
            build(arch, pretrained=str(path))


def test_nl_blocks_the_model_lacks_are_named_with_the_positions_to_set(tmp_path):
    path = save_pyslowfast(build("i3d", PYSLOWFAST_NL), tmp_path / "nl.pyth")
    with pytest.raises(ConfigError, match=r"model.nonlocal.positions=\[res3.1,res3.3,res4.1,res4.3,res4.5\]"):
        build("i3d", pretrained=str(path))


def test_unknown_format_and_missing_file_are_named(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weights": {"encoder.0.weight": torch.zeros(1)}}, path)
    with pytest.raises(ConfigError, match=r"unknown checkpoint format \(a dict with keys \['weights'\]\); "
                                          r"nlvideo reads PyTorchVideo hub"):
        build("c2d", pretrained=str(path))
    with pytest.raises(ConfigError, match="model.pretrained='/no/such.pkl': no such file"):
        build("c2d", pretrained="/no/such.pkl")


def test_other_class_count_reinitialises_the_head_and_says_so(tmp_path, caplog):
    path = tmp_path / "k400.pyth"
    torch.save({"model_state": ptv_model("c2d").state_dict()}, path)
    with caplog.at_level(logging.INFO, logger="nlvideo.models.pretrained"):
        model = build_video_resnet(name="c", arch="c2d", num_classes=157, width=8, pretrained=str(path))
    assert model.head.fc.weight.shape == (157, 256)
    assert "5 classes in the checkpoint, model.num_classes=157): re-initialised" in caplog.text


# ---- the run config: normalisation and model options ------------------------------------------

def normalization(path: Path) -> pt.Normalization:
    return pt.read_checkpoint(str(path)).trained.normalization


def test_each_format_reports_the_normalisation_it_was_trained_with(tmp_path):
    ptv, pysf, c2 = tmp_path / "a.pyth", tmp_path / "b.pyth", tmp_path / "c.pkl"
    source = build("c2d")
    torch.save({"model_state": ptv_model("c2d").state_dict()}, ptv)
    save_pyslowfast(source, pysf, MODEL={"ARCH": "c2d"}, DATA={"MEAN": [0.5, 0.4, 0.3]})
    save_caffe2(source, c2)
    assert normalization(ptv) == normalization(c2) == pt.KINETICS
    assert normalization(pysf) == pt.Normalization((127.5, 102.0, 76.5), (57.375,) * 3)
    assert pt.KINETICS.mean == (114.75,) * 3 and pt.KINETICS.std == (57.375,) * 3


def compose_run(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(("overrides", "mean", "std"), [
    ([], [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),
    (["data.std=60"], 114.75, 60),  # the command line wins; the yaml's mean stays too
])
def test_data_normalisation_follows_the_weights_unless_given_on_the_command_line(overrides, mean, std):
    cfg = compose_run("model.pretrained=torchvision", *overrides)
    assert pt.apply_pretrained_to_config(cfg, overrides).normalization == pt.IMAGENET
    assert (cfg.data.mean, cfg.data.std) == (mean, std)


def test_the_run_config_records_the_model_options_the_weights_need(tmp_path):
    """So the config a training checkpoint stores rebuilds the trained model without the pretrained file."""
    path = save_caffe2(randomise(build("i3d", CAFFE2_NL, stem_pool_padding=0)), tmp_path / "nl.pkl")
    cfg = compose_run("model=i3d_nl5", "model.width=8", f"model.pretrained={path}")
    pt.apply_pretrained_to_config(cfg, [])
    nl = cfg.model["nonlocal"]
    assert (cfg.model.stem_pool_padding, nl.pool, nl.scale) == (0, "before_embed", True)
    model = build_video_resnet(**cfg.model).eval()
    rebuilt = build_video_resnet(**{**cfg.model, "pretrained": None}).eval()
    rebuilt.load_state_dict(model.state_dict())
    assert_same_logits(rebuilt, model)
