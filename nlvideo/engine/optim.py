"""SGD with (Nesterov) momentum, parameter groups without weight decay, warmup + step/cosine schedule.

The schedule is a pure function of the global iteration, stepped once per iteration. Its milestones
(``warmup``, ``steps``) are expressed in ``optim.unit``: ``epoch`` (fractional epochs, PySlowFast
style) or ``iter`` (the paper's Kinetics recipe: 400k iterations, /10 at 150k and 300k).
``optim.per_iteration: false`` holds the rate constant within an epoch (epoch-based schedule).

The configured ``optim.lr`` is the rate for a global batch of ``optim.reference_batch_size`` (the
paper: 0.01 for 64 clips on 8 GPUs); with ``optim.linear_scaling`` it is multiplied by
``global_batch / reference_batch_size``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "constant")
UNITS = ("epoch", "iter")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def scaled_lr(cfg_optim, global_batch_size: int) -> float:
    lr = float(cfg_optim.lr)
    if cfg_optim.get("linear_scaling", True):
        lr *= global_batch_size / float(cfg_optim.reference_batch_size)
    return lr


def param_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float | None = 0.0,
                 bias_weight_decay: float | None = 0.0) -> list[dict]:
    """Split parameters into decay / no-decay groups. ``None`` means "same as ``weight_decay``"."""
    norm_wd = weight_decay if norm_weight_decay is None else norm_weight_decay
    bias_wd = weight_decay if bias_weight_decay is None else bias_weight_decay
    groups: dict[float, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, _NORM_TYPES):
                wd = norm_wd
            elif name == "bias":
                wd = bias_wd
            else:
                wd = weight_decay
            groups.setdefault(float(wd), []).append(p)
    return [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()]


def build_optimizer(model: nn.Module, cfg_optim, global_batch_size: int) -> torch.optim.Optimizer:
    wd = float(cfg_optim.weight_decay)
    groups = param_groups(
        model,
        wd,
        norm_weight_decay=None if cfg_optim.get("bn_weight_decay", False) else 0.0,
        bias_weight_decay=None if cfg_optim.get("bias_weight_decay", False) else 0.0,
    )
    lr = scaled_lr(cfg_optim, global_batch_size)
    if cfg_optim.get("optimizer", "sgd") == "adamw":  # small models from scratch (configs/optim/adamw.yaml)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg_optim.get("betas", (0.9, 0.999))))
    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=float(cfg_optim.momentum),
        nesterov=bool(cfg_optim.nesterov) and float(cfg_optim.momentum) > 0,
        dampening=0.0,
    )


def lr_factor_fn(cfg_optim, iters_per_epoch: int, total_iters: int, plan=None) -> Callable[[int], float]:
    """Multiplier of the base rate as a function of the global iteration (0-based).

    A multigrid ``plan`` (:class:`~nlvideo.engine.plan.TrainPlan` whose steps vary) sets the clock
    instead: progress in the plan's (fractional) epochs, over the plan's length, with the plan's own
    milestones (``plan.lr_steps``: ``optim.steps`` stretched, or the long cycle's stages), the warm-up
    as configured (as PySlowFast), and the rate of each epoch scaled with its batch (``lr_scale``)."""
    warmup = float(cfg_optim.get("warmup", 0.0) or 0.0)
    steps = [float(s) for s in (cfg_optim.get("steps") or [])]
    per_iteration = bool(cfg_optim.get("per_iteration", True))
    if plan is not None and plan.varies:
        curve = schedule_curve(cfg_optim, plan.epochs_at(total_iters), warmup, plan.lr_steps or [])

        def on_plan(iteration: int) -> float:
            epoch, _ = plan.locate(iteration)
            return curve(plan.epochs_at(iteration, per_iteration)) * plan.shape(epoch).lr_scale

        return on_plan
    per_iter = 1.0 / iters_per_epoch if cfg_optim.get("unit", "epoch") == "epoch" else 1.0
    curve = schedule_curve(cfg_optim, total_iters * per_iter, warmup, steps)

    def factor(iteration: int) -> float:
        if per_iteration:
            return curve(iteration * per_iter)
        return curve((iteration // iters_per_epoch) * iters_per_epoch * per_iter)  # constant within an epoch

    return factor


def schedule_curve(cfg_optim, total: float, warmup: float, steps: list[float]) -> Callable[[float], float]:
    """The rate multiplier at time ``t`` (in ``optim.unit``s) of a run ``total`` long: step / cosine /
    constant, after a linear warm-up from ``warmup_start_factor`` x the rate at its end (PySlowFast's)."""
    start = float(cfg_optim.get("warmup_start_factor", 0.1))
    steps = sorted(steps)
    gamma = float(cfg_optim.get("gamma", 0.1))
    final = float(cfg_optim.get("final_lr_factor", 0.0))
    schedule = cfg_optim.get("schedule", "cosine")

    def main(t: float) -> float:
        if schedule == "step":
            return gamma ** sum(t >= s for s in steps)
        if schedule == "cosine":
            return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(t / max(total, 1e-12), 1.0)))
        return 1.0

    def curve(t: float) -> float:
        f = main(t)
        if warmup > 0 and t < warmup:
            end = main(warmup)
            f = start * end + (end - start * end) * (t / warmup)
        return f

    return curve


def build_scheduler(optimizer: torch.optim.Optimizer, cfg_optim, iters_per_epoch: int,
                    total_iters: int, plan=None) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration; its ``last_epoch`` is the global iteration."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor_fn(cfg_optim, iters_per_epoch, total_iters, plan))


def restore_schedule(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                     saved: dict) -> bool:
    """Resume the schedule at the checkpoint's iteration with the *configured* base rates.

    The schedule is a pure function of the iteration, so only its position (``last_epoch``) is taken
    from ``saved``; the base rates stay those of this run's config, so a rerun with a lower
    ``optim.lr`` after a NaN stop continues at the lower rate. Call after ``optimizer.load_state_dict``.
    Returns True when the configured rates differ from the checkpoint's."""
    configured = list(scheduler.base_lrs)
    scheduler.load_state_dict(saved)
    changed = scheduler.base_lrs != configured
    scheduler.base_lrs = configured
    for group, base, fn in zip(optimizer.param_groups, configured, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * fn(scheduler.last_epoch)
    return changed


def clip_gradients(model: nn.Module, max_norm: float | None) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm`` when it is set. Returns the norm before clipping
    either way, for logging; without clipping that costs one reduction per parameter (2 % of a forward
    and backward of i3d_nl5 on CPU at width 8, 1.5 % at width 64). A tensor: no host sync per step."""
    if max_norm:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    norms = [torch.linalg.vector_norm(p.grad) for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
