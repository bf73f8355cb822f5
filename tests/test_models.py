"""C2D/I3D ResNets: configs, NL placement, parameter counts against independent references, inflation."""

import copy
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

import nlvideo  # noqa: F401  (torchvision compat before torchvision/pytorchvideo imports)
from nlvideo.models import (
    ConfigError,
    NonLocalBlock,
    build_video_resnet,
    inflate_state_dict,
    to_channels_last_3d,
)
from nlvideo.models.spec import default_inflate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODEL_CONFIGS = ["c2d", "c2d_nl1", "c2d_nl5", "c2d_nl10", "i3d", "i3d_nl1", "i3d_nl5", "i3d_nl10"]
PAPER_POSITIONS = {  # paper.md: 0-based block index in the stage, NL block after it
    0: {},
    1: {"res4": [4]},
    5: {"res3": [1, 3], "res4": [1, 3, 5]},
    10: {"res3": [0, 1, 2, 3], "res4": [0, 1, 2, 3, 4, 5]},
}


def compose_model(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="config", overrides=[f"model={name}", *overrides])


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nl_positions(model) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for name, _ in model.nonlocal_blocks():
        stage, nl = name.split(".")
        found.setdefault(stage, []).append(int(nl[2:]))
    return found


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_shipped_config_composes_places_blocks_and_trains_a_step(name):
    cfg = compose_model(name, "model.width=4", "model.num_classes=5")
    model = instantiate(cfg.model)
    count = int(name.split("nl")[1]) if "nl" in name else 0
    assert model.num_nonlocal == count
    assert nl_positions(model) == PAPER_POSITIONS[count]
    assert all(b.instantiation == "embedded_gaussian" for _, b in model.nonlocal_blocks())
    x = torch.randn(2, 3, 8, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 5)
    nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_instantiation_and_placement_are_config_keys():
    cfg = compose_model(
        "c2d",
        "model.width=4",
        "model.num_classes=3",
        "model.nonlocal.instantiation=dot_product",
        "model.nonlocal.positions=[res2.1,res5.0,res5.2]",
    )
    model = instantiate(cfg.model)
    assert nl_positions(model) == {"res2": [1], "res5": [0, 2]}
    assert {b.instantiation for _, b in model.nonlocal_blocks()} == {"dot_product"}
    assert model(torch.randn(1, 3, 8, 64, 64)).shape == (1, 3)  # res5 at 2x2: sub-sampling still fits


@pytest.mark.parametrize("variant", ["8x8", "32x2"])
def test_temporal_pooling_matches_reference_code(variant):
    frames = {"8x8": 8, "32x2": 32}[variant]
    model = build_video_resnet(name="t", arch="i3d", num_classes=2, width=4, input_variant=variant)
    seen = {}
    for stage in ("res2", "res3", "res4", "res5"):
        getattr(model, stage).register_forward_hook(lambda m, i, o, s=stage: seen.__setitem__(s, o.shape[2:]))
    model(torch.randn(1, 3, frames, 64, 64))
    t_res2 = {"8x8": 8, "32x2": 8}[variant]
    assert seen == {"res2": (t_res2, 16, 16), "res3": (4, 8, 8), "res4": (4, 4, 4), "res5": (4, 2, 2)}


def test_parameter_counts_equal_independent_references():
    """C2D-R50 == torchvision ResNet-50 (400-way) == PyTorchVideo hub.c2d_r50; I3D == hub.i3d_r50."""
    from pytorchvideo.models.hub import c2d_r50, i3d_r50
    from torchvision.models import resnet50

    c2d = build_video_resnet(name="c2d", arch="c2d", num_classes=400)
    i3d = build_video_resnet(name="i3d", arch="i3d", num_classes=400)
    assert n_params(c2d) == n_params(resnet50(num_classes=400)) == n_params(c2d_r50()) == 24_327_632
    assert n_params(i3d) == n_params(i3d_r50()) == 28_043_472
    # One embedded-gaussian block adds 526,592 at res3 (C=512) and 2,101,760 at res4 (C=1024).
    assert n_params(NonLocalBlock(512)) == 526_592
    assert n_params(NonLocalBlock(1024)) == 2_101_760
    five = {"res3": [1, 3], "res4": [1, 3, 5]}
    assert (
        n_params(
            build_video_resnet(name="n", arch="c2d", num_classes=400, **{"nonlocal": {"positions": five}})
        )
        == 31_686_096
    )
    assert (
        n_params(
            build_video_resnet(name="n", arch="i3d", num_classes=400, **{"nonlocal": {"positions": five}})
        )
        == 35_401_936
    )


