"""The training job, top to bottom (``train.py`` is its Hydra entry point; docs/training.md the guide).

    train               check config -> hold the run dir's lock (run_lock; the job's log handler took it
                        before Hydra wrote there) -> data (same on every rank) -> plan (every step's
                        grid and batch: nlvideo.engine.plan; multigrid) -> Loop -> resume -> epochs
      build_loop        model (+ fine-tuning weights, split BN or SyncBN, DDP, compile), optimizer,
                        schedule, scaler
      start_or_resume   newest valid checkpoint of the run dir (or trainer.resume=PATH) -> TrainState;
                        refuses what would mix two runs (resume_rules)
      run_epochs        per epoch: train_one_epoch, then validate, then an epoch-end checkpoint
        train_one_epoch   the steps of one epoch, logging and mid-epoch checkpoints
          train_step        forward, loss, backward, update; nothing read back from the device
          sync_steps        every trainer.sync_period steps: one all-reduce of the steps' loss, hits,
                            stop signals and bad videos; the NaN check
        validate          precise BN, multi-view validation, best metric, metrics.json, metrics.csv,
                          the attention of one NL block (TensorBoard)
      save              a checkpoint of the Loop's weights and the TrainState (collective; rank 0 writes)

What stays fixed while training runs is one :class:`Loop`; where the run stands (epoch, step,
iteration, best, RNG) is one :class:`~nlvideo.engine.state.TrainState`, which is what a checkpoint
restores. Crash-test hooks (``trainer.debug.*``) live in :mod:`nlvideo.engine.faults`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from nlvideo.data.annotations import output_order
from nlvideo.data.dataset import class_usage_warning, split_overlap_warning
from nlvideo.data.loader import build_loader
from nlvideo.data.sampler import GridBatchSampler
from nlvideo.engine import checkpoint as ckpt_io
from nlvideo.engine import distributed as du
from nlvideo.engine.bad_videos import BadVideoReport
from nlvideo.engine.cli import resume_command
from nlvideo.engine.config import ConfigError, check_warmup, validate_config
from nlvideo.engine.evaluate import evaluate_dataset, write_json
from nlvideo.engine.faults import FaultInjection
from nlvideo.engine.logging import (
    Progress,
    TensorBoard,
    gpu_memory_gib,
    name_run,
    setup_rank_logging,
    tensorboard_index,
    write_history_row,
)
from nlvideo.engine.optim import build_optimizer, build_scheduler, clip_gradients, restore_schedule
from nlvideo.engine.plan import TrainPlan, build_plan, grid_spec, log_plan
from nlvideo.engine.precise_bn import update_bn_stats
from nlvideo.engine.preemption import PreemptionHandler
from nlvideo.engine.resume_rules import check_resumable, checkpoint_to_resume, lr_change
from nlvideo.engine.run_lock import RunDirBusy, RunDirLock
from nlvideo.engine.runtime import (
    Forward,
    amp_mode,
    build_model,
    build_split,
    dataset_fingerprint,
    decide_on_main,
    make_forward,
    model_stats,
    run_dir_of_this_job,
    setup_runtime,
    task_overrides,
)
from nlvideo.engine.state import Meter, TrainState
from nlvideo.models import NonLocalBlock, apply_pretrained_to_config
from nlvideo.models.pretrained import load_weights, read_checkpoint, weights_of
from nlvideo.models.split_bn import split_batch_norm
from nlvideo.models.stats import meta_copy

log = logging.getLogger("nlvideo.train")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, permissions)."""


@dataclass
class Loop:
    """The training loop's fixed context: what every step and checkpoint uses and never replaces."""

    cfg: DictConfig
    net: torch.nn.Module  # the bare model: state dict, BN statistics, validation
    model: torch.nn.Module  # what a step runs: ``net`` or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    forward: Forward
    multi_label: bool
    per_rank_batch: int
    iters_per_epoch: int  # steps of an epoch of the target grid (a standard epoch)
    total_iters: int
    plan: TrainPlan  # grid and batch of every step (multigrid: they change; nlvideo.engine.plan)
    sync_period: int = 1  # steps between the host's reads of the device (trainer.sync_period)
    run_dir: Path | None = None
    meta: dict = field(default_factory=dict)  # stored in every checkpoint: config, overrides, classes
    tb: TensorBoard = field(default_factory=lambda: TensorBoard(None, enabled=False))
    preemption: PreemptionHandler = field(default_factory=lambda: PreemptionHandler([], interactive=False))
    bad_videos: BadVideoReport = field(default_factory=BadVideoReport)
    faults: FaultInjection = field(default_factory=FaultInjection)

    @property
    def global_batch(self) -> int:
        return self.per_rank_batch * du.get_world_size()

    def num_epochs(self, state: TrainState) -> int:
        """Epochs of the whole run, counting from where ``state`` stands. A run stopped by
        ``trainer.max_iters`` inside an epoch, then resumed with a larger one, goes on with full epochs
        from the next one; training always ends at ``total_iters`` iterations."""
        left, epoch = self.total_iters - state.iteration + state.step, state.epoch
        while left > 0:
            left, epoch = left - self.plan.steps(epoch), epoch + 1
        return epoch

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.run_dir or ".") / "checkpoints"

    def last_checkpoint(self) -> str:
        """The newest checkpoint file of the run dir, for error messages ("none" if there is none)."""
        found = ckpt_io.list_checkpoints(self.ckpt_dir)
        return str(found[-1]) if found else "none"

    def steps_in_epoch(self, state: TrainState) -> int:
        """Steps of ``state.epoch``: a whole epoch, or what is left of ``total_iters``."""
        return min(self.plan.steps(state.epoch), state.step + self.total_iters - state.iteration)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels)


