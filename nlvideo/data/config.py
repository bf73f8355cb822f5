"""Reading keys of the ``data`` config group.

The yaml files of ``configs/data/`` (and ``configs/clip/`` for ``num_frames``/``sampling_rate``) are
the one place where data settings have their defaults; the code repeats none of them. A config that
lacks a key is therefore an error that names the key, not a silent fallback to a second copy of the
default that could drift from the yaml. Callers that build a config by hand start from a yaml
(``OmegaConf.load("configs/data/kinetics400.yaml")``) and override what they need, as the tests do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf.errors import MissingMandatoryValue


def require(cfg: Mapping, key: str, where: str = "data") -> Any:
    """``cfg[key]`` (``None`` included); a one-line ``ValueError`` naming ``<where>.<key>`` when the
    key is absent or still ``???``."""
    try:
        return cfg[key]
    except KeyError:  # also omegaconf's ConfigKeyError
        raise ValueError(
            f"{where}.{key} is missing from the config (configs/data/*.yaml define it)"
        ) from None
    except MissingMandatoryValue:
        raise ValueError(f"{where}.{key} is required: pass {where}.{key}=...") from None
