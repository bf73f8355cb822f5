"""Validate a composed run config before any data is read or any model is built.

Every problem becomes one :class:`ConfigError` line naming the key and the allowed values, e.g.
``optim.lr=-0.1 must be > 0``. Model-side checks (architecture keys, num_frames vs. temporal strides)
are delegated to :func:`nlvideo.models.make_spec`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from nlvideo.engine.logging import PROGRESS_MODES
from nlvideo.engine.optim import OPTIMIZERS, SCHEDULES, UNITS
from nlvideo.models import ConfigError  # the model zoo's error type, so callers catch one class

AMP_MODES = (None, "off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, DictConfig):
        for key in node:
            full = f"{prefix}{key}"
            if OmegaConf.is_missing(node, key):
                out.append(full)
            else:
                out.extend(_missing_keys(node._get_node(key), full + "."))
    return out


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


_GROUP_OVERRIDE = re.compile(r"^[+]{0,2}(?P<group>[A-Za-z_][\w/]*)(?:@[\w.]+)?=(?P<value>.*)$")


def check_group_choices(argv: list[str], config_dir: str | Path) -> None:
    """Config-group choices on the command line (``model=xyz``, ``clip=16x4``) must name a yaml of
    the group: raise one line listing the allowed ones (Hydra's own error spans a dozen lines).
    Sweeps (``model=c2d,c2d_nl5``) are checked element by element; sweep functions are left to Hydra."""
    config_dir = Path(config_dir)
    for arg in argv:
        m = _GROUP_OVERRIDE.match(arg)
        if m is None or m["group"].startswith("hydra") or not (config_dir / m["group"]).is_dir():
            continue
        group, value = m["group"], m["value"]
        if "(" in value or value in ("null", ""):
            continue
        allowed = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        for choice in (c.strip() for c in value.split(",")):
            if choice not in allowed:
                raise ConfigError(f"{group}={choice} is not allowed; choose one of: {', '.join(allowed)}")


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def validate_config(cfg: DictConfig, needs_train: bool = True) -> None:
    """Raise :class:`ConfigError` for the first invalid or missing value."""
    missing = [k for k in _missing_keys(cfg) if not k.startswith("hydra.")]
    if "data.root" in missing:
        name = cfg.data.get("name", "?")
        raise ConfigError(f"data.root is required for data={name}: pass data.root=/path/to/{name}")
    if missing:
        raise ConfigError(f"{missing[0]} is required (it has no default): pass {missing[0]}=...")
    if cfg.data.get("generate") is None and not Path(str(cfg.data.root)).expanduser().is_dir():
        name = cfg.data.get("name", "?")
        raise ConfigError(f"data.root={cfg.data.root} is not a directory: pass data.root=/path/to/{name} "
                          "(the folder holding its videos and annotation lists)")

    o, t = cfg.optim, cfg.trainer
    if needs_train:
        _need(float(o.lr) > 0, f"optim.lr={o.lr} must be > 0")
        optimizer = o.get("optimizer", "sgd")
        _need(optimizer in OPTIMIZERS,
              f"optim.optimizer={optimizer!r} is not allowed; choose one of: " + ", ".join(OPTIMIZERS))
        _need(0 <= float(o.momentum) < 1, f"optim.momentum={o.momentum} must be in [0, 1)")
        _need(float(o.weight_decay) >= 0, f"optim.weight_decay={o.weight_decay} must be >= 0")
        _need(int(o.reference_batch_size) > 0, "optim.reference_batch_size must be > 0")
        _need(o.schedule in SCHEDULES, f"optim.schedule={o.schedule!r} is not allowed; choose one of: "
              + ", ".join(SCHEDULES))
        _need(o.unit in UNITS, f"optim.unit={o.unit!r} is not allowed; choose one of: " + ", ".join(UNITS))
        _need(float(o.warmup) >= 0, f"optim.warmup={o.warmup} must be >= 0")
        _need(o.clip_grad_norm is None or float(o.clip_grad_norm) > 0,
              f"optim.clip_grad_norm={o.clip_grad_norm} must be null or > 0")
        _need(int(t.epochs) >= 1 or (t.max_iters or 0) >= 1, f"trainer.epochs={t.epochs} must be >= 1")
        _need(t.max_iters is None or int(t.max_iters) >= 1,
              f"trainer.max_iters={t.max_iters} must be null or >= 1")
        ck = t.checkpoint
        _need(int(ck.every_iters) >= 0, f"trainer.checkpoint.every_iters={ck.every_iters} must be >= 0 "
              "(0 = at epoch ends only)")
        _need(int(ck.keep_last) >= 1, f"trainer.checkpoint.keep_last={ck.keep_last} must be >= 1")
        _need(int(t.eval_period) >= 0, f"trainer.eval_period={t.eval_period} must be >= 0 (0 = never)")
    _need(t.device in DEVICES,
          f"trainer.device={t.device!r} is not allowed; choose one of: " + ", ".join(DEVICES))
    device = resolve_device(t.device)
    _need(device.type != "cuda" or torch.cuda.is_available(), "trainer.device=cuda but CUDA is not available")
    amp = t.amp if t.amp not in (False, "off") else None
    _need(amp in AMP_MODES, f"trainer.amp={t.amp!r} is not allowed; choose one of: off, bf16, fp16")
    _need(not (amp == "fp16" and device.type == "cpu"),
          "trainer.amp=fp16 needs CUDA; on CPU use trainer.amp=bf16 or trainer.amp=off")
    threads = t.get("cpu_threads")
    _need(threads is None or (isinstance(threads, int) and threads >= 1),
          f"trainer.cpu_threads={threads!r} must be null (torch's default) or an integer >= 1")
    _need(t.progress in PROGRESS_MODES, f"trainer.progress={t.progress!r} is not allowed; choose one of: "
          + ", ".join(PROGRESS_MODES))
    _need(int(cfg.data.batch_size) >= 1, f"data.batch_size={cfg.data.batch_size} must be >= 1")

    from nlvideo.models import make_spec

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    spec = make_spec(**model_cfg)
    spec.check_num_frames(int(cfg.data.num_frames))
