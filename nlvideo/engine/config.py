"""Validate a composed run config before any data is read or any model is built.

Every problem becomes one :class:`ConfigError` line naming the key and the allowed values, e.g.
``optim.lr=-0.1 must be > 0``. Model-side checks (architecture keys, num_frames vs. temporal strides)
are delegated to :func:`nlvideo.models.make_spec`.
"""

from __future__ import annotations

import difflib
import re
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from nlvideo.data.config import choice, number, shown
from nlvideo.data.dataset import check_data_config, clips_per_video
from nlvideo.data.loader import videos_per_step
from nlvideo.engine.logging import PROGRESS_MODES
from nlvideo.engine.optim import OPTIMIZERS, SCHEDULES, UNITS, lr_factor_fn
from nlvideo.engine.plan import check_multigrid, long_cycle_frames
from nlvideo.models import ConfigError  # the model zoo's error type, so callers catch one class

AMP_MODES = (None, "off", "auto", "bf16", "fp16")
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
        for name in (c.strip() for c in value.split(",")):
            if name not in allowed:
                raise ConfigError(f"{group}={name} is not allowed; choose one of: {', '.join(allowed)}")


def check_command_line(argv: list[str], config_dir: str | Path, config_name: str = "config") -> None:
    """Everything about the command line that Hydra would refuse with a dozen lines and exit status 1,
    as one :class:`ConfigError` line: a group choice that is no yaml (:func:`check_group_choices`), an
    override Hydra cannot parse, a key the config does not have (``trainer.epoch=2``: naming the
    closest, ``trainer.epochs``). Keys added with ``+``/``++`` must exist in the config too: Hydra's
    own hint for a typo is to add it, and ``+trainer.epoch=2`` would then be read by nothing."""
    check_group_choices(argv, config_dir)
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    parser, config_dir = OverridesParser.create(), Path(config_dir)
    overrides = []
    for line in get_args_parser().parse_known_args(argv)[0].overrides:
        try:
            overrides += parser.parse_overrides([line])
        except HydraException as exc:
            reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{line}: cannot be parsed ({reason}); see "
                              "https://hydra.cc/docs/advanced/override_grammar/basic/") from None
    groups = [o for o in overrides if (config_dir / o.key_or_group).is_dir()]
    keys = [o for o in overrides if o not in groups and not o.key_or_group.startswith("hydra")]
    if not keys:
        return
    configs = [_compose(config_dir, config_name, choice) for choice in _group_choices(groups)]
    if not configs or None in configs:  # Hydra will say why it cannot compose them
        return
    for o in keys:
        present = any(_has_key(cfg, o.key_or_group) for cfg in configs)
        if o.type == OverrideType.ADD and present:
            raise ConfigError(f"{o.input_line}: {o.key_or_group} exists already; set it with "
                              f"{o.input_line.lstrip('+')}")
        if not present:
            hint = _closest(configs[0], o.key_or_group)
            raise ConfigError(f"{o.input_line}: {o.key_or_group} is not a config key{hint} (every key: "
                              "--cfg job)")


def script_config_name(script: str, config_dir: str | Path) -> str:
    """The primary config of an entry script: the yaml named after it (``predict.py`` ->
    ``predict.yaml``, ``scripts/export.py`` -> ``export.yaml``), else ``config`` (train.py, eval.py)."""
    name = Path(script).stem
    return name if (Path(config_dir) / f"{name}.yaml").is_file() else "config"


def _group_choices(groups: list) -> list[list[str]]:
    from hydra.core.override_parser.types import ValueType

    """Group overrides to compose with: the command's, and for a sweep (``model=c2d,i3d``) one list per
    choice of each swept group (a key need exist under one of them). [] for sweeps that list no choices
    (``range()``, ``glob()``): Hydra then checks the keys."""
    plain = [o.input_line for o in groups if not o.is_sweep_override()]
    swept = [o for o in groups if o.is_sweep_override()]
    if any(o.value_type != ValueType.SIMPLE_CHOICE_SWEEP for o in swept):
        return []
    firsts = [f"{o.get_key_element()}={next(o.sweep_string_iterator())}" for o in swept]
    out = [plain + firsts]
    for i, o in enumerate(swept):
        out += [plain + firsts[:i] + [f"{o.get_key_element()}={v}"] + firsts[i + 1:]
                for v in list(o.sweep_string_iterator())[1:]]
    return out