def test_resnet101_depths_and_inflation_pattern():
    model = build_video_resnet(name="r101", arch="i3d", depth=101, num_classes=400, width=4)
    assert model.res4.depth == 23
    assert default_inflate("i3d", (3, 4, 23, 3))[2] == tuple(int(i % 2 == 0) for i in range(23))
    assert default_inflate("i3d", (3, 4, 6, 3)) == ((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))
    assert model.res4.__getattr__("0").conv1.kernel_size == (3, 1, 1)
    assert model.res4.__getattr__("1").conv1.kernel_size == (1, 1, 1)


def test_i3d_3x3x3_variant_inflates_the_middle_conv():
    model = build_video_resnet(name="x", arch="i3d", num_classes=2, width=4, inflate_kernel="3x3x3")
    block = model.res2.__getattr__("0")
    assert block.conv1.kernel_size == (1, 1, 1) and block.conv2.kernel_size == (3, 3, 3)


def test_attention_maps_are_returned_per_block():
    model = build_video_resnet(
        name="x",
        arch="c2d",
        num_classes=2,
        width=4,
        **{"nonlocal": {"positions": {"res3": [1], "res4": [4]}}},
    ).eval()
    for _, block in model.nonlocal_blocks():  # non-identity blocks, so the maps shape the output
        nn.init.normal_(block.W[1].weight)
    x = torch.randn(1, 3, 8, 64, 64)
    logits, maps = model(x, return_attention=True)
    assert set(maps) == {"res3.nl1", "res4.nl4"}
    assert maps["res3.nl1"].shape == (1, 4 * 8 * 8, 4 * 4 * 4)  # sub-sampled phi: 1x2x2 fewer keys
    torch.testing.assert_close(maps["res4.nl4"].sum(-1), torch.ones(1, 4 * 4 * 4))
    torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-6)  # same as the efficient path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"arch": "c3d"}, r"model.arch='c3d' is not allowed; choose one of: c2d, i3d"),
        ({"depth": 34}, r"model.depth=34 is not allowed"),
        ({"nonlocal": {"positions": {"res4": [6]}}}, r"model.nonlocal.positions.res4=\[6\].*0..5"),
        ({"nonlocal": {"positions": {"res6": [0]}}}, r"res6.*not allowed"),
        ({"nonlocal": {"instantiation": "cosine"}}, r"model.nonlocal.instantiation='cosine'"),
        ({"input_variant": "16x4"}, r"model.input_variant='16x4'"),
        ({"colour": 1}, r"unknown model key\(s\) \['colour'\]"),
        ({"nonlocal": {"positions": ["res4"]}}, r"entry 'res4': expected '<stage>.<block index>'"),
        ({"nonlocal": {"positions": ["res4.6"]}}, r"model.nonlocal.positions.res4=\[6\]"),
        ({"inflate": [[1], [1], [1], [1]]}, r"model.inflate has \[1, 1, 1, 1\] entries"),
        ({"nonlocal": {"pool": "first"}}, r"model.nonlocal.pool='first' is not allowed; choose one of: "
                                          r"after_embed, before_embed"),
        ({"stem_pool_padding": 2}, r"model.stem_pool_padding=2 is not allowed; choose one of: 0, 1"),
    ],
)
def test_bad_model_config_is_a_one_line_error_naming_the_key(override, message):
    base = {"name": "x", "arch": "i3d", "num_classes": 2, "width": 4}
    with pytest.raises(ConfigError, match=message):
        build_video_resnet(**{**base, **override})


def test_num_frames_must_fit_the_temporal_strides():
    spec = build_video_resnet(name="x", arch="c2d", num_classes=2, width=4, input_variant="32x2").spec
    spec.check_num_frames(32)
    with pytest.raises(ConfigError, match=r"data.num_frames=12 .* multiple of its temporal stride 8"):
        spec.check_num_frames(12)


