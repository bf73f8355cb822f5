"""The small spec a video ResNet is built from, validated with errors that name the config key.

A model config (``configs/model/*.yaml``) is exactly these fields; ``build_video_resnet`` turns it
into a :class:`ModelSpec` and checks every value before a single layer is built, so a typo in an
override fails in one line naming ``model.<key>`` and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from nlvideo.models.nonlocal_block import IMPLS, INSTANTIATIONS, POOLS

STAGE_NAMES: tuple[str, ...] = ("res2", "res3", "res4", "res5")
STAGE_DEPTHS: dict[int, tuple[int, ...]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
ARCHS: tuple[str, ...] = ("c2d", "i3d")
INPUT_VARIANTS: dict[str, int] = {"8x8": 2, "32x2": 8}  # variant -> total temporal stride
INFLATE_KERNELS: tuple[str, ...] = ("3x1x1", "3x3x3")


class ConfigError(ValueError):
    """A model/data/trainer config value is invalid; the message names the key."""


def default_inflate(arch: str, depths: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Which blocks get a temporal kernel: none for C2D; for I3D the reference pattern.

    res2 all blocks, res3/res4 every other block starting with the first, res5 the middle one
    ([1,1,1], [1,0,1,0], [1,0,1,0,1,0], [0,1,0] for R50; R101's res4 alternates the same way).
    """
    if arch == "c2d":
        return tuple((0,) * d for d in depths)
    res5 = tuple(int(i % 2 == 1) for i in range(depths[3]))
    return ((1,) * depths[0], *(tuple(int(i % 2 == 0) for i in range(d)) for d in depths[1:3]), res5)


@dataclass(frozen=True)
class NonLocalSpec:
    """Where NL blocks go and how they compute (``model.nonlocal.*``)."""

    positions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    instantiation: str = "embedded_gaussian"
    sub_sample: bool = True
    bn_layer: bool = True
    scale: bool = False
    impl: str = "auto"
    inter_ratio: float = 0.5
    pool: str = "after_embed"

    def block_kwargs(self, channels: int) -> dict[str, Any]:
        """Keyword arguments of the :class:`NonLocalBlock` placed on a ``channels``-wide stage."""
        return {
            "in_channels": channels,
            "inter_channels": max(1, round(channels * self.inter_ratio)),
            "dimension": 3,
            "sub_sample": self.sub_sample,
            "bn_layer": self.bn_layer,
            "instantiation": self.instantiation,
            "scale": self.scale,
            "impl": self.impl,
            "pool": self.pool,
        }

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.positions.values())


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str
    num_classes: int
    depth: int = 50
    width: int = 64
    input_variant: str = "8x8"
    stage_depths: tuple[int, ...] = ()
    inflate: tuple[tuple[int, ...], ...] = ()
    inflate_kernel: str = "3x1x1"
    dropout: float = 0.5
    zero_init_residual: bool = True
    stride_1x1: bool = False  # spatial stride on the bottleneck's first 1x1 conv instead of its 3x3
    stem_pool_padding: int = 1  # pool1's spatial padding; 0 in video-nonlocal-net's Caffe2 models
    pretrained: str | None = None
    nonlocal_: NonLocalSpec = field(default_factory=NonLocalSpec)

    @property
    def temporal_stride(self) -> int:
        return INPUT_VARIANTS[self.input_variant]

    def check_num_frames(self, num_frames: int) -> None:
        """Clips must survive the temporal pooling: T divisible by the total temporal stride."""
        stride = self.temporal_stride
        if num_frames < stride or num_frames % stride:
            raise ConfigError(
                f"data.num_frames={num_frames} does not fit model.input_variant={self.input_variant}: "
                f"it must be a positive multiple of its temporal stride {stride}"
            )


