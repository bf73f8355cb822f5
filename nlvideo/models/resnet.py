"""C2D and I3D ResNet video backbones with non-local blocks (Wang et al., CVPR 2018, Table 1).

Layout, as the reference code (video-nonlocal-net; PySlowFast, PyTorchVideo agree) builds it::

    stem   conv1 (1x7x7 C2D | 5x7x7 I3D) -> BN -> ReLU -> pool1 (max)
    res2   3 bottlenecks                       (width w,  out 4w)
    pool2  2x1x1 max, temporal stride 2
    res3   4 bottlenecks, spatial stride 2     (2w, 8w)   <- NL blocks of the 5/10-block models
    res4   6 (R50) / 23 (R101) bottlenecks     (4w, 16w)  <- NL blocks
    res5   3 bottlenecks                       (8w, 32w)
    head   global average pool -> dropout -> fc

Non-local blocks are inserted *after* the residual blocks a :class:`NonLocalSpec` names, inside
:class:`ResStage` (look at its ``forward``). Module names of the residual blocks
(``res3.0.conv1``) do not shift when NL blocks are added (``res3.nl1``), so 2-D ImageNet weights
map onto every variant the same way (see :mod:`nlvideo.models.inflate`). The NL block after residual
block ``i`` of a stage is its child ``nl{i}`` (:func:`nonlocal_name`); :func:`is_nonlocal_name` is the
one test of that convention for module, parameter and state-dict names (weight init, inflation).

pool1's spatial padding is 1 (PySlowFast, PyTorchVideo, torchvision: 112 -> 56 for a 224 input) or
0 with ``stem_pool_padding=0`` (video-nonlocal-net's Caffe2 pool1: 112 -> 55; res3 is 28x28 either way).

Temporal pooling per input variant (``input_variant``):

- ``8x8``  (8 frames, stride 8): conv1 temporal stride 1, pool1 1x3x3 stride (1,2,2), pool2 ->
  T = 8 -> 8 -> 4 at res3-res5.
- ``32x2`` (32 frames, stride 2, the paper's): conv1 temporal stride 2, pool1 2x3x3 stride
  (2,2,2), pool2 -> T = 32 -> 16 -> 8 -> 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nlvideo.models.nonlocal_block import NonLocalBlock
from nlvideo.models.pooling import MaxPool3d
from nlvideo.models.spec import STAGE_NAMES, ModelSpec, NonLocalSpec

NONLOCAL_PREFIX = "nl"  # ResStage child "nl{i}": the NL block after residual block i


def nonlocal_name(after: int) -> str:
    """Child name, in its :class:`ResStage`, of the NL block after residual block ``after`` (``nl1``)."""
    return f"{NONLOCAL_PREFIX}{after}"


def is_nonlocal_name(name: str) -> bool:
    """Whether a dotted module/parameter/state-dict name lies in an NL block (``res3.nl1.theta.weight``).

    Residual blocks are named by their index alone (``res3.1.conv1``), so a name part ``nl<digits>``
    is an NL block and nothing else.
    """
    n = len(NONLOCAL_PREFIX)
    return any(p.startswith(NONLOCAL_PREFIX) and p[n:].isdigit() for p in name.split("."))


_STEM_TEMPORAL = {  # input_variant -> (conv1 temporal stride, pool1 temporal kernel/stride)
    "8x8": (1, 1),
    "32x2": (2, 2),
}


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck; spatial stride on the 3x3 (torchvision's ResNet v1.5, and
    video-nonlocal-net, PySlowFast and PyTorchVideo), or on the first 1x1 with ``stride_1x1`` (the
    original ResNet, PySlowFast's ``RESNET.STRIDE_1X1``).

    ``inflate`` gives the first 1x1 a 3x1x1 kernel (I3D_3x1x1) or the 3x3 a 3x3x3 kernel
    (I3D_3x3x3), according to ``inflate_kernel``.
    """

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        width: int,
        stride: int,
        inflate: bool,
        inflate_kernel: str,
        stride_1x1: bool = False,
    ) -> None:
        super().__init__()
        t_a = 3 if inflate and inflate_kernel == "3x1x1" else 1
        t_b = 3 if inflate and inflate_kernel == "3x3x3" else 1
        s_a, s_b = (stride, 1) if stride_1x1 else (1, stride)
        out_ch = width * self.expansion
        self.conv1 = nn.Conv3d(
            in_ch, width, (t_a, 1, 1), stride=(1, s_a, s_a), padding=(t_a // 2, 0, 0), bias=False
        )
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(
            width, width, (t_b, 3, 3), stride=(1, s_b, s_b), padding=(t_b // 2, 1, 1), bias=False
        )
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_ch, out_ch, 1, stride=(1, stride, stride), bias=False), nn.BatchNorm3d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResStage(nn.Module):
    """One residual stage: bottlenecks ``"0".."n-1"`` and NL blocks :func:`nonlocal_name` (``"nl{i}"``)
    after block i."""

    def __init__(
        self,
        in_ch: int,
        width: int,
        depth: int,
        stride: int,
        inflate: Sequence[int],
        inflate_kernel: str,
        nonlocal_after: Sequence[int],
        nonlocal_spec: NonLocalSpec,
        stride_1x1: bool = False,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.nonlocal_after = tuple(sorted(nonlocal_after))
        for i in range(depth):
            block = Bottleneck(
                in_ch if i == 0 else width * 4,
                width,
                stride if i == 0 else 1,
                bool(inflate[i]),
                inflate_kernel,
                stride_1x1,
            )
            self.add_module(str(i), block)
        for i in self.nonlocal_after:
            self.add_module(nonlocal_name(i), NonLocalBlock(**nonlocal_spec.block_kwargs(width * 4)))

    def forward(
        self, x: torch.Tensor, attention: dict[str, torch.Tensor] | None = None, prefix: str = ""
    ) -> torch.Tensor:
        for i in range(self.depth):
            x = getattr(self, str(i))(x)
            if i in self.nonlocal_after:
                # Here a non-local block follows residual block i: every position of the clip sees
                # every other one (all frames, all locations) before the next residual block.
                nl = getattr(self, nonlocal_name(i))
                if attention is None:
                    x = nl(x)
                else:
                    x, attention[prefix + nonlocal_name(i)] = nl(x, return_nl_map=True)
        return x


class VideoResNet(nn.Module):
    """A C2D or I3D ResNet built from a :class:`~nlvideo.models.spec.ModelSpec`.

    ``forward(x)`` takes ``(B, 3, T, H, W)`` clips and returns ``(B, num_classes)`` logits;
    ``forward(x, return_attention=True)`` also returns ``{"res4.nl4": (B, N, M) map, ...}``.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        w = spec.width
        t_stride, t_pool = _STEM_TEMPORAL[spec.input_variant]
        t_conv1 = 5 if spec.arch == "i3d" else 1
        self.stem = nn.Sequential()
        self.stem.add_module(
            "conv",
            nn.Conv3d(
                3, w, (t_conv1, 7, 7), stride=(t_stride, 2, 2), padding=(t_conv1 // 2, 3, 3), bias=False
            ),
        )
        self.stem.add_module("bn", nn.BatchNorm3d(w))
        self.stem.add_module("relu", nn.ReLU(inplace=True))
        pad = spec.stem_pool_padding
        pool1 = MaxPool3d((t_pool, 3, 3), stride=(t_pool, 2, 2), padding=(0, pad, pad))
        self.stem.add_module("pool", pool1)

        in_ch = w
        for s, name in enumerate(STAGE_NAMES):
            width = w * 2**s
            stage = ResStage(
                in_ch,
                width,
                spec.stage_depths[s],
                stride=1 if s == 0 else 2,
                inflate=spec.inflate[s],
                inflate_kernel=spec.inflate_kernel,
                nonlocal_after=spec.nonlocal_.positions.get(name, ()),
                nonlocal_spec=spec.nonlocal_,
                stride_1x1=spec.stride_1x1,
            )
            self.add_module(name, stage)
            if name == "res2":
                self.pool2 = MaxPool3d((2, 1, 1), stride=(2, 1, 1))
            in_ch = width * 4
        self.head = nn.Sequential()
        self.head.add_module("pool", nn.AdaptiveAvgPool3d(1))
        self.head.add_module("flatten", nn.Flatten(1))
        self.head.add_module("dropout", nn.Dropout(spec.dropout))
        self.head.add_module("fc", nn.Linear(in_ch, spec.num_classes))
        self.num_features = in_ch
        self._init_weights()

    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, NonLocalBlock):
                continue  # initialised by the block itself (its zero BN makes it the identity)
            if isinstance(m, nn.Conv3d) and not is_nonlocal_name(name):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d) and not is_nonlocal_name(name):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.spec.zero_init_residual:  # last BN of each bottleneck starts at 0 (PySlowFast's default)
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
        nn.init.normal_(self.head.fc.weight, std=0.01)
        nn.init.zeros_(self.head.fc.bias)

    @property
    def num_nonlocal(self) -> int:
        return sum(isinstance(m, NonLocalBlock) for m in self.modules())

    def nonlocal_blocks(self) -> list[tuple[str, NonLocalBlock]]:
        return [(n, m) for n, m in self.named_modules() if isinstance(m, NonLocalBlock)]

    def forward_features(
        self, x: torch.Tensor, attention: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Backbone output before the head, (B, 32w, T', H', W')."""
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"VideoResNet expects (B, 3, T, H, W) clips, got shape {tuple(x.shape)}")
        x = self.stem(x)
        for name in STAGE_NAMES:
            x = getattr(self, name)(x, attention, prefix=f"{name}.")
            if name == "res2":
                x = self.pool2(x)
        return x

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        attention: dict[str, torch.Tensor] | None = {} if return_attention else None
        logits = self.head(self.forward_features(x, attention))
        return (logits, attention) if return_attention else logits