def _compose(config_dir: Path, config_name: str, group_overrides: list[str]) -> DictConfig | None:
    """The config the command composes, without its key overrides; None if Hydra cannot compose it
    (then Hydra itself reports why)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(str(config_dir.resolve()), version_base="1.3"):
            return compose(config_name, overrides=group_overrides)
    except (HydraException, ValueError):
        return None


def _has_key(cfg: DictConfig, dotted: str) -> bool:
    node: Any = cfg
    for part in dotted.split("."):
        if isinstance(node, DictConfig) and part in set(node.keys()):  # ``in node``: False for ???
            node = node._get_node(part)
        elif OmegaConf.is_list(node) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False
    return True


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, DictConfig):
        for key in node:
            full = f"{prefix}{key}"
            out += [full, *_all_keys(node._get_node(key), full + ".")]
    return out


def _closest(cfg: DictConfig, key: str) -> str:
    """``; did you mean <key>?`` for the config's key most like ``key``, else ""."""
    near = difflib.get_close_matches(key, [k for k in _all_keys(cfg) if not k.startswith("hydra")], n=1,
                                     cutoff=0.6)
    return f"; did you mean {near[0]}?" if near else ""


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _existing_file(t: DictConfig, key: str, hint: str) -> None:
    """``trainer.<key>`` (a checkpoint path) must exist now, not after the data was read."""
    value = t.get(key)
    if value not in (None, False, "null", "auto") and not Path(str(value)).is_file():
        raise ConfigError(f"trainer.{key}={value} does not exist{hint}")


def _run_dir_has_checkpoints() -> bool:
    """Whether this job's run dir already holds checkpoints: then ``trainer.resume=PATH`` is a rerun of
    the command that started the run, and PATH may since have been rotated away (the run goes on from
    its newest checkpoint). Ranks > 0 (whose run dir is rank 0's, known later) leave it to rank 0."""
    from hydra.core.hydra_config import HydraConfig

    from nlvideo.engine.checkpoint import list_checkpoints
    from nlvideo.engine.distributed import env_rank

    if env_rank() != 0:
        return True
    if not HydraConfig.initialized():
        return False
    return bool(list_checkpoints(Path(HydraConfig.get().runtime.output_dir) / "checkpoints"))


def _check_signals(names: Any) -> None:
    """``trainer.preempt_signals``: names of signals a handler can be installed for."""
    usable = set(signal.Signals.__members__) - {"SIGKILL", "SIGSTOP"}
    for name in names if isinstance(names, Sequence) and not isinstance(names, str) else [names]:
        if name not in usable:
            raise ConfigError(f"trainer.preempt_signals: {shown(name)} is not a signal that can be caught; "
                              "use names such as SIGTERM, SIGUSR1, SIGUSR2")


def _check_optim(o: DictConfig) -> None:
    number(o, "lr", "optim", above=0)
    choice(o, "optimizer", OPTIMIZERS, "optim")
    number(o, "momentum", "optim", at_least=0, below=1)
    number(o, "weight_decay", "optim", at_least=0)
    number(o, "reference_batch_size", "optim", integer=True, at_least=1)
    choice(o, "schedule", SCHEDULES, "optim")
    choice(o, "unit", UNITS, "optim")
    number(o, "warmup", "optim", at_least=0)
    number(o, "warmup_start_factor", "optim", above=0)
    number(o, "gamma", "optim", above=0)
    number(o, "final_lr_factor", "optim", at_least=0)
    number(o, "clip_grad_norm", "optim", above=0, optional=True)
    _need(isinstance(o.steps, Sequence) and not isinstance(o.steps, str),
          f"optim.steps={shown(o.steps)} must be a list of numbers")
    for i, step in enumerate(o.steps):
        number({f"steps[{i}]": step}, f"steps[{i}]", "optim", at_least=0)


def _check_training(t: DictConfig) -> None:
    max_iters = number(t, "max_iters", "trainer", integer=True, at_least=1, optional=True)
    number(t, "epochs", "trainer", integer=True, at_least=0 if max_iters else 1)
    ck = t.checkpoint
    number(ck, "every_iters", "trainer.checkpoint", integer=True, at_least=0)
    number(ck, "keep_last", "trainer.checkpoint", integer=True, at_least=1)
    number(t, "eval_period", "trainer", integer=True, at_least=0)
    number(t.precise_bn, "num_batches", "trainer.precise_bn", integer=True, at_least=1)
    number(t, "preempt_exit_code", "trainer", integer=True, at_least=0, below=256)
    number(t, "dist_timeout_min", "trainer", above=0)
    _check_signals(t.preempt_signals)
    if not _run_dir_has_checkpoints():  # else the run's own newest may win (resume_rules)
        _existing_file(t, "resume", ": pass a checkpoint file, trainer.resume=auto (the newest in the run "
                       "dir) or trainer.resume=null")
    _existing_file(t, "init_weights", "")


