"""Published checkpoints into nlvideo's C2D/I3D: ``model.pretrained=PATH``, the format read from the file.

Formats (:data:`FORMATS`), each recognised by the key of its stem conv:

- PyTorchVideo hub (``C2D_8x8_R50.pyth``, ``I3D_8x8_R50.pyth``): ``{"model_state": ...}``,
  ``blocks.0.conv.weight``;
- PySlowFast (``.pyth``): ``{"model_state", "cfg", ...}``, ``s1.pathway0_stem.conv.weight``;
- video-nonlocal-net (Caffe2 ``.pkl``): ``{"blobs": {name: numpy array}}``, ``conv1_w``;
- torchvision ResNet-50/101 state dicts (2-D; kernels inflated), ``conv1.weight``, or ``torchvision``;
- nlvideo training checkpoints: ``{"model", "config", ...}``, ``stem.conv.weight``.

Each format is a :class:`KeyMap` (one table of key templates, read both ways) plus what its weights
were trained with (:class:`Trained`): the input normalisation and the model options a converted
model needs to be the same function. Those options are applied to the model spec before the model
is built (:func:`adapt_spec`, each change logged); non-local options only when the checkpoint holds NL
blocks (fresh NL blocks keep the configured ones). Facts, from the reference code:

- Every format's backbone is nlvideo's C2D/I3D (stride on the 3x3, 1x1 shortcut with the block's
  stride, pool2 2x1x1 after res2, I3D's inflated first 1x1s): PyTorchVideo ``hub/resnet.py``
  (``c2d_r50``, ``i3d_r50``: ``stage1_pool`` is ``blocks.2``, so res2..res5 are blocks 1, 3, 4, 5 and
  the head ``blocks.6.proj``), PySlowFast ``models/video_model_builder.py`` (``ResNet``; stage ``s<n>`` is
  res<n>), video-nonlocal-net ``lib/models/resnet_video.py`` (8x8) and ``resnet_video_org.py`` (32x2).
- PySlowFast ``models/nonlocal_helper.py`` and video-nonlocal-net ``lib/models/nonlocal_helper.py``
  max-pool the block's *input* (1x2x2) before phi and g (``pool=before_embed``) and scale theta^T phi
  by C'^-1/2 (PySlowFast's ``softmax`` instantiation always; video-nonlocal-net with
  ``NONLOCAL.USE_SCALE``, True in its configs); PySlowFast's ``dot_product`` divides by M, unscaled.
- video-nonlocal-net's pool1 has no padding (``pads=[0, 0, 0] * 2``: 112 -> 55 for 224 input), hence
  ``stem_pool_padding=0``; PySlowFast ``stem_helper.py`` and PyTorchVideo pad by 1.
- Caffe2 names and layouts (PySlowFast ``utils/c2_model_loading.py``, ``utils/checkpoint.py``): NCTHW
  arrays as PyTorch's; BN as ``_bn_s`` (scale), ``_bn_b``, ``_bn_rm`` (running mean), ``_bn_riv`` (the
  running *variance*, loaded as is); ``pred_w`` (classes, C) is the fc. Frozen-BN ("affine") models
  store only ``_bn_s``/``_bn_b``: loaded as BN with running mean 0 and variance 1 - eps (the same affine
  map in eval mode). Their BN epsilon is 1.0000001e-5 (nlvideo: 1e-5, a 1e-12 difference).
- Normalisation (0-255 RGB here): video-nonlocal-net ``MODEL.MEAN``/``STD`` 114.75/57.375 with
  ``USE_BGR`` False (``lib/core/config.py``); PySlowFast ``DATA.MEAN``/``STD`` (0.45/0.225 of 0-1 by
  default) from the checkpoint's ``cfg``; PyTorchVideo's hub models were trained by PySlowFast with
  those defaults; torchvision ImageNet 123.675/116.28/103.53, 58.395/57.12/57.375.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import re
import string
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from nlvideo.models.inflate import inflate_weight, torchvision_resnet_state_dict
from nlvideo.models.resnet import is_nonlocal_name
from nlvideo.models.spec import STAGE_DEPTHS, STAGE_NAMES, ConfigError, ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Normalization:
    """Per-channel RGB mean and std on 0-255 pixels, as ``data.mean``/``data.std`` take them."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def config_values(self) -> tuple[float | list[float], float | list[float]]:
        """(mean, std) as config values: one number when all channels share it, else a 3-list."""
        return tuple(v[0] if len(set(v)) == 1 else list(v) for v in (self.mean, self.std))