def _choice(key: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise ConfigError(
            f"model.{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}"
        )
    return value


def _as_stage_dict(raw: Mapping | Sequence | None) -> dict[str, list]:
    """Positions as the configs write them, ``[res3.1, res4.4]`` (a list, which a command-line override
    replaces whole), or as ``{res3: [1], res4: [4]}``; returns the dict form."""
    if raw is None or isinstance(raw, Mapping):
        return dict(raw or {})
    stages: dict[str, list] = {}
    for entry in raw:
        stage, _, index = str(entry).partition(".")
        if not index.isdigit():
            raise ConfigError(
                f"model.nonlocal.positions entry {entry!r}: expected '<stage>.<block index>', e.g. res4.4"
            )
        stages.setdefault(stage, []).append(int(index))
    return stages


def _positions(raw: Mapping | Sequence | None, depths: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    positions: dict[str, tuple[int, ...]] = {}
    for stage, idxs in _as_stage_dict(raw).items():
        _choice("nonlocal.positions key", stage, STAGE_NAMES)
        depth = depths[STAGE_NAMES.index(stage)]
        idxs = tuple(int(i) for i in (idxs or ()))
        bad = [i for i in idxs if not 0 <= i < depth]
        if bad or len(set(idxs)) != len(idxs):
            raise ConfigError(
                f"model.nonlocal.positions.{stage}={list(idxs)}: block indices must be distinct and in "
                f"0..{depth - 1} ({stage} has {depth} blocks)"
            )
        positions[stage] = tuple(sorted(idxs))
    return positions


def make_spec(**cfg: Any) -> ModelSpec:
    """Validate a model config (the yaml's keys, ``nonlocal`` included) into a :class:`ModelSpec`."""
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    nl_raw = dict(cfg.pop("nonlocal", None) or {})
    allowed = {f.name for f in fields(ModelSpec)} - {"nonlocal_"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(f"unknown model key(s) {unknown}; allowed: {sorted(allowed | {'nonlocal'})}")
    nl_allowed = {f.name for f in fields(NonLocalSpec)}
    nl_unknown = sorted(set(nl_raw) - nl_allowed)
    if nl_unknown:
        raise ConfigError(f"unknown model.nonlocal key(s) {nl_unknown}; allowed: {sorted(nl_allowed)}")
    for key in ("name", "arch", "num_classes"):
        if key not in cfg:
            raise ConfigError(f"model.{key} is required")

    arch = _choice("arch", cfg["arch"], ARCHS)
    depth = int(cfg.get("depth", 50))
    if not cfg.get("stage_depths"):
        _choice("depth", depth, tuple(STAGE_DEPTHS))
    depths = tuple(int(d) for d in (cfg.get("stage_depths") or STAGE_DEPTHS[depth]))
    if len(depths) != 4 or min(depths) < 1:
        raise ConfigError(f"model.stage_depths={list(depths)} must be 4 positive block counts (res2..res5)")
    inflate = cfg.get("inflate") or default_inflate(arch, depths)
    inflate = tuple(tuple(int(bool(v)) for v in stage) for stage in inflate)
    if [len(s) for s in inflate] != list(depths):
        raise ConfigError(
            f"model.inflate has {[len(s) for s in inflate]} entries per stage; expected {list(depths)} "
            "(one 0/1 per residual block of res2..res5)"
        )
    if arch == "c2d" and any(map(any, inflate)):
        raise ConfigError("model.inflate must be all zeros for arch=c2d (C2D has no temporal kernels)")
    num_classes, width = int(cfg["num_classes"]), int(cfg.get("width", 64))
    if num_classes < 1 or width < 1:
        raise ConfigError(f"model.num_classes={num_classes} and model.width={width} must be positive")
    dropout = float(cfg.get("dropout", 0.5))
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.dropout={dropout} must be in [0, 1)")

    _check_inter_ratio(nl_raw.get("inter_ratio", 0.5))
    nl = NonLocalSpec(
        positions=_positions(nl_raw.pop("positions", None), depths),
        instantiation=_choice(
            "nonlocal.instantiation", nl_raw.pop("instantiation", "embedded_gaussian"), INSTANTIATIONS
        ),
        impl=_choice("nonlocal.impl", nl_raw.pop("impl", "auto"), IMPLS),
        pool=_choice("nonlocal.pool", nl_raw.pop("pool", "after_embed"), POOLS),
        **{k: v for k, v in nl_raw.items()},
    )
    if nl.scale and nl.instantiation != "embedded_gaussian":
        raise ConfigError("model.nonlocal.scale=true only applies to instantiation=embedded_gaussian")
    return ModelSpec(
        name=str(cfg["name"]),
        arch=arch,
        num_classes=num_classes,
        depth=depth,
        width=width,
        input_variant=_choice("input_variant", cfg.get("input_variant", "8x8"), tuple(INPUT_VARIANTS)),
        stage_depths=depths,
        inflate=inflate,
        inflate_kernel=_choice("inflate_kernel", cfg.get("inflate_kernel", "3x1x1"), INFLATE_KERNELS),
        dropout=dropout,
        zero_init_residual=bool(cfg.get("zero_init_residual", True)),
        stride_1x1=bool(cfg.get("stride_1x1", False)),
        stem_pool_padding=_choice("stem_pool_padding", int(cfg.get("stem_pool_padding", 1)), (0, 1)),
        pretrained=cfg.get("pretrained"),
        nonlocal_=nl,
    )


def _check_inter_ratio(ratio: object) -> None:
    """``model.nonlocal.inter_ratio`` must be a positive number: 0 or a negative one gave every block a
    silent 1-channel embedding (the channel count is clamped to at least 1)."""
    number = isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
    if not (number and math.isfinite(ratio) and ratio > 0):
        raise ConfigError(f"model.nonlocal.inter_ratio={ratio!r} must be a number > 0 (the embedding has "
                          "channels x inter_ratio channels; the paper's is 0.5)")