def train(cfg: DictConfig) -> int:
    """Run (or resume) one training job; returns the process exit status."""
    validate_config(cfg)  # every key checked before any data is read or process group formed
    info = du.init_distributed(float(cfg.trainer.dist_timeout_min), str(cfg.trainer.device))
    setup_rank_logging(info.rank)
    if apply_pretrained_to_config(cfg, task_overrides()):  # the weights' model options, normalisation
        validate_config(cfg)
    run_dir = run_dir_of_this_job()
    lock = RunDirLock(run_dir, wait=bool(cfg.trainer.wait_for_run_dir))
    decide_on_main(lambda: hold(lock))  # one writer per run dir, for the whole run
    try:
        device = setup_runtime(cfg, info.rank)
        per_rank_batch = int(cfg.data.batch_size)
        log.info("run dir %s | %d process(es) (%s) | device %s | %d CPU thread(s) | global batch %d",
                 run_dir, info.world_size, info.backend or "single", device, torch.get_num_threads(),
                 per_rank_batch * info.world_size)

        # Data first: num_classes and multi_label come from the dataset itself.
        train_ds, train_sampler, target_loader = build_split(cfg, "train", True, per_rank_batch)
        if train_ds.clips_per_item > 1:
            log.info("data.clips_per_video=%d: %d clips per video, %d videos per step per process",
                     train_ds.clips_per_item, train_ds.clips_per_item, target_loader.batch_size)
        val = build_split(cfg, "val", False, per_rank_batch) if int(cfg.trainer.eval_period) > 0 else None
        check_same_data(cfg, train_ds, val[0] if val else None)
        log_data(train_ds, val[0] if val else None)
        plan = build_plan(cfg, train_sampler.per_rank, target_loader.batch_size)  # in sampler items
        train_loader = planned_loader(cfg, plan, train_ds, train_sampler, target_loader)
        loop = build_loop(cfg, device, run_dir, train_ds, plan)
        state = start_or_resume(loop)
        write_run_files(loop, state, train_ds)
        return run_epochs(loop, state, train_sampler, train_loader, val, target_loader)
    finally:
        lock.release()


def hold(lock: RunDirLock) -> None:
    try:
        lock.acquire()
    except RunDirBusy as exc:
        raise ConfigError(str(exc)) from None


def check_same_data(cfg: DictConfig, *datasets) -> None:
    """Every rank must read the same lists (a node with other files would end its epoch early and leave
    the others waiting in a collective forever): compare fingerprints once, fail with one line."""
    if du.get_world_size() == 1:
        return
    mine = [dataset_fingerprint(ds, str(cfg.data.root)) for ds in datasets if ds is not None]
    for rank, theirs in enumerate(du.all_gather_object(mine)):
        if theirs != mine:
            raise ConfigError(f"rank {rank} reads other data than rank {du.get_rank()} "
                              f"(videos, fingerprint: {theirs} vs {mine}): every node must see the same "
                              "lists and classes under data.root")


def log_data(train_ds, val_ds) -> None:
    """What data the run found, before any of it is read, and a warning when the labels use far
    fewer classes than the classifier has (e.g. labels 0/1 with data.num_classes=400), or when
    validation videos are training videos too."""
    for split, ds in (("train", train_ds), ("val", val_ds)):
        if ds is not None:
            sources = sorted({file for file, _, line in (r.source.rpartition(":") for r in ds.records)
                              if file and line.isdigit()})  # "list:line"; folder formats have none
            log.info("%s: %d videos, %d classes (%s)%s", split, ds.num_videos, ds.num_classes,
                     "multi-label" if ds.multi_label else "single-label",
                     f" from {', '.join(sources)}" if sources else "")
    unused = class_usage_warning(train_ds)
    if unused and du.is_main_process():
        log.warning("%s", unused)
    overlap = split_overlap_warning(train_ds, val_ds) if val_ds is not None else None
    if overlap and du.is_main_process():
        log.warning("%s", overlap)


def planned_loader(cfg: DictConfig, plan: TrainPlan, train_ds, sampler, target_loader):
    """The training loader: ``target_loader`` (one grid and batch), or under multigrid one whose batches
    follow ``plan`` (:class:`~nlvideo.data.sampler.GridBatchSampler`), each item decoded at its step's
    grid (``train_ds.grid_specs``). ``target_loader`` stays the target grid's, for precise BN."""
    if not plan.varies:
        return target_loader
    log_plan(plan, train_ds.clips_per_item)
    target = plan.grids[0]
    train_ds.grid_specs = [grid_spec(train_ds.spec, target, grid) for grid in plan.grids]
    return build_loader(train_ds, cfg.data, sampler, int(cfg.data.batch_size),
                        batch_sampler=GridBatchSampler(sampler, plan))


