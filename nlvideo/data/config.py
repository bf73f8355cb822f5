"""Reading keys of the ``data`` config group (and, through the same helpers, of the others).

The yaml files of ``configs/data/`` (and ``configs/clip/`` for ``num_frames``/``sampling_rate``) are
the one place where data settings have their defaults; the code repeats none of them. A config that
lacks a key is therefore an error that names the key, not a silent fallback to a second copy of the
default that could drift from the yaml. Callers that build a config by hand start from a yaml
(``OmegaConf.load("configs/data/kinetics400.yaml")``) and override what they need, as the tests do.

Values are checked where they are read (:func:`number`, :func:`flag`, :func:`channels`): Hydra hands
``data.sampling_rate=abc`` over as the string ``'abc'`` and ``trainer.epochs=1.5`` as a float, which
``int()`` deep in the code turns into a traceback at the first batch, or silently into 1.
:func:`nlvideo.engine.config.validate_config` runs the same readers before any data is read.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

log = logging.getLogger(__name__)
_logged_caps: set[int] = set()


def require(cfg: Mapping, key: str, where: str = "data") -> Any:
    """``cfg[key]`` (``None`` included); a one-line ``ValueError`` naming ``<where>.<key>`` when the
    key is absent or still ``???``."""
    try:
        return cfg[key]
    except KeyError:  # also omegaconf's ConfigKeyError
        yamls = f"configs/{where.split('.')[0]}/*.yaml" if where else "configs/config.yaml"
        raise ValueError(f"{full_key(where, key)} is missing from the config ({yamls} define it)") from None
    except MissingMandatoryValue:
        raise ValueError(f"{full_key(where, key)} is required: pass {full_key(where, key)}=...") from None


def full_key(where: str, key: str) -> str:
    """``data.sampling_rate``; ``where=""`` for a top-level key (``seed``)."""
    return f"{where}.{key}" if where else key


def shown(value: Any) -> str:
    """A config value as the user would type it back: strings quoted (``'abc'``), the rest as is."""
    return repr(value) if isinstance(value, str) else str(value)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(cfg: Mapping, key: str, where: str = "data", *, integer: bool = False, above: float | None = None,
           at_least: float | None = None, below: float | None = None, optional: bool = False) -> Any:
    """``cfg[key]`` as a finite number (``integer``: a whole one, ``2.0`` included, returned as int) that
    is ``> above``, ``>= at_least`` and ``< below`` where given; ``optional``: null is allowed and returned
    as None. Anything else is a one-line ``ValueError`` such as ``data.sampling_rate=0 must be an integer
    >= 1``."""
    value = require(cfg, key, where)
    if value is None and optional:
        return None
    ok = _is_real(value) and (not integer or float(value).is_integer())
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    ok = ok and (below is None or value < below)
    if not ok:
        bounds = [f"{op} {b:g}" for op, b in ((">", above), (">=", at_least), ("<", below)) if b is not None]
        what = ("null or " if optional else "") + ("an integer" if integer else "a finite number")
        if bounds:
            what += " " + " and ".join(bounds)
        raise ValueError(f"{full_key(where, key)}={shown(value)} must be {what}")
    return int(value) if integer else float(value)


def flag(cfg: Mapping, key: str, where: str = "data") -> bool:
    """``cfg[key]`` as a bool; ``train_hflip=no`` arrives as the string 'no', which ``bool()`` makes True."""
    value = require(cfg, key, where)
    if not isinstance(value, bool):
        raise ValueError(f"{full_key(where, key)}={shown(value)} must be true or false")
    return value


def choice(cfg: Mapping, key: str, allowed: Sequence[Any], where: str = "data") -> Any:
    """``cfg[key]`` if it is one of ``allowed``, else one line listing them."""
    value = require(cfg, key, where)
    if value not in allowed:
        raise ValueError(f"{full_key(where, key)}={shown(value)} is not allowed; choose one of: "
                         + ", ".join(str(a) for a in allowed))
    return value


def channels(cfg: Mapping, key: str, positive: bool = False) -> tuple[float, ...]:
    """``data.mean`` / ``data.std``: one finite number, or one per RGB channel (``positive``: each > 0, a
    zero std divides every pixel by zero)."""
    value = require(cfg, key)
    values = [value] if not isinstance(value, Sequence) or isinstance(value, str) else list(value)
    if len(values) not in (1, 3) or not all(_is_real(v) and (v > 0 or not positive) for v in values):
        raise ValueError(f"data.{key}={shown(value)} must be a finite number{' > 0' if positive else ''} "
                         "or a list of 3 (one per RGB channel)")
    return tuple(float(v) for v in values)


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (a SLURM allocation, ``taskset``), not the
    machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        return os.cpu_count() or 1


def workers_up_to(default: int) -> int:
    """``num_workers: ${workers_up_to:8}`` in the data yamls: the default number of loader workers, or
    one per available CPU when there are fewer. Eight decoding processes on a 2-core laptop only contend
    (and torch warns on every loader); an explicit ``data.num_workers=N`` replaces the whole expression
    and is used as given. A cap is logged once per process."""
    cpus = available_cpus()
    if cpus >= default:
        return default
    if default not in _logged_caps:
        _logged_caps.add(default)
        log.info("data.num_workers: %d loader workers, not the default %d: only %d CPU(s) are available to "
                 "this process (pass data.num_workers=N to choose)", cpus, default, cpus)
    return cpus


OmegaConf.register_new_resolver("workers_up_to", workers_up_to, replace=True)