def validate_config(cfg: DictConfig, needs_train: bool = True) -> None:
    """Raise :class:`ConfigError` for the first invalid or missing value.

    Every key is checked for its type and range, not only for known bad values: a string where a number
    belongs, ``inf``, ``1.5`` for a count, a zero std all failed later (a traceback at the first batch)
    or not at all (``int(1.5)`` is 1, a sampling rate of 0 repeats one frame). ``needs_train=False``
    (eval.py) skips the optimiser and the keys only training reads. The readers of
    :mod:`nlvideo.data.config` raise ValueError (the data package knows no ConfigError); each becomes
    one ConfigError line here."""
    try:
        _validate(cfg, needs_train)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _validate(cfg: DictConfig, needs_train: bool) -> None:
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

    t = cfg.trainer
    if needs_train:
        _check_optim(cfg.optim)
        _check_training(t)
        check_multigrid(cfg)
    number(cfg, "seed", "", integer=True)
    _need(t.device in DEVICES,
          f"trainer.device={t.device!r} is not allowed; choose one of: " + ", ".join(DEVICES))
    device = resolve_device(t.device)
    _need(device.type != "cuda" or torch.cuda.is_available(), "trainer.device=cuda but CUDA is not available")
    amp = t.amp if t.amp not in (False, "off") else None
    _need(amp in AMP_MODES, f"trainer.amp={t.amp!r} is not allowed; choose one of: auto, off, bf16, fp16")
    _need(not (amp == "fp16" and device.type == "cpu"),
          "trainer.amp=fp16 needs CUDA; on CPU use trainer.amp=bf16 or trainer.amp=off")
    number(t, "cpu_threads", "trainer", integer=True, at_least=1, optional=True)
    number(t, "log_period", "trainer", integer=True, at_least=1)
    period = t.get("sync_period", "auto")
    _need(period == "auto" or (type(period) is int and period >= 1),
          f"trainer.sync_period={shown(period)} must be auto or an integer >= 1")
    choice(t, "progress", PROGRESS_MODES, "trainer")
    check_data_config(cfg.data)
    if needs_train:  # evaluation reads views, whatever data.clips_per_video says
        videos_per_step(int(cfg.data.batch_size), clips_per_video(cfg.data))

    from nlvideo.models import make_spec

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    spec = make_spec(**model_cfg)
    spec.check_num_frames(int(cfg.data.num_frames))
    stride = spec.temporal_stride
    for frames in long_cycle_frames(cfg) if needs_train else []:
        _need(frames >= stride and frames % stride == 0,
              f"trainer.multigrid.long_cycle_factors: a grid of {frames} of data.num_frames="
              f"{cfg.data.num_frames} frames does not fit model.input_variant={spec.input_variant}: frames "
              f"must be a positive multiple of its temporal stride {stride}")


def check_warmup(cfg_optim, iters_per_epoch: int, total_iters: int, plan=None) -> None:
    """Refuse a warm-up that lasts the whole run (e.g. ``trainer.epochs=1`` with a 1-epoch warm-up): the
    rate would only ramp, and towards the schedule's value at the warm-up's end, which for the cosine
    schedule is its final value: the whole run would train at learning rate 0. Under multigrid the run
    is counted in the plan's epochs."""
    warmup = float(cfg_optim.get("warmup", 0.0) or 0.0)
    unit = cfg_optim.get("unit", "epoch")
    total = total_iters / iters_per_epoch if unit == "epoch" else float(total_iters)
    if plan is not None and plan.varies:
        total = plan.epochs_at(total_iters)
    if warmup <= 0 or warmup < total:
        return
    factor = lr_factor_fn(cfg_optim, iters_per_epoch, total_iters, plan)
    first, last = f"{factor(0):.3g}", f"{factor(total_iters - 1):.3g}"
    rate = f"stay at {first}" if first == last else f"only ramp from {first} to {last}"
    raise ConfigError(f"optim.warmup={warmup:g} {unit}(s) covers the whole run ({total:g} {unit}(s), "
                      f"{total_iters} iterations): the rate would {rate} x optim.lr; lower optim.warmup "
                      "or train longer")