def build_loop(cfg: DictConfig, device: torch.device, run_dir: Path, train_ds, plan: TrainPlan) -> Loop:
    """Model (fine-tuning weights, split BN, SyncBN, DDP, compile), optimizer, schedule and scaler of this
    job, training on ``plan``."""
    t, info = cfg.trainer, du.info()
    per_rank_batch = int(cfg.data.batch_size)
    iters_per_epoch = plan.target_steps
    if iters_per_epoch == 0 or any(plan.steps(e) == 0 for e in range(plan.num_epochs)):
        k = train_ds.clips_per_item
        largest = k * max(items for shape in plan.epochs for _, items in shape.cycle)
        under = f"(up to {largest} per process under trainer.multigrid) " if plan.varies else ""
        raise ConfigError(f"data.batch_size={per_rank_batch} x {info.world_size} process(es) {under}is "
                          f"larger than the training split ({len(train_ds) * k} clips): lower "
                          "data.batch_size")
    total_iters = plan.total_iters(t.max_iters)
    check_warmup(cfg.optim, iters_per_epoch, total_iters, plan)

    net = build_model(cfg, device)
    if t.init_weights:  # fine-tuning (e.g. Charades from Kinetics): weights only, new classifier
        load_weights_for_finetuning(net, str(t.init_weights), list(train_ds.class_names))
    stats = model_stats(net, cfg) if info.is_main else {}
    log_nonlocal_path(net)
    if plan.varies:
        check_grids_fit(net, plan, cfg)
        net = split_batch_norm_for(net, plan, cfg)
    elif info.enabled and t.sync_bn and device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    elif info.enabled and t.sync_bn:
        log.info("trainer.sync_bn: SyncBatchNorm needs CUDA; on %s BN statistics stay per process", device)
    model = net
    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(net, cfg.optim, per_rank_batch * info.world_size)
    multi_label = bool(train_ds.multi_label)
    meta = {"config": OmegaConf.to_container(cfg, resolve=True), "overrides": task_overrides(),
            "class_names": list(train_ds.class_names), "multi_label": multi_label,
            "model_name": cfg.model.name, "model_stats": stats,
            "plan": plan.fingerprint() if plan.varies else None}
    return Loop(
        cfg=cfg, net=net, model=model, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.optim, iters_per_epoch, total_iters, plan),
        scaler=torch.amp.GradScaler(device.type) if amp_mode(t.amp, device) == "fp16" else None,
        forward=make_forward(cfg, device), multi_label=multi_label, per_rank_batch=per_rank_batch,
        iters_per_epoch=iters_per_epoch, total_iters=total_iters, plan=plan,
        sync_period=sync_period(t, device), run_dir=run_dir, meta=meta,
        tb=TensorBoard(str(run_dir / "tb"), enabled=bool(t.tensorboard)),
        preemption=PreemptionHandler(preempt_signals(cfg)), faults=FaultInjection(t.debug))


def check_grids_fit(net: torch.nn.Module, plan: TrainPlan, cfg: DictConfig) -> None:
    """Run a copy of the model on the meta device (no compute) at every grid of the plan: a grid too
    small for it (e.g. a non-local block's sub-sampling on a 1x1 map) is one line now, not a traceback
    at its first step."""
    meta = meta_copy(net)
    for grid in plan.grids[1:]:
        try:
            with torch.no_grad():
                meta(torch.empty(1, 3, grid.frames, grid.crop, grid.crop, device="meta"))
        except RuntimeError as exc:
            raise ConfigError(f"trainer.multigrid: the grid of {grid.frames} frames x {grid.crop}² "
                              f"(data.num_frames={cfg.data.num_frames} x data.train_crop_size="
                              f"{cfg.data.train_crop_size}, scaled by the cycle factors) is too small for "
                              f"model={cfg.model.name} ({str(exc).splitlines()[0][:120]}): use larger "
                              "factors or a larger data.train_crop_size") from None


def split_batch_norm_for(net: torch.nn.Module, plan: TrainPlan, cfg: DictConfig) -> torch.nn.Module:
    """Multigrid's batch norm: statistics over groups of ``bn_base_size`` clips per process whatever
    the step's batch (:mod:`nlvideo.models.split_bn`)."""
    base, t = int(cfg.trainer.multigrid.bn_base_size), cfg.trainer
    log.info("multigrid: batch norm statistics over groups of %d clips per process "
             "(trainer.multigrid.bn_base_size)%s", base,
             "; trainer.sync_bn is not used" if du.info().enabled and t.sync_bn else "")
    if int(cfg.data.batch_size) < base:
        log.warning("multigrid: data.batch_size=%d clips per process is below trainer.multigrid."
                    "bn_base_size=%d: steps at the target grid normalise over %d clips, the coarse ones over "
                    "%d", int(cfg.data.batch_size), base, int(cfg.data.batch_size), base)
    return split_batch_norm(net, base)


def log_nonlocal_path(net: torch.nn.Module) -> None:
    """Log, at the first training forward, the computation path the model's first non-local block takes
    and why (:meth:`~nlvideo.models.NonLocalBlock.path_for`: it depends on the device, dtype, autocast
    and ``model.nonlocal.impl``; every block of a run takes the same one)."""
    block = next((m for m in net.modules() if isinstance(m, NonLocalBlock)), None)
    if block is None:
        return

    def first_forward(module: NonLocalBlock, args: tuple) -> None:
        handle.remove()
        choice = module.path_for(args[0])
        log.info("non-local blocks take the %s path: %s", choice.path, choice.reason)

    handle = block.register_forward_pre_hook(first_forward)


def sync_period(t: DictConfig, device: torch.device) -> int:
    """``trainer.sync_period``; ``auto``: every step on a CPU, where reading a result costs nothing, and
    every ``log_period`` steps on a GPU, where each read stalls the host until the GPU's queue drains."""
    if t.get("sync_period", "auto") != "auto":
        return int(t.sync_period)
    return 1 if device.type == "cpu" else int(t.log_period)


CLASSIFIER = "head.fc."  # the parameters whose rows are classes