KINETICS = Normalization((114.75,) * 3, (57.375,) * 3)  # 0.45/0.225 of 0-1 pixels
IMAGENET = Normalization((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


class KeyMap:
    """Renames between nlvideo's state-dict keys and a format's, both ways, from one table.

    ``rules`` pairs an nlvideo template with the format's (``"res{s}.{i}.conv{k}.{p}"`` with
    ``"s{s}.pathway0_res{i}.branch2.{k}.{p}"``); ``fields`` gives each placeholder either a regex
    (the value is copied) or a dict from nlvideo's values to the format's (``{"1": "a", ...}``).
    """

    def __init__(
        self, rules: Sequence[tuple[str, str]], fields: Mapping[str, str | Mapping[str, str]]
    ) -> None:
        self._fields = fields
        self._rules = [(self._compile(ours, False), ours, self._compile(theirs, True), theirs)
                       for ours, theirs in rules]

    def _compile(self, template: str, theirs: bool) -> re.Pattern:
        parts = []
        for literal, name, _, _ in string.Formatter().parse(template):
            parts.append(re.escape(literal))
            if name is not None:
                spec = self._fields[name]
                values = spec if isinstance(spec, str) else "|".join(
                    map(re.escape, spec.values() if theirs else spec.keys()))
                parts.append(f"(?P<{name}>{values})")
        return re.compile("".join(parts))

    def _value(self, name: str, value: str, to_theirs: bool) -> str:
        spec = self._fields[name]
        if isinstance(spec, str):
            return value
        return spec[value] if to_theirs else {v: k for k, v in spec.items()}[value]

    def to_ours(self, key: str) -> str | None:
        """The nlvideo key of the format's ``key``; None when no rule matches."""
        for _, ours, theirs_re, _ in self._rules:
            if m := theirs_re.fullmatch(key):
                return ours.format(**{n: self._value(n, v, False) for n, v in m.groupdict().items()})
        return None

    def to_theirs(self, key: str) -> str | None:
        """The format's key of nlvideo's ``key`` (the inverse of :meth:`to_ours`)."""
        for ours_re, _, _, theirs in self._rules:
            if m := ours_re.fullmatch(key):
                return theirs.format(**{n: self._value(n, v, True) for n, v in m.groupdict().items()})
        return None


_DIGITS, _STAGE = r"\d+", r"[2-5]"
_PARAM = r"weight|bias|running_mean|running_var|num_batches_tracked"
_ABC = {"1": "a", "2": "b", "3": "c"}  # bottleneck conv1/2/3 = branch2a/b/c
_NL_PARTS = {"theta": "theta", "phi.0": "phi", "g.0": "g", "W.0": "out"}  # nlvideo NL conv -> theirs

PYSLOWFAST_KEYS = KeyMap(
    [
        ("stem.conv.{p}", "s1.pathway0_stem.conv.{p}"),
        ("stem.bn.{p}", "s1.pathway0_stem.bn.{p}"),
        ("res{s}.{i}.conv{k}.{p}", "s{s}.pathway0_res{i}.branch2.{k}.{p}"),
        ("res{s}.{i}.bn{k}.{p}", "s{s}.pathway0_res{i}.branch2.{k}_bn.{p}"),
        ("res{s}.{i}.downsample.0.{p}", "s{s}.pathway0_res{i}.branch1.{p}"),
        ("res{s}.{i}.downsample.1.{p}", "s{s}.pathway0_res{i}.branch1_bn.{p}"),
        ("res{s}.nl{i}.{nl}.{p}", "s{s}.pathway0_nonlocal{i}.conv_{nl}.{p}"),
        ("res{s}.nl{i}.W.1.{p}", "s{s}.pathway0_nonlocal{i}.bn.{p}"),
        ("head.fc.{p}", "head.projection.{p}"),
    ],
    {"s": _STAGE, "i": _DIGITS, "k": _ABC, "p": _PARAM, "nl": _NL_PARTS},
)
CAFFE2_KEYS = KeyMap(
    [
        ("stem.conv.weight", "conv1_w"),
        ("stem.bn.{bn}", "res_conv1_bn_{bn}"),
        ("res{s}.{i}.conv{k}.weight", "res{s}_{i}_branch2{k}_w"),
        ("res{s}.{i}.bn{k}.{bn}", "res{s}_{i}_branch2{k}_bn_{bn}"),
        ("res{s}.{i}.downsample.0.weight", "res{s}_{i}_branch1_w"),
        ("res{s}.{i}.downsample.1.{bn}", "res{s}_{i}_branch1_bn_{bn}"),
        ("res{s}.nl{i}.{nl}.{conv}", "nonlocal_conv{s}_{i}_{nl}_{conv}"),
        ("res{s}.nl{i}.W.1.{bn}", "nonlocal_conv{s}_{i}_bn_{bn}"),
        ("head.fc.{conv}", "pred_{conv}"),
    ],
    {"s": _STAGE, "i": _DIGITS, "k": _ABC, "nl": _NL_PARTS,
     "conv": {"weight": "w", "bias": "b"},
     "bn": {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}},
)
PYTORCHVIDEO_KEYS = KeyMap(
    [
        ("stem.conv.{p}", "blocks.0.conv.{p}"),
        ("stem.bn.{p}", "blocks.0.norm.{p}"),
        ("res{s}.{i}.conv{k}.{p}", "blocks.{s}.res_blocks.{i}.branch2.conv_{k}.{p}"),
        ("res{s}.{i}.bn{k}.{p}", "blocks.{s}.res_blocks.{i}.branch2.norm_{k}.{p}"),
        ("res{s}.{i}.downsample.0.{p}", "blocks.{s}.res_blocks.{i}.branch1_conv.{p}"),
        ("res{s}.{i}.downsample.1.{p}", "blocks.{s}.res_blocks.{i}.branch1_norm.{p}"),
        ("head.fc.{p}", "blocks.6.proj.{p}"),
    ],
    # blocks.2 is the res2 -> res3 temporal max-pool (stage1_pool) of c2d_r50 / i3d_r50
    {"s": {"2": "1", "3": "3", "4": "4", "5": "5"}, "i": _DIGITS, "k": _ABC, "p": _PARAM},
)
TORCHVISION_KEYS = KeyMap(
    [
        ("stem.conv.{p}", "conv1.{p}"),
        ("stem.bn.{p}", "bn1.{p}"),
        ("res{s}.{i}.{m}.{p}", "layer{s}.{i}.{m}.{p}"),
        ("head.fc.{p}", "fc.{p}"),
    ],
    {"s": {"2": "1", "3": "2", "4": "3", "5": "4"}, "i": _DIGITS, "m": r"conv[1-3]|bn[1-3]|downsample\.[01]",
     "p": _PARAM},
)


@dataclass(frozen=True)
class Trained:
    """What a checkpoint's weights were trained with: the input normalisation, and the
    :class:`~nlvideo.models.spec.ModelSpec` fields (``nonlocal_options``: of its NonLocalSpec) that a
    converted model must have to compute the same function."""

    normalization: Normalization
    options: Mapping[str, Any] = field(default_factory=dict)
    nonlocal_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Format:
    """A checkpoint format: its name, the stem conv key that identifies it, its keys, how to read what
    it was trained with from the file's top-level object, and key names that hold no weights."""

    name: str
    marker: str
    keys: KeyMap | None  # None: nlvideo's own keys
    trained: Callable[[Mapping[str, Any]], Trained]
    ignore: str = r"$^"  # regex of the format's keys to drop (optimizer state stored among the weights)
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # completes the weights before renaming


def _pyslowfast_trained(obj: Mapping[str, Any]) -> Trained:
    """From the checkpoint's ``cfg`` (PySlowFast's ``cfg.dump()`` YAML) when present; else the model
    zoo's settings (softmax NL blocks, stride on the 3x3, 0.45/0.225). Settings that make another
    network than nlvideo's C2D/I3D (:data:`_PYSLOWFAST_BUILT`) are refused, naming them."""
    cfg = _pyslowfast_cfg(obj)
    data, resnet, nonlocal_, model = (cfg.get(k) or {} for k in ("DATA", "RESNET", "NONLOCAL", "MODEL"))
    for name, built in _PYSLOWFAST_BUILT.items():
        section, key = name.split(".")
        value = (cfg.get(section) or {}).get(key, built)
        if value != built:
            raise ConfigError(f"PySlowFast {name}={value}: nlvideo builds its C2D/I3D with {name}={built}, "
                              "so these weights would compute another network")
    arch = model.get("ARCH", "i3d")
    if arch not in ("c2d", "i3d"):
        raise ConfigError(f"PySlowFast MODEL.ARCH={arch} is not a C2D/I3D ResNet; nlvideo loads c2d and i3d")
    if any(g != 1 for stage in nonlocal_.get("GROUP", []) for g in stage):
        raise ConfigError(f"PySlowFast NONLOCAL.GROUP={nonlocal_['GROUP']}: grouped non-local blocks are not "
                          "implemented in nlvideo")
    pools = [p for stage, pool in zip(nonlocal_.get("LOCATION", []), nonlocal_.get("POOL", []), strict=False)
             if any(stage) for p in pool]
    if any(list(p) != [1, 2, 2] for p in pools):
        raise ConfigError(f"PySlowFast NONLOCAL.POOL={nonlocal_['POOL']}: nlvideo's NL blocks pool 1x2x2")
    instantiation = nonlocal_.get("INSTANTIATION", "softmax")
    nl = {"softmax": {"instantiation": "embedded_gaussian", "scale": True},
          "dot_product": {"instantiation": "dot_product", "scale": False}}.get(instantiation)
    if nl is None:
        raise ConfigError(
            f"PySlowFast NONLOCAL.INSTANTIATION={instantiation}: nlvideo knows softmax and dot_product"
        )
    norm = Normalization(*(tuple(255.0 * v for v in data.get(key, default)) for key, default in
                           (("MEAN", [0.45] * 3), ("STD", [0.225] * 3))))
    return Trained(norm, {"stride_1x1": bool(resnet.get("STRIDE_1X1", False))},
                   {**nl, "pool": "before_embed", "sub_sample": True})


# The PySlowFast settings (their defaults) of the network nlvideo builds, besides those read into model
# options above; keys that only initialise (RESNET.ZERO_INIT_FINAL_BN) or train (MODEL.DROPOUT_RATE) do
# not matter, and temporal kernels (RESNET.NUM_BLOCK_TEMP_KERNEL) show in the weights' shapes.
_PYSLOWFAST_BUILT: dict[str, Any] = {
    "RESNET.TRANS_FUNC": "bottleneck_transform",
    "RESNET.NUM_GROUPS": 1,
    "RESNET.SPATIAL_STRIDES": [[1], [2], [2], [2]],
    "RESNET.SPATIAL_DILATIONS": [[1], [1], [1], [1]],
    "NONLOCAL.NORM_TYPE": "batchnorm",
    "DETECTION.ENABLE": False,
}


def _pyslowfast_cfg(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The file's ``cfg`` as a dict (PySlowFast stores ``cfg.dump()``, a YAML string); {} when the file
    has none, a one-line :class:`ConfigError` when it is empty or not such a mapping."""
    if "cfg" not in obj:
        return {}
    raw = obj["cfg"]
    try:
        cfg = yaml.safe_load(raw) if isinstance(raw, str) else raw
    except yaml.YAMLError as exc:
        raise ConfigError(f"PySlowFast cfg is not YAML ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(cfg, Mapping) or not cfg:
        raise ConfigError(f"PySlowFast cfg is {'empty' if not cfg else f'a {type(cfg).__name__}'}: nlvideo "
                          "needs the settings PySlowFast's save_checkpoint stores (cfg.dump()) to know the "
                          "network")
    return dict(cfg)


_NONLOCAL_FUNCTION = ("instantiation", "scale", "pool", "sub_sample", "bn_layer", "inter_ratio")


def _nlvideo_trained(obj: Mapping[str, Any]) -> Trained:
    """From the training run's stored config: its normalisation and function-defining model options."""
    config = obj.get("config") or {}
    data, model = config.get("data") or {}, config.get("model") or {}
    norm = Normalization(*(tuple(map(float, v if isinstance(v, list | tuple) else [v] * 3))
                           for v in (data.get("mean", 114.75), data.get("std", 57.375))))
    nl = model.get("nonlocal") or {}
    return Trained(
        norm,
        {k: model[k] for k in ("stride_1x1", "stem_pool_padding") if k in model},
        {k: nl[k] for k in _NONLOCAL_FUNCTION if k in nl},
    )


def _with_affine_bn_statistics(blobs: dict[str, Any]) -> dict[str, Any]:
    """Caffe2 frozen-BN ("affine") models store ``_bn_s``/``_bn_b`` only: add running mean 0 and
    variance 1 - eps, with which nlvideo's BN (eps 1e-5) computes the same x * s + b in eval mode."""
    out = dict(blobs)
    for key, scale in blobs.items():
        stem = key.removesuffix("_bn_s")
        if stem != key and stem + "_bn_rm" not in blobs:
            out[stem + "_bn_rm"] = np.zeros_like(scale)
            out[stem + "_bn_riv"] = np.full_like(scale, 1.0 - 1e-5)
    if len(out) > len(blobs) and any(k.startswith("nonlocal_conv3_") for k in blobs):
        raise ConfigError("video-nonlocal-net frozen-BN (affine) NL models group res3's non-local blocks in "
                          "time (res_stage_nonlocal_group), which nlvideo does not implement")
    return out


_CAFFE2_NL = {"instantiation": "embedded_gaussian", "scale": True, "pool": "before_embed", "sub_sample": True}
FORMATS: tuple[Format, ...] = (
    Format("PyTorchVideo hub", "blocks.0.conv.weight", PYTORCHVIDEO_KEYS, lambda obj: Trained(KINETICS)),
    Format("PySlowFast", "s1.pathway0_stem.conv.weight", PYSLOWFAST_KEYS, _pyslowfast_trained),
    Format("video-nonlocal-net Caffe2", "conv1_w", CAFFE2_KEYS,
           lambda obj: Trained(KINETICS, {"stem_pool_padding": 0}, _CAFFE2_NL),
           ignore=r".*_momentum|lr|model_iter", prepare=_with_affine_bn_statistics),
    Format("torchvision", "conv1.weight", TORCHVISION_KEYS, lambda obj: Trained(IMAGENET)),
    Format("nlvideo", "stem.conv.weight", None, _nlvideo_trained),
)


@dataclass(frozen=True)
class Checkpoint:
    """A weights file read and renamed: ``state_dict`` has nlvideo's keys (2-D kernels still 2-D),
    ``origin`` maps each to the file's own key (for messages); ``key`` is the setting that named the
    file and ``saved`` the file's top-level object (an nlvideo checkpoint's config, class names, ...)."""

    source: str
    format: str
    state_dict: dict[str, torch.Tensor]
    origin: dict[str, str]
    trained: Trained
    key: str = "model.pretrained"
    saved: Mapping[str, Any] = field(default_factory=dict)
    keys: KeyMap | None = None  # the format's names; None: nlvideo's own

    @property
    def where(self) -> str:
        return f"{self.key}={self.source} ({self.format})"

    def file_key(self, ours: str) -> str:
        """The name the file's format gives (or would give) nlvideo's ``ours``."""
        return (self.keys.to_theirs(ours) if self.keys else None) or ours

    @property
    def has_nonlocal(self) -> bool:
        return any(is_nonlocal_name(k) for k in self.state_dict)


# ---- reading files -------------------------------------------------------------------------------

_NUMPY_CORE = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"
# What a numpy array or scalar pickles to: Caffe2 pickles are dicts of arrays; nlvideo checkpoints
# hold numpy RNG states.
_NUMPY_GLOBALS = [np.ndarray, np.dtype, *(type(np.dtype(c)) for c in "?bBhHiIlLqQefdg"),
                  importlib.import_module(f"{_NUMPY_CORE}.multiarray")._reconstruct,
                  importlib.import_module(f"{_NUMPY_CORE}.multiarray").scalar]


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays in plain containers and nothing else: a pickle can run any code, and a
    Caffe2 weights file needs no more than this."""

    _ALLOWED = {
        *((f"numpy.{core}.multiarray", f) for core in ("core", "_core") for f in ("_reconstruct", "scalar")),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")
        return super().find_class(re.sub(r"^numpy\._?core", _NUMPY_CORE, module), name)


TRUST_ENV = "NLVIDEO_TRUST_CHECKPOINT"  # paths (os.pathsep-separated) of files the user trusts fully


class UntrustedFile(ConfigError):
    """An intact file that only full unpickling can read, which can run code: refused unless trusted."""


def read_weights_file(path: Path, named: str, mmap: bool = True) -> Any:
    """The object of a ``torch.save`` file (zip or legacy) or of a Caffe2 pickle, read without running
    code: tensors, primitives and numpy arrays only (``weights_only=True``; Caffe2: the same with
    :class:`_NumpyUnpickler`). A pickle can call any function while it is read, and checkpoints are
    shared. A zip file that names anything else is refused in one line unless :data:`TRUST_ENV` names
    it; a file cut short or damaged is reported as such. ``named``: how messages name the file
    (``checkpoint=PATH``)."""
    if _trusted(path):
        log.warning("%s: read with full unpickling, as %s names it: it can run code", named, TRUST_ENV)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            if zipfile.is_zipfile(path):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            with path.open("rb") as f:
                zip_magic = f.read(4) == b"PK\x03\x04"
            if zip_magic:  # a zip archive whose end (the central directory) is missing
                raise EOFError("a zip archive without its end")
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - not a legacy torch file: a Caffe2 pickle, or unreadable
                pass
        with path.open("rb") as f:
            return _NumpyUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f"it holds {refused[1]}" if refused else "it holds more than tensors, numbers and strings"
            raise UntrustedFile(f"{named} needs full unpickling ({what}), which can run code: if you trust "
                              f"this file, rerun with {TRUST_ENV}={path}") from None
        if "is not allowed in a weights file" in str(exc):
            raise ConfigError(f"{named}: not a checkpoint nlvideo can read safely ({exc})") from None
        raise ConfigError(f"{named}: the file is truncated or corrupt ({_one_line(exc)})") from None
    except OSError as exc:
        raise ConfigError(f"{named}: cannot read the file ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - whatever the readers raise on a damaged file
        raise ConfigError(f"{named}: the file is truncated or corrupt ({_one_line(exc)})") from None


def _trusted(path: Path) -> bool:
    """Whether :data:`TRUST_ENV` names ``path``: the one explicit opt-in to full unpickling."""
    named = [p for p in os.environ.get(TRUST_ENV, "").split(os.pathsep) if p]
    return any(Path(p).expanduser().resolve() == path.resolve() for p in named)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


_WRAPPERS = ("model_state", "blobs", "model", "state_dict")  # where files keep their weights


def _detect(obj: Any, named: str) -> tuple[Format, dict[str, Any]]:
    """The format whose stem conv key ``obj`` (or one of its :data:`_WRAPPERS`) holds, possibly under a
    ``model.`` (PySlowFast's PyTorchVideo models) or ``module.`` (DDP) prefix; its weights unprefixed."""
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{named}: unknown checkpoint format (a {type(obj).__name__})")
    dicts = [obj, *(w for k in _WRAPPERS if isinstance(w := obj.get(k), Mapping))]
    for weights in dicts:
        for prefix in ("", "model.", "module."):
            for fmt in FORMATS:
                if prefix + fmt.marker in weights:
                    return fmt, {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    found = f"a dict with keys {list(obj)[:6]}" + "".join(f", {k} keys like {list(obj[k])[:3]}"
                                                        for k in _WRAPPERS if isinstance(obj.get(k), Mapping))
    raise ConfigError(f"{named}: unknown checkpoint format ({found}); nlvideo reads "
                      + ", ".join(f"{f.name} (stem conv {f.marker!r})" for f in FORMATS))


def _as_tensor(value: Any) -> torch.Tensor | None:
    """``value`` as a tensor if it is a numeric array (of any dtype and dimension), else None."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return torch.from_numpy(np.require(value, requirements="C"))  # 0-dim stays 0-dim
    return None


def read_checkpoint(source: str, depth: int = 50, key: str = "model.pretrained") -> Checkpoint:
    """Read ``source`` (a path, or ``torchvision`` for its ImageNet ResNet of ``depth``) with
    :func:`read_weights_file`, detect its format and rename its weights to nlvideo's keys. Raises a
    one-line :class:`ConfigError` naming the setting ``key`` (``model.pretrained``, ``checkpoint``, ...),
    the file and what was found."""
    if source == "torchvision":
        obj: Any = torchvision_resnet_state_dict(depth)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"{key}={source!r}: no such file")
        obj = read_weights_file(path, f"{key}={source}")
    return weights_of(obj, source, key)


def weights_of(obj: Any, source: str, key: str = "model.pretrained") -> Checkpoint:
    """The weights of an object :func:`read_weights_file` returned, for a caller that needs the rest of
    the file too (a resume, an evaluation)."""
    fmt, weights = _detect(obj, f"{key}={source}")
    return _convert(fmt, weights, source, obj, key)


def _convert(fmt: Format, weights: Mapping[str, Any], source: str, obj: Mapping[str, Any],
             key: str) -> Checkpoint:
    """``weights`` renamed to nlvideo's keys; every float array must have a name in the format's table,
    and every array named so must be a finite numeric array."""
    named = f"{key}={source} ({fmt.name})"
    if fmt.prepare is not None:
        weights = fmt.prepare(dict(weights))
    state, origin, unknown = {}, {}, []
    for theirs, value in weights.items():
        if re.fullmatch(fmt.ignore, theirs):
            continue
        tensor = _as_tensor(value)
        ours = theirs if fmt.keys is None else fmt.keys.to_ours(theirs)
        if ours is None:
            if tensor is not None and tensor.is_floating_point() and tensor.dim():
                unknown.append(theirs)
            continue
        if tensor is None:
            raise ConfigError(f"{named}: {theirs} is a {type(value).__name__}"
                              f"{f' of dtype {value.dtype}' if isinstance(value, np.ndarray) else ''}, "
                              f"not a numeric array: model {ours} needs one")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ConfigError(f"{named}: {theirs} holds NaN or infinite values: the file is damaged")
        state[ours], origin[ours] = tensor, theirs
    if unknown:
        raise ConfigError(f"{named}: {len(unknown)} tensors are not part of a C2D/I3D ResNet, "
                          f"e.g. {sorted(unknown)[:3]}")
    try:
        trained = fmt.trained(obj)
    except ConfigError as exc:
        raise ConfigError(f"{named}: {exc}") from None
    return Checkpoint(source, fmt.name, state, origin, trained, key, obj, fmt.keys)


# ---- the model the weights need, and loading them -----------------------------------------------

def required_options(ckpt: Checkpoint) -> dict[str, Any]:
    """The model options ``ckpt``'s weights were trained with, as config keys under ``model.``
    (``stem_pool_padding``, ``nonlocal.pool``); NL ones only when it has NL blocks."""
    nl = ckpt.trained.nonlocal_options if ckpt.has_nonlocal else {}
    return {**ckpt.trained.options, **{f"nonlocal.{k}": v for k, v in nl.items()}}


def _announce(ckpt_format: str, key: str, old: Any, new: Any) -> None:
    if old != new:
        log.info("model.%s: %r -> %r, as the %s weights were trained", key, old, new, ckpt_format)


def adapt_spec(spec: ModelSpec, ckpt: Checkpoint) -> ModelSpec:
    """``spec`` with :func:`required_options`, each change logged: the converted model then computes
    what the original did."""
    options = required_options(ckpt)
    top = {k: v for k, v in options.items() if not k.startswith("nonlocal.")}
    nl = {k.removeprefix("nonlocal."): v for k, v in options.items() if k.startswith("nonlocal.")}
    for key, value in top.items():
        _announce(ckpt.format, key, getattr(spec, key), value)
    for key, value in nl.items():
        _announce(ckpt.format, f"nonlocal.{key}", getattr(spec.nonlocal_, key), value)
    return replace(spec, **top, nonlocal_=replace(spec.nonlocal_, **nl))


def _blocks_per_stage(keys: Sequence[str]) -> tuple[int, ...]:
    counts = dict.fromkeys(STAGE_NAMES, 0)
    for key in keys:
        if m := re.match(r"(res[2-5])\.(\d+)\.", key):
            counts[m[1]] = max(counts[m[1]], int(m[2]) + 1)
    return tuple(counts.values())


def _depth_name(blocks: tuple[int, ...]) -> str:
    depth = {v: k for k, v in STAGE_DEPTHS.items()}.get(blocks)
    return f"ResNet-{depth}" if depth else f"ResNet with {list(blocks)} blocks"


HEAD = "head.fc."  # the classifier's keys


def _fit(ckpt: Checkpoint, key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """``value`` shaped for the model's ``target``: 2-D kernels inflated, trailing singleton dimensions
    dropped (Caffe2's 5-D ``pred_w``, as its own loader reshapes a blob of the same size); None for a
    classifier of another class count (re-initialised); :class:`ConfigError` naming both keys otherwise."""
    need = target.shape
    if target.is_floating_point() and not value.is_floating_point():
        raise ConfigError(f"{ckpt.where}: {ckpt.origin[key]} is {_described(value)}, model {key} needs "
                          f"floating-point {tuple(need)}")
    if value.dim() == 4 and len(need) == 5 and value.shape == need[:2] + need[3:]:
        value = inflate_weight(value, need)
    if value.dim() > len(need) and value.shape[:len(need)] == need and value.numel() == target.numel():
        value = value.reshape(need)
    if value.shape == need:
        return value.to(target.dtype)
    if key.startswith(HEAD) and value.dim() == len(need) and value.shape[1:] == need[1:]:
        log.info("%s: %s not loaded (%d classes in the checkpoint, model.num_classes=%d): re-initialised",
                 ckpt.where, key, value.shape[0], need[0])
        return None
    hint = ""
    if value.dim() == len(need) == 5 and value.shape[:2] == need[:2] and value.shape[3:] == need[3:]:
        hint = ("; temporal kernels differ: an I3D checkpoint needs model.arch=i3d, a C2D one model.arch=c2d "
                "(and model.inflate where blocks are inflated otherwise)")
    elif value.dim() and value.shape[:2] != need[:2]:
        hint = "; channel counts differ: check model.width"
    raise ConfigError(f"{ckpt.where}: {ckpt.origin[key]} has shape {tuple(value.shape)}, model {key} needs "
                      f"{tuple(need)}{hint}")


def _described(value: torch.Tensor) -> str:
    return f"a 0-dim {value.dtype} scalar" if value.dim() == 0 else f"{value.dtype} {tuple(value.shape)}"


def _unit(key: str) -> str:
    """The part of the model a key belongs to, loaded whole or not at all: a non-local block
    (``res4.nl1``), the classifier (``head.fc``) or the backbone."""
    if is_nonlocal_name(key):
        return ".".join(key.split(".")[:2])
    return "head.fc" if key.startswith(HEAD) else "backbone"


def load_weights(model: nn.Module, ckpt: Checkpoint, complete: bool = False) -> list[str]:
    """The one way a weights file's tensors enter a model (built from :func:`adapt_spec`'s spec for
    published weights); returns the keys left as built.

    Each tensor of the file must fit its place in the model exactly (2-D kernels are inflated), and the
    model's parts are loaded whole: the backbone always, each non-local block and the classifier either
    wholly from the file or, when the file has none of its tensors, left as built (a new NL block is an
    identity; a classifier of another class count is re-initialised) and logged. ``complete`` (a
    checkpoint of this very model: predicting, testing, resuming) leaves nothing as built. Anything else
    is a one-line :class:`ConfigError` naming the tensors that differ."""
    target = model.state_dict()
    have, need = _blocks_per_stage(list(ckpt.state_dict)), _blocks_per_stage(list(target))
    if have != need:
        raise ConfigError(f"{ckpt.where} is a {_depth_name(have)}, the model a {_depth_name(need)}: set "
                          "model.depth (e.g. model=i3d_r101 for ResNet-101 weights)")
    surplus = sorted(k for k in ckpt.state_dict if k not in target)
    surplus_nl = sorted({_unit(k) for k in surplus if is_nonlocal_name(k)})
    if surplus_nl:
        positions = ",".join(n.replace(".nl", ".") for n in surplus_nl)
        raise ConfigError(f"{ckpt.where} has non-local blocks {surplus_nl} the model lacks: set "
                          f"model.nonlocal.positions=[{positions}] (e.g. model=i3d_nl5)")
    if surplus:
        raise ConfigError(
            f"{ckpt.where}: {len(surplus)} tensors have no place in the model, e.g. {surplus[:3]}"
        )
    _check_whole_units(ckpt, target, complete)
    loaded = {k: v for k, v in ((k, _fit(ckpt, k, v, target[k])) for k, v in ckpt.state_dict.items())
              if v is not None}
    if complete and len(loaded) < len(ckpt.state_dict):
        raise ConfigError(f"{ckpt.where} has {ckpt.state_dict[HEAD + 'weight'].shape[0]} classes, the model "
                          f"{target[HEAD + 'weight'].shape[0]}: it does not fit this model")
    model.load_state_dict(loaded, strict=False)
    fresh = [k for k in target if k not in loaded and not k.endswith("num_batches_tracked")]
    fresh_nl = sorted({_unit(k) for k in fresh if is_nonlocal_name(k)})
    head = "re-initialised" if any(k.startswith(HEAD) for k in fresh) else "loaded"
    log.info("%s: loaded %d tensors; new non-local blocks (identities): %s; head %s", ckpt.where,
             len(loaded), fresh_nl or "none", head)
    return fresh


def _check_whole_units(ckpt: Checkpoint, target: Mapping[str, torch.Tensor], complete: bool) -> None:
    """Every part of the model with tensors in the file has all of them (the backbone always; all parts
    when ``complete``): a non-local block half from the file and half random computes neither network."""
    present = {_unit(k) for k in ckpt.state_dict}
    missing = [k for k in target if not k.endswith("num_batches_tracked") and k not in ckpt.state_dict
               and (complete or _unit(k) in present or _unit(k) == "backbone")]
    if not missing:
        return
    parts = ", ".join(sorted({_unit(k) for k in missing}))
    in_file = "" if ckpt.keys is None else f" ({ckpt.format} names {[ckpt.file_key(k) for k in missing[:4]]})"
    whole = ("every tensor of the model" if complete else
             "each part of the model (backbone, each non-local block, head.fc) wholly or not at all")
    raise ConfigError(f"{ckpt.where} lacks {len(missing)} of the model's tensors, e.g. {missing[:4]}"
                      f"{in_file}, of {parts}: it must hold {whole}")


def inflate_state_dict(model: nn.Module, state_dict_2d: Mapping[str, torch.Tensor]) -> list[str]:
    """Load a torchvision-layout 2-D ResNet state dict into ``model``, inflating its kernels; returns the
    keys left as built. Raises :class:`ConfigError` naming the key when a backbone tensor is missing or its
    shape cannot match (e.g. ResNet-50 weights into a ResNet-101, or a different ``model.width``)."""
    torchvision = next(f for f in FORMATS if f.keys is TORCHVISION_KEYS)
    return load_weights(model, _convert(torchvision, state_dict_2d, "<state dict>", {}, "state dict"))


# ---- the run config: model options and input normalisation ------------------------------------

_NORMALIZATION_OVERRIDE = re.compile(r"^[+~]*data\.(mean|std)=")


def apply_pretrained_to_config(
    cfg: Any, overrides: Sequence[str], ckpt: Checkpoint | None = None
) -> Trained | None:
    """Write what ``cfg.model.pretrained``'s weights were trained with into the run config ``cfg``: the
    model options they need (:func:`required_options`; so the config a checkpoint stores describes the
    model that was trained) and their input normalisation as ``data.mean``/``std``, unless the command
    line (``overrides``, Hydra's task overrides) sets either. Logs each change. Call it where the run
    config is composed, before the data and the model are built; None without ``model.pretrained``.
    ``ckpt``: that file as :func:`read_checkpoint` returned it, when the caller has read it already."""
    source = cfg.model.get("pretrained")
    if not source:
        return None
    if source == "torchvision":  # no options, and no download just for the normalisation
        trained, options, fmt = Trained(IMAGENET), {}, "torchvision"
    else:
        ckpt = ckpt or read_checkpoint(str(source))
        trained, options, fmt = ckpt.trained, required_options(ckpt), ckpt.format
    for key, value in options.items():
        _announce(fmt, key, OmegaConf.select(cfg.model, key), value)
        OmegaConf.update(cfg.model, key, value)
    mean, std = trained.normalization.config_values()
    if any(_NORMALIZATION_OVERRIDE.match(o) for o in overrides):
        log.info("data.mean=%s data.std=%s as given on the command line (model.pretrained=%s was trained "
                 "with mean %s, std %s)", cfg.data.mean, cfg.data.std, source, mean, std)
    else:
        cfg.data.mean, cfg.data.std = mean, std
        log.info("data.mean=%s data.std=%s: the normalisation model.pretrained=%s was trained with",
                 mean, std, source)
    return trained