def _random_2d_resnet50() -> nn.Module:
    from torchvision.models import resnet50

    torch.manual_seed(0)
    net = resnet50(num_classes=1000)
    for m in net.modules():  # non-trivial BN statistics so the check is not vacuous
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(std=0.1)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    return net.eval().double()  # float64: the equality below is exact, not within fp32 noise


def test_inflated_c2d_reproduces_2d_resnet_features_on_a_static_clip(tmp_path):
    net2d = _random_2d_resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save(net2d.state_dict(), path)
    c2d = (
        build_video_resnet(
            name="c",
            arch="c2d",
            num_classes=400,
            pretrained=str(path),
            **{"nonlocal": {"positions": {"res4": [4]}}},
        )
        .eval()
        .double()
    )
    frame = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        feats2d = nn.Sequential(*list(net2d.children())[:-2])(frame)  # (1, 2048, 2, 2)
        feats3d = c2d.forward_features(frame[:, :, None].expand(1, 3, 8, 64, 64))  # (1, 2048, 4, 2, 2)
    for t in range(feats3d.shape[2]):
        torch.testing.assert_close(feats3d[:, :, t], feats2d, rtol=1e-9, atol=1e-9)


def test_inflated_i3d_reproduces_2d_features_away_from_temporal_borders():
    """Zero temporal padding only touches border frames; the clip's middle equals the 2-D network."""
    net2d = _random_2d_resnet50()
    i3d = build_video_resnet(name="i", arch="i3d", num_classes=1000).eval().double()
    inflate_state_dict(i3d, net2d.state_dict())
    torch.testing.assert_close(i3d.head.fc.weight, net2d.fc.weight)  # same class count: fc loaded too
    frame = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        feats2d = nn.Sequential(*list(net2d.children())[:-2])(frame)
        feats3d = i3d.forward_features(frame[:, :, None].expand(1, 3, 64, 32, 32))  # T: 64 -> 32 at res5
    t = feats3d.shape[2]
    assert t == 32
    torch.testing.assert_close(feats3d[:, :, t // 2], feats2d, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(feats3d[:, :, 0], feats2d, rtol=1e-3, atol=1e-3)  # the border does differ


def test_inflating_mismatched_weights_names_the_key():
    net2d = _random_2d_resnet50()
    small = build_video_resnet(name="s", arch="c2d", num_classes=400, width=32)
    with pytest.raises(ConfigError, match=r"conv1.weight has shape \(64, 3, 7, 7\), model stem.conv.weight "
                                          r"needs \(32, 3, 1, 7, 7\); channel counts differ"):
        inflate_state_dict(small, net2d.state_dict())


def test_missing_pretrained_file_is_named():
    with pytest.raises(ConfigError, match="model.pretrained='/no/such.pth': no such file"):
        build_video_resnet(name="s", arch="c2d", num_classes=4, width=4, pretrained="/no/such.pth")


def test_channels_last_model_matches_contiguous_model_in_training():
    """The trainer's default layout (channels-last-3d) runs the NL blocks on position-major storage:
    same logits, input gradient and NL parameter gradients as the contiguous model, BN in training."""
    torch.manual_seed(0)
    nl = {"positions": {"res3": [1], "res4": [1]}}
    model = build_video_resnet(name="x", arch="i3d", num_classes=3, width=4, dropout=0.0, **{"nonlocal": nl})
    model.train()
    for _, block in model.nonlocal_blocks():
        nn.init.normal_(block.W[1].weight)
    twin = to_channels_last_3d(copy.deepcopy(model))
    x = torch.randn(2, 3, 8, 64, 64)
    x_cl = x.clone().contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    x.requires_grad_()
    out, out_cl = model(x), twin(x_cl)
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    out_cl.square().sum().backward()
    torch.testing.assert_close(x_cl.grad, x.grad, rtol=1e-3, atol=1e-5)
    for (name, p), p_cl in zip(model.named_parameters(), twin.parameters(), strict=True):
        if ".nl" in name:
            torch.testing.assert_close(p_cl.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