def load_weights_for_finetuning(net: torch.nn.Module, path: str, class_names: list[str]) -> None:
    """Start from the weights of a train.py checkpoint; optimizer and schedule start fresh. They enter
    the model as any weights file does (:func:`~nlvideo.models.pretrained.load_weights`): each tensor fits
    exactly, the backbone whole, each non-local block whole or absent (a new one is an identity).

    The classifier is kept only when the checkpoint was trained on the same classes: rows are matched
    by class name (so a list in another order still maps each class to its own row), and a classifier
    of other classes is left at its initialisation, which the log says. Published weights (Caffe2,
    PySlowFast, ...) are refused with a pointer to model.pretrained, which also sets the model options
    and normalisation they were trained with."""
    ckpt = read_checkpoint(path, key="trainer.init_weights")
    if ckpt.format != "nlvideo":
        raise ConfigError(f"{ckpt.where}: pass published weights as model.pretrained={path} (it sets the "
                          "model options and normalisation they need); trainer.init_weights takes a train.py "
                          "checkpoint")
    weights = dict(ckpt.state_dict)
    head = [k for k in weights if k.startswith(CLASSIFIER)]
    try:
        rows = output_order(ckpt.saved.get("class_names"), class_names)
    except ValueError as exc:  # other classes: the classifier starts afresh
        weights = {k: v for k, v in weights.items() if k not in head}
        log.info("new classifier: %s was trained on other classes than this data's (%s)", path, exc)
    else:
        if rows is not None:
            weights.update({k: weights[k][torch.tensor(rows)] for k in head})
            log.info("classifier rows of %s reordered by class name to this data's class order", path)
    load_weights(net, replace(ckpt, state_dict=weights))


def preempt_signals(cfg: DictConfig) -> list[str]:
    """``trainer.preempt_signals``, plus submitit's timeout signal (checkpoint, then let it requeue)."""
    signals = list(cfg.trainer.preempt_signals)
    if "SUBMITIT_EXECUTOR" in os.environ:
        signals.append("SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").removeprefix("SIG"))
    return signals


def start_or_resume(loop: Loop) -> TrainState:
    """A fresh state, or everything a checkpoint holds restored: the newest valid checkpoint of the run
    dir (``trainer.resume=auto``) or ``trainer.resume=PATH`` (:func:`checkpoint_to_resume`)."""
    loaded: dict[str, dict] = {}  # rank 0 read the newest valid checkpoint whole: not read it twice
    path, explicit = decide_on_main(lambda: checkpoint_to_resume(loop, loaded))
    if not path:
        return TrainState()
    state = resume(loop, path, loaded.get(path))
    if explicit:  # a rerun of this command continues the run instead of starting from PATH again
        state.resumed_from = os.path.realpath(path)
    return state


def resume(loop: Loop, path: str, saved: dict | None = None) -> TrainState:
    """Weights, optimizer, LR schedule position, AMP scaler, loop position and RNG of checkpoint ``path``
    (``saved``: its contents, if already read), after checking that it is a checkpoint of this model on
    these classes."""
    if saved is None:
        saved = ckpt_io.load_checkpoint(path)
    check_resumable(loop, saved, path)
    load_weights(loop.net, weights_of(saved, path, "trainer.resume"), complete=True)  # or one line why not
    loop.optimizer.load_state_dict(saved["optimizer"])
    state = TrainState.from_checkpoint(saved, loop.global_batch, loop.iters_per_epoch)
    schedule = {**saved["scheduler"], "last_epoch": state.iteration, "_step_count": state.iteration + 1}
    if restore_schedule(loop.optimizer, loop.scheduler, schedule):  # e.g. a lower lr after NaN
        log.warning("%s", lr_change(loop, saved))
    if loop.scaler is not None and saved.get("scaler"):
        loop.scaler.load_state_dict(saved["scaler"])
    log.info("resumed from %s (epoch %d, step %d, iteration %d)", path, state.epoch + 1, state.step,
             state.iteration)
    if state.iteration < saved["iteration"]:  # counted in larger steps: the run's newest file is renumbered
        save(loop, state, rotate=False)
        if du.is_main_process():
            ckpt_io.set_aside_newer(loop.ckpt_dir, state.iteration, "numbered in steps of the earlier, "
                                    "smaller global batch; the run goes on from the renumbered copy")
    return state


