"""Models by name outside Hydra, from the same ``configs/model/*.yaml`` that ``train.py model=NAME`` uses.

    import nlvideo
    nlvideo.list_models()                                   # ['c2d', 'c2d_nl1', ..., 'i3d_r101_nl5']
    net = nlvideo.create_model("i3d_nl5", num_classes=400)
    net = nlvideo.create_model("c2d_nl5", num_classes=4, width=8, nonlocal_={"instantiation": "dot_product"})

The yaml files stay the one place where a model's NL placement and defaults are written: scripts,
tests and ``hubconf.py`` ask for a name instead of repeating them. A model config's ``defaults`` list
names other model configs (``i3d_nl5`` -> ``i3d`` -> ``c2d``); they are merged in order, ``_self_``
where it is listed (last when it is not, as Hydra does), which is all the model group uses. Hydra's
own ``compose`` is not called because it refuses to run inside another Hydra app (``predict.py``);
``tests/test_factory.py`` checks that both give the same config for every model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nlvideo.models import ConfigError, VideoResNet, build_video_resnet

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_names(group: str) -> list[str]:
    """The choices of config group ``group`` (``model``, ``data``, ``clip``, ...), sorted."""
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def group_config(group: str, name: str) -> DictConfig:
    """``configs/<group>/<name>.yaml`` as written (its ``defaults`` list not merged): what ``group=name``
    selects on the command line, for code that runs outside Hydra's composition."""
    path = CONFIGS / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown {group} {name!r}; choose one of: {', '.join(config_names(group))}")
    return OmegaConf.load(path)


def list_models() -> list[str]:
    """The names ``create_model`` (and ``train.py model=NAME``) accepts, sorted."""
    return config_names("model")


def model_config(name: str, num_classes: int, **overrides: Any) -> dict[str, Any]:
    """The model config ``name`` with its defaults merged, ``num_classes`` (the yaml takes it from the
    data config) and ``overrides`` applied, as the plain dict ``build_video_resnet`` takes.

    ``overrides`` are config keys (``width=8``); nested ones merge key by key
    (``nonlocal_={"instantiation": "gaussian"}`` keeps the positions) and lists replace the whole
    list, as on the command line. ``nonlocal_`` stands for the key ``nonlocal``, a Python keyword.
    """
    if "nonlocal_" in overrides:
        overrides["nonlocal"] = overrides.pop("nonlocal_")
    cfg = OmegaConf.merge(_load(name), OmegaConf.create({**overrides, "num_classes": num_classes}))
    return OmegaConf.to_container(cfg, resolve=True)


def create_model(
    name: str, num_classes: int = 400, pretrained: str | None = None, **overrides: Any
) -> VideoResNet:
    """Build model ``name`` (one of :func:`list_models`) with ``num_classes`` outputs.

    ``pretrained`` is the config key ``model.pretrained`` (weights to start from, see
    docs/models.md); ``overrides`` are other model keys, as :func:`model_config` takes them. Bad
    values raise :class:`~nlvideo.models.ConfigError` naming the key.
    """
    return build_video_resnet(**model_config(name, num_classes, pretrained=pretrained, **overrides))


def _load(name: str) -> DictConfig:
    """``configs/model/<name>.yaml`` merged with the model configs its ``defaults`` list names."""
    node = group_config("model", name)
    defaults = list(node.pop("defaults", None) or ())
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create()
    for entry in defaults:
        if not isinstance(entry, str):
            raise ConfigError(f"{CONFIGS / 'model' / name}.yaml: defaults entry {entry!r} is not the name "
                              "of a model config")
        merged = OmegaConf.merge(merged, node if entry == "_self_" else _load(entry))
    return merged