def write_run_files(loop: Loop, state: TrainState, train_ds) -> None:
    """Rank 0: resolved config, class list, TensorBoard hparams and the run's one-line summary."""
    if not du.is_main_process():
        return
    cfg, stats = loop.cfg, loop.meta["model_stats"]
    keep_config_history(loop.run_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    (loop.run_dir / "classes.json").write_text(json.dumps(list(train_ds.class_names), indent=1) + "\n")
    num_nl = int(getattr(loop.net, "num_nonlocal", 0))
    loop.tb.hparams(  # TensorBoard shows the first 5 names in sorted order: model and num_nonlocal first
        {"model": cfg.model.name, "num_nonlocal": num_nl,
         "nl_instantiation": cfg.model["nonlocal"].instantiation if num_nl else "none",
         "optim_batch": loop.global_batch, "optim_lr": float(cfg.optim.lr),
         "optim_schedule": cfg.optim.schedule, "params_M": stats["params"] / 1e6,
         "per_clip_gflops": stats["gflops"], "video_dataset": cfg.data.get("name", "?"),
         "video_frames": int(cfg.data.num_frames)},
        [val_tag("mAP")] if loop.multi_label else [val_tag("top1"), val_tag("top5")],
    )
    loop.tb.layout(comparison_layout(loop.multi_label))
    index = tensorboard_index(loop.run_dir) if loop.tb.enabled else None
    if index is not None:
        link = name_run(Path(loop.tb.log_dir), index, f"{cfg.model.name} seed={cfg.seed} {loop.run_dir.name}")
        log.info("tensorboard --logdir %s lists this run as '%s'", index, link.name)
    log.info("model %s: %.2fM params, %.1f GFLOPs/clip, %d non-local block(s); %d iters/epoch, "
             "%d epochs, %d iterations", cfg.model.name, stats["params"] / 1e6, stats["gflops"], num_nl,
             loop.iters_per_epoch, loop.num_epochs(state), loop.total_iters)


def comparison_layout(multi_label: bool) -> dict[str, dict[str, list[str]]]:
    """TensorBoard's CUSTOM SCALARS page: the curves the paper compares (its Figure 4), every run on the
    same charts. A chart colours by run, so train and val loss get a chart each (on one chart a run's
    two curves shared a colour)."""
    val = "mAP" if multi_label else "top1"
    charts = {"train top-1 (%)": [r"^accuracy/train_top1$"]} if not multi_label else {}
    charts.update({f"val/{val} (%)": [f"^{val_tag(val)}$"], "train loss": [r"^loss/train$"],
                   "val loss": [r"^loss/val$"], "learning rate": [r"^train/lr$"]})
    return {"baseline vs non-local": charts}


def val_tag(metric: str) -> str:
    """The TensorBoard tag of a validation metric. TensorBoard sorts cards by tag: accuracy and loss
    (``accuracy/train_top1``, ``accuracy/val_top1``, ``loss/train``, ``loss/val``) come first, then the
    ``train/`` (learning rate, gradient norm, throughput, skipped videos, GPU memory) and ``val/`` ones."""
    if metric == "loss":
        return "loss/val"
    return f"accuracy/val_{metric}" if metric in ("top1", "top5", "mAP") else f"val/{metric}"


def keep_config_history(path: Path, text: str) -> None:
    """Write the run's resolved config; a different one from an earlier start of this run dir moves to
    ``config_history/`` (numbered), so every config a run dir has seen is kept."""
    if path.is_file() and path.read_text() != text:
        history = path.parent / "config_history"
        history.mkdir(exist_ok=True)
        n = len(list(history.glob("config_resolved_*.yaml")))
        os.replace(path, history / f"config_resolved_{n:03d}.yaml")
    path.write_text(text)


def run_epochs(loop: Loop, state: TrainState, train_sampler, train_loader, val, bn_loader=None) -> int:
    """The epoch loop from ``state`` to the end of training; returns the exit status. ``bn_loader``:
    precise BN's batches, at the target grid (default ``train_loader``; multigrid's steps vary)."""
    eta = RunEta(validates=val is not None)
    try:
        while state.iteration < loop.total_iters:
            epoch, first_step = state.epoch, state.step
            head = short_batch(loop, state, train_sampler, train_loader)
            if state.step == 0:  # an epoch-end checkpoint holds the generators before iter()
                state.restore_rng()
            batches = itertools.chain(head, iter(train_loader))
            state.restore_rng()  # a mid-epoch one holds them after iter() (which draws a seed)
            stopped = train_one_epoch(loop, state, batches, eta)
            del batches
            if stopped:
                return stop_on_signal(loop, state)
            if state.step == first_step < loop.steps_in_epoch(state):  # another epoch would do the same
                log.error("the training loader yielded no batch in epoch %d: stopping", epoch + 1)
                return 1
            if val is not None and is_validation_epoch(loop, state):
                tic = time.perf_counter()
                validate(loop, state, val, train_sampler, bn_loader or train_loader)
                eta.val_seconds = time.perf_counter() - tic
            state.epoch, state.step, state.samples, state.epoch_sum = epoch + 1, 0, 0, Meter()
            save(loop, state)
            loop.tb.flush()
        log.info("training finished: %d iterations, best %s, %d unreadable video(s) reported",
                 state.iteration, "none" if state.best is None else f"{state.best:.2f}",
                 loop.bad_videos.count)
        return 0
    except (NonFiniteLossError, CheckpointWriteError) as exc:
        log.error("%s %s", exc, rerun_hint(loop))
        return 1
    finally:
        loop.preemption.restore()
        loop.tb.close()


def short_batch(loop: Loop, state: TrainState, sampler, loader) -> list[dict]:
    """Point the sampler at the epoch's first clip not yet trained (``state.samples``); return the batch
    that trains the clips up to the next whole step of this run's batch size, if there are any (a resume
    with another global batch, after a number of clips that is not a whole number of its steps): so
    every clip of the epoch is trained once, none twice and none left out. The sampler counts videos, each
    an item of ``data.clips_per_video`` clips (``clips_per_item``)."""
    k = getattr(loader.dataset, "clips_per_item", 1)
    done = state.samples // du.get_world_size()  # this rank's clips of the epoch order, k per video
    short = 0 if loop.plan.varies else -done % loop.per_rank_batch  # multigrid: batch changes are refused
    sampler.set_epoch(state.epoch, start=done // k)
    if not short:
        return []
    items = list(itertools.islice(iter(sampler), short // k))
    sampler.set_epoch(state.epoch, start=done // k + len(items))
    log.info("epoch %d: a short step of %d clip(s) per process first, up to the next whole step of %d",
             state.epoch + 1, len(items) * k, loop.per_rank_batch)
    return [loader.collate_fn([loader.dataset[item] for item in items])] if items else []


def is_validation_epoch(loop: Loop, state: TrainState) -> bool:
    """Every ``eval_period`` epochs, and after the last one."""
    return validates_after(loop, state.epoch) or state.iteration >= loop.total_iters


def validates_after(loop: Loop, epoch: int) -> bool:
    """Whether epoch ``epoch`` (0-based) ends a period of ``trainer.eval_period`` configured epochs: every
    ``eval_period``-th epoch, or under multigrid the epoch where that many ``trainer.epochs`` are done
    (its epochs are more and cheaper), so both schedules validate as often."""
    period, plan = int(loop.cfg.trainer.eval_period), loop.plan
    return plan.configured_epochs(epoch + 1) // period > plan.configured_epochs(epoch) // period


def stop_on_signal(loop: Loop, state: TrainState) -> int:
    """A stop signal arrived: checkpoint where the loop stands, run the previous handler, exit status."""
    save(loop, state)
    code = loop.preemption.exit_code(int(loop.cfg.trainer.preempt_exit_code))
    log.warning("stopped by signal %s at iteration %d; checkpoint saved, exiting with status %d. %s",
                loop.preemption.name, state.iteration, code, rerun_hint(loop))
    loop.preemption.chain()
    return code


def rerun_hint(loop: Loop) -> str:
    """"To resume: <command>" (the job's overrides with its absolute hydra.run.dir): rerunning the
    same command without hydra.run.dir would start over in a new timestamped directory."""
    verb = "To rerun in this run dir" if loop.last_checkpoint() == "none" else "To resume"
    return f"{verb}: {resume_command(loop.run_dir or '.')}"


def train_one_epoch(loop: Loop, state: TrainState, batches, eta: RunEta | None = None) -> bool:
    """Steps ``state.step`` .. end of ``state.epoch``; True if a stop signal arrived (the caller then
    checkpoints at ``state``). The host reads the steps' results every ``loop.sync_period`` steps, before
    a checkpoint and at the epoch's end (:func:`sync_steps`); in between, a GPU runs ahead unstalled."""
    t = loop.cfg.trainer
    steps = loop.steps_in_epoch(state)
    every = int(t.checkpoint.every_iters)
    after = loop.total_iters - (state.iteration - state.step + steps)  # training steps after this epoch
    validations = eta.validations_left(loop, state) if eta else 0

    def rest(step_seconds: float, left: int) -> tuple[float, str]:
        return eta.seconds(step_seconds, left + after, validations)

    progress = Progress(range(state.step, steps), total=steps, mode=t.progress, log_period=int(t.log_period),
                        desc=f"epoch {state.epoch + 1}/{loop.num_epochs(state)}", initial=state.step,
                        rest=rest if eta else None)
    shown = EpochLog(progress, steps)
    loop.model.train()
    pending: list[StepRecord] = []
    tic = time.perf_counter()
    for step in range(state.step, steps):
        try:
            batch = next(batches)
        except StopIteration:
            log.warning("training loader ended after %d of %d steps", step, steps)
            break
        pending.append(train_step(loop, state, batch, data_time=time.perf_counter() - tic))
        state.step = step + 1
        pending[-1].iter_time = time.perf_counter() - tic
        checkpoint_due = every and state.iteration % every == 0 and state.step < steps
        if checkpoint_due or state.step == steps or len(pending) >= loop.sync_period:
            stop = shown.add(loop, state, pending, sync_steps(loop, state, pending, steps))
            pending = []
            if stop:
                shown.progress.close()
                return True
            if checkpoint_due:
                save(loop, state)
        tic = time.perf_counter()
    if pending:  # the loader ended early
        shown.add(loop, state, pending, sync_steps(loop, state, pending, steps))
    shown.progress.close()
    log_epoch(loop, state, progress.run_eta())
    return False


@dataclass
class RunEta:
    """The whole run's remaining time, shown on the progress and epoch lines (an epoch's own ETA hides
    the rest): the training steps left at this epoch's measured step time, plus every validation left
    (precise BN included) at the last one's measured time; until one has run, a note says it is not
    counted."""

    validates: bool
    val_seconds: float | None = None

    def validations_left(self, loop: Loop, state: TrainState) -> int:
        """Validations from ``state.epoch`` (included) to the end: every ``eval_period`` and the last."""
        if not self.validates:
            return 0
        last = loop.num_epochs(state)
        return sum(validates_after(loop, e) or e + 1 == last for e in range(state.epoch, last))

    def seconds(self, step_seconds: float, steps_left: int, validations: int) -> tuple[float, str]:
        """(seconds, note) for ``steps_left`` training steps and ``validations`` validations."""
        if validations and self.val_seconds is None:
            return steps_left * step_seconds, " + validation"
        return steps_left * step_seconds + validations * (self.val_seconds or 0.0), ""


@dataclass
class StepRecord:
    """One optimizer step, as the host reads it at the next sync."""

    on_device: torch.Tensor  # this rank's (loss x clips, top-1 hits), float64, not yet read
    on_host: list[float]  # this rank's (clips, stop requested, new unreadable videos, replaced reads)
    new_bad: dict[str, str]  # unreadable videos this rank had not reported: path -> reason
    iteration: int  # the global iteration the step completed
    step: int  # the step's number in its epoch (1-based)
    lrs: list[float]  # each parameter group's learning rate in the step
    grad_norm: torch.Tensor  # before clipping
    data_time: float
    shape: tuple[int, int, int] = (0, 0, 0)  # this rank's clips, frames, crop size (multigrid: they vary)
    iter_time: float = 0.0


def train_step(loop: Loop, state: TrainState, batch: dict, data_time: float) -> StepRecord:
    """One optimizer step on ``batch``, without reading anything back from the device."""
    failures = batch.get("failures") or []
    new_bad = loop.bad_videos.new(failures)
    logits = loop.forward(loop.model, batch["clip"])
    labels = batch["label"].to(logits.device, non_blocking=True)
    loss = loop.faults.loss(loop.loss(logits, labels), state.iteration + 1)
    b = labels.shape[0]
    hits = torch.zeros((), device=logits.device) if loop.multi_label else (logits.argmax(1) == labels).sum()
    on_device = torch.stack([loss.detach().double() * b, hits.double()])
    stop = loop.preemption.received is not None
    on_host = [float(b), float(stop), float(len(new_bad)), float(len(failures))]
    lrs = [group["lr"] for group in loop.optimizer.param_groups]
    grad_norm = update_weights(loop, loss)
    loop.scheduler.step()
    state.iteration += 1
    state.samples += b * du.get_world_size()
    clip = batch["clip"].shape
    return StepRecord(on_device, on_host, new_bad, state.iteration, state.step + 1, lrs, grad_norm, data_time,
                      shape=(clip[0], clip[2], clip[3]))


def sync_steps(loop: Loop, state: TrainState, records: list[StepRecord], steps: int) -> torch.Tensor:
    """Read ``records`` back and sum each step over ranks in one all-reduce: it is also every rank's NaN
    check and stop-signal agreement. Returns one row per step: (loss x clips, top-1 hits, clips, stop
    requests, new unreadable videos, replaced reads), float64 on the CPU. A non-finite loss raises
    :class:`NonFiniteLossError` naming its iteration (no checkpoint is written after it)."""
    rows = torch.cat([torch.stack([r.on_device for r in records]).cpu(),
                      torch.tensor([r.on_host for r in records], dtype=torch.float64)], dim=1)
    rows = du.all_reduce_sum(rows)
    losses = rows[:, 0] / rows[:, 2]
    for record, loss in zip(records, losses.tolist(), strict=True):
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss} at iteration {record.iteration} (epoch {state.epoch + 1}, step "
                f"{record.step}/{steps}); stopping. Last good checkpoint: {loop.last_checkpoint()}. Try a "
                "lower optim.lr, optim.clip_grad_norm=10 or trainer.amp=off.")
    if rows[:, 4].sum() > 0:
        new_bad: dict[str, str] = {}
        for record in records:
            for path, reason in record.new_bad.items():
                new_bad.setdefault(path, reason)
        loop.bad_videos.update(new_bad, "replaced by another training video")
    return rows


@dataclass
class EpochLog:
    """What the host shows of an epoch: the progress display, the logging window (TensorBoard) and the
    epoch's totals, fed with each sync's steps in order."""

    progress: Progress
    steps: int
    window: Meter = field(default_factory=Meter)
    grad_norms: list[torch.Tensor] = field(default_factory=list)

    def add(self, loop: Loop, state: TrainState, records: list[StepRecord], rows: torch.Tensor) -> bool:
        """Account for the synced steps; True if a rank asked to stop."""
        for record, reduced in zip(records, rows, strict=True):
            self.window.add(reduced, record.data_time, record.iter_time)
            state.epoch_sum.add(reduced, record.data_time, record.iter_time)
            self.grad_norms.append(record.grad_norm)
            self.progress.update(it=record.iteration, loss=float(reduced[0] / reduced[2]), lr=record.lrs[0],
                                 clips_s=self.window.n / max(self.window.time, 1e-9))  # as TensorBoard's
            if self.window.iters >= self.progress.log_period or record.step == self.steps:
                log_window(loop, self.window, record, self.grad_norms)
                self.window, self.grad_norms = Meter(), []
        return bool(rows[:, 3].sum() > 0)


def update_weights(loop: Loop, loss: torch.Tensor) -> torch.Tensor:
    """Backward, gradient clipping and the optimizer step (through the AMP scaler when there is one).
    Returns the gradient norm before clipping (inf or NaN on an fp16 step the scaler skips)."""
    max_norm = loop.cfg.optim.clip_grad_norm
    loop.optimizer.zero_grad(set_to_none=True)
    if loop.scaler is None:
        loss.backward()
        grad_norm = clip_gradients(loop.model, max_norm)
        loop.optimizer.step()
        return grad_norm
    loop.scaler.scale(loss).backward()
    loop.scaler.unscale_(loop.optimizer)  # the norm is of the true gradients; step() then unscales no more
    grad_norm = clip_gradients(loop.model, max_norm)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    return grad_norm


def log_window(loop: Loop, window: Meter, last: StepRecord, grad_norms: list[torch.Tensor]) -> None:
    """The logging window's means: loss, top-1, throughput, the learning rate (``train/lr`` is group 0's,
    ``train/lr/group<i>`` each group's), the gradient norm before clipping (steps the fp16 scaler
    skipped left out), on CUDA the peak memory since the previous window and, under multigrid, the
    window's last step's shape (``multigrid/batch``: clips per process, ``multigrid/frames``,
    ``multigrid/crop_size``)."""
    if not loop.tb.enabled:
        return
    lrs, iteration = last.lrs, last.iteration
    scalars = {"loss/train": window.loss / window.n, "train/lr": lrs[0],
               "train/clips_per_s": window.n / max(window.time, 1e-9),
               "train/data_time_frac": window.data_time / max(window.time, 1e-9)}
    if not loop.multi_label:
        scalars["accuracy/train_top1"] = 100.0 * window.correct / window.n
    scalars.update({f"train/lr/group{i}": lr for i, lr in enumerate(lrs)})
    finite = [n for n in torch.stack(grad_norms).tolist() if math.isfinite(n)]
    if finite:
        scalars["train/grad_norm"] = sum(finite) / len(finite)
    scalars.update(gpu_memory_gib(next(loop.net.parameters()).device))
    if loop.plan.varies:
        scalars.update(dict(zip(("multigrid/batch", "multigrid/frames", "multigrid/crop_size"), last.shape,
                                strict=True)))
    loop.tb.scalars(scalars, iteration)


def log_epoch(loop: Loop, state: TrainState, run_eta: str = "") -> None:
    """The epoch's totals (carried through mid-epoch checkpoints, so a resumed epoch counts whole) and
    the whole run's ETA (:class:`RunEta`)."""
    total = state.epoch_sum
    totals = epoch_totals(loop, total)
    summary = {"loss/train_epoch": totals["epoch_loss"], "train/skipped_videos": int(total.skipped)}
    if "epoch_top1" in totals:
        summary["accuracy/train_epoch_top1"] = totals["epoch_top1"]
    loop.tb.scalars(summary, state.iteration)
    top1 = "" if loop.multi_label else f"  top1 {totals['epoch_top1']:.2f}"
    log.info("epoch %d/%d done: iteration %d  clips %d  loss %.4f%s  skipped videos %d (unreadable reads "
             "replaced this epoch; %d distinct unreadable video(s) so far)%s", state.epoch + 1,
             loop.num_epochs(state), state.iteration, int(total.n), totals["epoch_loss"], top1,
             int(total.skipped), loop.bad_videos.count, f"  {run_eta}" if run_eta else "")


def epoch_totals(loop: Loop, total: Meter) -> dict[str, float]:
    """The epoch's mean training loss and (single-label) top-1 so far."""
    totals = {"epoch_loss": total.loss / max(total.n, 1.0)}
    if not loop.multi_label:
        totals["epoch_top1"] = 100.0 * total.correct / max(total.n, 1.0)
    return totals


def validate(loop: Loop, state: TrainState, val, train_sampler, train_loader) -> None:
    """Precise BN, multi-view validation of the whole split (same metrics on every rank, with the
    validation loss), best metric, ``metrics.json``, a row of ``metrics.csv``, one NL block's attention."""
    t = loop.cfg.trainer
    if t.precise_bn.enabled:
        train_sampler.set_epoch(state.epoch, start=0)
        num = min(int(t.precise_bn.num_batches), len(train_loader))
        progress = Progress(train_loader, total=num, desc="precise BN", mode=t.progress,
                            log_period=int(t.log_period))
        used = update_bn_stats(loop.net, progress.ticking(), num, lambda m, b: loop.forward(m, b["clip"]))
        progress.close()
        log.info("precise BN: statistics recomputed over %d batch(es)", used)
    val_ds, _, val_loader = val
    agg = evaluate_dataset(loop.net, val_loader, val_ds, loop.forward, t, desc="val")
    loop.bad_videos.update(loop.bad_videos.new(agg.failures.items()), "skipped in validation")
    metrics = agg.metrics()
    if not metrics:
        log.error("validation scored no video (%d unreadable): no val/%s this epoch", agg.num_failed,
                  "mAP" if loop.multi_label else "top1")
    metrics["skipped_videos"] = float(agg.num_failed)
    loop.tb.scalars({val_tag(k): v for k, v in metrics.items()}, state.iteration)
    log_attention(loop, val_ds, state.iteration)
    key = "mAP" if loop.multi_label else "top1"
    if key in metrics and (state.best is None or metrics[key] > state.best):
        state.best = metrics[key]
    if du.is_main_process():
        write_json(loop.run_dir / "metrics.json", {"epoch": state.epoch + 1, "iteration": state.iteration,
                                                   "best": state.best, **metrics})
        write_history_row(loop.run_dir / "metrics.csv", validation_row(loop, state, metrics))
        log.info("epoch %d/%d validation: %s", state.epoch + 1, loop.num_epochs(state),
                 "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()))


def validation_row(loop: Loop, state: TrainState, metrics: dict[str, float]) -> dict[str, object]:
    """One row of ``metrics.csv``: when, the epoch's training totals, the validation metrics, the best."""
    return {"epoch": state.epoch + 1, "iteration": state.iteration,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            **{f"train_{k}": v for k, v in epoch_totals(loop, state.epoch_sum).items()},
            **{f"val_{k}": v for k, v in metrics.items()}, "best": state.best}


def log_attention(loop: Loop, val_ds, iteration: int) -> None:
    """The last NL block's attention on the centre view of validation video 0, as an image
    (``val/attention``): the same clip every validation, so the images show what the block learns.
    The query is where the block changes the features most (:func:`nlvideo.visualize.block_attention`).
    The model runs in eval mode with no gradient, so training is unaffected; a failure is a warning."""
    if not loop.tb.enabled or not loop.net.nonlocal_blocks():
        return
    from nlvideo.visualize import attention_figure, block_attention, load_clip

    path, was_training = val_ds.records[0].path, loop.net.training
    loop.net.eval()
    try:
        clip, frames = load_clip(path, loop.cfg.data)
        att = block_attention(loop.net, clip.to(next(loop.net.parameters()).device))
    except Exception as exc:  # noqa: BLE001 - a picture for TensorBoard must never stop a training run
        log.warning("no attention image this validation (%s: %s)", type(exc).__name__, exc)
        return
    finally:
        loop.net.train(was_training)
    title = f"{Path(path).name}: {att.block} ({att.instantiation}), query {att.query}, iteration {iteration}"
    loop.tb.figure("val/attention", attention_figure(frames, att, title=title), iteration)


def save(loop: Loop, state: TrainState, rotate: bool = True) -> Path | None:
    """Checkpoint the weights, optimizer, schedule, scaler and ``state`` (collective: gathers every
    rank's RNG state); rank 0 writes and returns the path. ``rotate``: delete the run's checkpoints
    beyond ``trainer.checkpoint.keep_last``."""
    payload = {"model": loop.net.state_dict(), "optimizer": loop.optimizer.state_dict(),
               "scheduler": loop.scheduler.state_dict(),
               "scaler": loop.scaler.state_dict() if loop.scaler else None,
               **state.state_dict(loop.per_rank_batch, loop.iters_per_epoch), **loop.meta}
    if not du.is_main_process():
        return None
    keep_last = int(loop.cfg.trainer.checkpoint.keep_last) if rotate else None
    try:
        path = ckpt_io.save_checkpoint(payload, loop.ckpt_dir, state.iteration, keep_last=keep_last,
                                       _while_writing=loop.faults.while_writing(state.iteration))
    except (OSError, RuntimeError) as exc:  # torch.save's zip writer reports a failed write as RuntimeError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
        raise CheckpointWriteError(f"could not write the checkpoint of iteration {state.iteration} to "
                                   f"{loop.ckpt_dir} ({reason[:200]}); stopping. Last good checkpoint: "
                                   f"{loop.last_checkpoint()}.") from None
    log.info("saved %s", path)
    return path
