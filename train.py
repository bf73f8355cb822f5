"""Train a video classifier (C2D/I3D ResNet with non-local blocks).

    python train.py model=i3d_nl5 data=kinetics400 data.root=/data/k400 clip=32x2
    torchrun --nproc_per_node=8 train.py model=i3d_nl5 data=kinetics400 data.root=/data/k400
    python train.py -m model=c2d,c2d_nl5                        # Hydra multirun sweep
    python train.py hydra.run.dir=outputs/my_run ...            # rerun the same line to auto-resume

The whole loop is in this file and reads top to bottom: ``main`` -> ``train`` (setup, resume, the
epoch loop) -> ``train_one_epoch`` (one pass over the training clips) and ``validate``. Helpers that
are one concept each live in :mod:`nlvideo.engine` (distributed, checkpoint, optim, precise_bn,
evaluate, logging, preemption, config). docs/training.md is the user guide.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import nlvideo  # noqa: F401  (compat shim: must precede torchvision/pytorchvideo imports)
from nlvideo.engine import checkpoint as ckpt_io
from nlvideo.engine import distributed as du
from nlvideo.engine.bad_videos import BadVideoReport
from nlvideo.engine.config import ConfigError, resolve_device, validate_config
from nlvideo.engine.evaluate import compute_metrics, run_evaluation, write_json
from nlvideo.engine.logging import Progress, TensorBoard, setup_rank_logging
from nlvideo.engine.optim import build_optimizer, build_scheduler, clip_gradients
from nlvideo.engine.precise_bn import update_bn_stats
from nlvideo.engine.preemption import PreemptionHandler
from nlvideo.models import to_channels_last_3d

log = logging.getLogger("nlvideo.train")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf."""


# ----------------------------------------------------------------------------------------------------
# Small pieces shared with eval.py
# ----------------------------------------------------------------------------------------------------


def setup_runtime(cfg: DictConfig, rank: int) -> torch.device:
    """Seed every generator (offset by rank), set determinism and CPU threads, pick the device."""
    threads = cfg.trainer.get("cpu_threads")
    if threads is not None:  # intra-op threads of this process (loader workers always use 1)
        torch.set_num_threads(int(threads))
    if cfg.trainer.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    seed_everything(int(cfg.seed) + rank)
    device = resolve_device(cfg.trainer.device)
    if device.type == "cuda":
        device = torch.device("cuda", du.info().local_rank)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(cfg: DictConfig, device: torch.device):
    amp = cfg.trainer.amp
    if amp in (None, False, "off"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_forward(cfg: DictConfig, device: torch.device):
    """``forward(model, clip) -> float32 logits``: device transfer, memory format and autocast."""
    channels_last = bool(cfg.trainer.channels_last)

    def forward(model: torch.nn.Module, clip: torch.Tensor) -> torch.Tensor:
        clip = clip.to(device, non_blocking=True)
        if channels_last:
            clip = clip.contiguous(memory_format=torch.channels_last_3d)
        with autocast(cfg, device):
            return model(clip).float()

    return forward


def build_model(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """Instantiate ``cfg.model`` (seeded, so every rank and every rerun starts from the same weights)."""
    torch.manual_seed(int(cfg.seed))
    net = hydra.utils.instantiate(cfg.model)
    net = net.to(device)
    if cfg.trainer.channels_last:
        net = to_channels_last_3d(net)
    return net


def load_weights_for_finetuning(net: torch.nn.Module, path: str) -> None:
    """Copy the model weights of a checkpoint whose shapes match (the classifier of a model trained on
    another label set is skipped); optimizer and schedule start fresh."""
    state = ckpt_io.load_checkpoint(path)["model"]
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    net.load_state_dict(usable, strict=False)
    log.info("initialised %d/%d tensors from %s; not loaded: %s; left at init: %s", len(usable), len(own),
             path, skipped or "none", sorted(set(own) - set(usable)) or "none")


def model_stats(net: torch.nn.Module, cfg: DictConfig) -> dict[str, float]:
    """Parameter count and forward GFLOPs of one training-size clip (2 FLOPs per multiply-add),
    counted on the meta device by :mod:`nlvideo.models.stats`."""
    from nlvideo.models.stats import count_macs, count_params

    crop = int(cfg.data.get("train_crop_size", 224))
    try:
        flops = 2.0 * count_macs(net, (1, 3, int(cfg.data.num_frames), crop, crop))
    except Exception as exc:  # noqa: BLE001 - stats are informative, never fatal
        log.warning("FLOP count failed (%s); logging 0", exc)
        flops = 0.0
    return {"params": float(count_params(net)), "gflops": flops / 1e9}


def build_split(cfg: DictConfig, split: str, train: bool, batch_size: int):
    """Dataset, sampler and loader of one split for this rank."""
    from nlvideo.data import ClipSampler, build_dataset, build_loader

    info = du.info()
    try:
        ds = build_dataset(cfg.data, split)
    except (ValueError, FileNotFoundError) as exc:  # missing lists/classes, bad data keys: one line
        raise ConfigError(str(exc)) from exc
    ds.report_failures = False  # reported once per run by BadVideoReport, not by every worker
    sampler = ClipSampler(len(ds), shuffle=train, seed=int(cfg.seed), rank=info.rank,
                          world_size=info.world_size, drop_last=train)
    loader = build_loader(ds, cfg.data, sampler, batch_size=batch_size)
    return ds, sampler, loader


def run_dir_of_this_job() -> Path:
    """Rank 0's Hydra output directory, shared with every rank."""
    path = HydraConfig.get().runtime.output_dir if du.is_main_process() else None
    return Path(du.broadcast_object(path))


def task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task)


def exit_on_bad_group_choice(argv: list[str]) -> None:
    """``model=xyz``: one line naming the allowed choices, exit status 2 (before Hydra starts)."""
    from nlvideo.engine.config import check_group_choices

    try:
        check_group_choices(argv, Path(__file__).resolve().parent / "configs")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def nonzero_rank_argv(argv: list[str]) -> list[str]:
    """Ranks > 0 of a torchrun/SLURM job must not create Hydra output dirs or log files of their own:
    rank 0's directory is broadcast to them once the process group is up."""
    if du.env_rank() == 0:
        return argv
    ours = ("hydra.run.dir=", "hydra.output_subdir=", "hydra/job_logging=")
    keep = [a for a in argv if not a.startswith(ours)]
    return keep + ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none"]


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


def train(cfg: DictConfig) -> int:
    """Run (or resume) one training job; returns the process exit status."""
    validate_config(cfg)  # every key checked before any data is read or process group formed
    info = du.init_distributed()
    setup_rank_logging(info.rank)
    run_dir = run_dir_of_this_job()
    device = setup_runtime(cfg, info.rank)
    t = cfg.trainer
    per_rank_batch = int(cfg.data.batch_size)
    global_batch = per_rank_batch * info.world_size
    log.info("run dir %s | %d process(es) (%s) | device %s | %d CPU thread(s) | global batch %d", run_dir,
             info.world_size, info.backend or "single", device, torch.get_num_threads(), global_batch)

    # Data: built before the model so num_classes / multi_label come from the dataset itself.
    train_ds, train_sampler, train_loader = build_split(cfg, "train", True, per_rank_batch)
    val_ds = val_loader = None
    if int(t.eval_period) > 0:
        val_ds, _, val_loader = build_split(cfg, "val", False, per_rank_batch)
    multi_label = bool(train_ds.multi_label)
    iters_per_epoch = len(train_loader)
    if t.debug.max_iters_per_epoch:
        iters_per_epoch = min(iters_per_epoch, int(t.debug.max_iters_per_epoch))
    if iters_per_epoch == 0:
        raise ConfigError(f"data.batch_size={per_rank_batch} x {info.world_size} process(es) is larger than "
                          f"the training split ({len(train_ds)} clips): lower data.batch_size")
    total_iters = int(t.max_iters) if t.max_iters else int(t.epochs) * iters_per_epoch
    num_epochs = math.ceil(total_iters / iters_per_epoch)

    # Model, optimiser, schedule, AMP scaler.
    net = build_model(cfg, device)
    if t.init_weights:  # fine-tuning (e.g. Charades from Kinetics): weights only, new classifier
        load_weights_for_finetuning(net, str(t.init_weights))
    stats = model_stats(net, cfg) if info.is_main else {}
    if info.enabled and t.sync_bn and device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    elif info.enabled and t.sync_bn:
        log.info("trainer.sync_bn: SyncBatchNorm needs CUDA; on %s BN statistics stay per process", device)
    model = net
    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(net, cfg.optim, global_batch)
    scheduler = build_scheduler(optimizer, cfg.optim, iters_per_epoch, total_iters)
    scaler = torch.amp.GradScaler(device.type) if t.amp == "fp16" else None
    forward = make_forward(cfg, device)
    criterion = F.binary_cross_entropy_with_logits if multi_label else F.cross_entropy

    # Resume: newest valid checkpoint of this run dir (trainer.resume=auto) or an explicit path.
    ckpt_dir = run_dir / "checkpoints"
    start_epoch, start_step, iteration, pending_rng, best = 0, 0, 0, None, None
    resume_path = None
    if info.is_main and t.resume not in (None, "null", False):
        if t.resume == "auto":
            found = ckpt_io.load_latest_valid(ckpt_dir)
            resume_path = str(found[0]) if found else None
        else:
            resume_path = str(t.resume)
    resume_path = du.broadcast_object(resume_path)
    if resume_path:
        state = ckpt_io.load_checkpoint(resume_path, map_location="cpu")
        net.load_state_dict(state["model"])
        configured = list(scheduler.base_lrs)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scheduler.base_lrs != configured:  # e.g. rerun with a lower optim.lr after a NaN stop
            log.warning("optim.lr differs from the checkpoint's: continuing with the configured rate")
            scheduler.base_lrs = configured
            for group, base, fn in zip(optimizer.param_groups, configured, scheduler.lr_lambdas, strict=True):
                group["initial_lr"] = base
                group["lr"] = base * fn(scheduler.last_epoch)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_step, iteration = state["epoch"], state["iter_in_epoch"], state["iteration"]
        best = state.get("best")
        rngs = state.get("rng") or []
        if len(rngs) == info.world_size:
            pending_rng = rngs[info.rank]
        else:
            log.warning("checkpoint was written by %d process(es), this job has %d: RNG streams restart",
                        len(rngs), info.world_size)
        if state.get("world_size", info.world_size) != info.world_size:  # keep the global position
            consumed = state["iter_in_epoch"] * state["world_size"] * state["per_rank_batch"]
            start_step = consumed // global_batch
        log.info("resumed from %s (epoch %d, step %d, iteration %d)", resume_path, start_epoch + 1,
                 start_step, iteration)
        del state

    # Run-dir artefacts (rank 0): resolved config, class map, TensorBoard.
    tb = TensorBoard(str(run_dir / "tb"), enabled=bool(t.tensorboard))
    if info.is_main:
        (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (run_dir / "classes.json").write_text(json.dumps(list(train_ds.class_names), indent=1) + "\n")
        num_nl = int(getattr(net, "num_nonlocal", 0))
        tb.hparams(
            {"model": cfg.model.name, "num_nonlocal": num_nl,
             "instantiation": cfg.model["nonlocal"].instantiation if num_nl else "none",
             "params_M": stats["params"] / 1e6, "gflops": stats["gflops"], "lr": float(cfg.optim.lr),
             "global_batch": global_batch, "num_frames": int(cfg.data.num_frames),
             "schedule": cfg.optim.schedule, "data": cfg.data.get("name", "?")},
            ["val/mAP"] if multi_label else ["val/top1", "val/top5"],
        )
        log.info("model %s: %.2fM params, %.1f GFLOPs/clip, %d non-local block(s); %d iters/epoch, "
                 "%d epochs, %d iterations", cfg.model.name, stats["params"] / 1e6, stats["gflops"], num_nl,
                 iters_per_epoch, num_epochs, total_iters)

    def save(epoch: int, step: int, iteration: int) -> Path | None:
        """Checkpoint after global ``iteration`` = step ``step`` of ``epoch`` (collective: gathers
        every rank's RNG state; rank 0 writes)."""
        state = {
            "model": net.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "epoch": epoch, "iter_in_epoch": step, "iteration": iteration,
            "world_size": info.world_size, "per_rank_batch": per_rank_batch,
            "samples_per_rank": step * per_rank_batch,
            "rng": du.all_gather_object(ckpt_io.rng_state()),
            "best": best, "config": OmegaConf.to_container(cfg, resolve=True),
            "overrides": task_overrides(), "class_names": list(train_ds.class_names),
            "multi_label": multi_label, "model_name": cfg.model.name,
        }
        path = None
        fault = None
        kill_at = t.debug.get("kill_during_checkpoint")
        if kill_at is not None and int(kill_at) == iteration:
            def fault():  # fault injection: die half-way through writing this checkpoint
                log.warning("trainer.debug.kill_during_checkpoint=%d: SIGKILL while writing", iteration)
                os.kill(os.getpid(), signal.SIGKILL)
        if info.is_main:
            path = ckpt_io.save_checkpoint(state, ckpt_dir, iteration, keep_last=int(t.checkpoint.keep_last),
                                           _while_writing=fault)
            log.info("saved %s", path)
        return path

    preempt_signals = list(t.preempt_signals)
    if "SUBMITIT_EXECUTOR" in os.environ:  # submitit's timeout signal: checkpoint, then let it requeue
        preempt_signals.append("SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").removeprefix("SIG"))
    preemption = PreemptionHandler(preempt_signals)
    bad_videos = BadVideoReport()

    # The epoch loop.
    status = 0
    try:
        for epoch in range(start_epoch, num_epochs):
            if iteration >= total_iters:
                break
            steps = min(iters_per_epoch, total_iters - epoch * iters_per_epoch)
            first_step = start_step if epoch == start_epoch else 0
            train_sampler.set_epoch(epoch, start=first_step * per_rank_batch)
            if pending_rng is not None and first_step == 0:  # epoch-end checkpoint: state before iter()
                ckpt_io.set_rng_state(pending_rng)
                pending_rng = None
            batches = iter(train_loader)
            if pending_rng is not None:  # mid-epoch checkpoint: state after iter() (it draws a seed)
                ckpt_io.set_rng_state(pending_rng)
                pending_rng = None

            outcome = train_one_epoch(
                cfg, model, batches, optimizer, scheduler, scaler, forward, criterion, multi_label,
                epoch=epoch, num_epochs=num_epochs, first_step=first_step, steps=steps,
                start_iteration=iteration, global_batch=global_batch, tb=tb, preemption=preemption,
                save=save, last_ckpt=lambda: (ckpt_io.list_checkpoints(ckpt_dir) or [None])[-1],
                bad_videos=bad_videos,
            )
            iteration = outcome["iteration"]
            del batches
            if outcome["stopped"]:
                save(epoch, outcome["step"], iteration)
                log.warning("stopped by signal at iteration %d; checkpoint saved, exiting with status %d "
                            "(rerun with the same hydra.run.dir to resume)", iteration,
                            int(t.preempt_exit_code))
                preemption.chain()
                status = int(t.preempt_exit_code)
                break

            last_epoch = epoch + 1 == num_epochs
            if val_loader is not None and ((epoch + 1) % int(t.eval_period) == 0 or last_epoch):
                if t.precise_bn.enabled:
                    train_sampler.set_epoch(epoch, start=0)
                    used = update_bn_stats(net, iter(train_loader), int(t.precise_bn.num_batches),
                                           lambda m, b: forward(m, b["clip"]))
                    log.info("precise BN: statistics recomputed over %d batch(es)", used)
                metrics = validate(cfg, net, val_loader, val_ds, forward, multi_label, bad_videos)
                tb.scalars({f"val/{k}": v for k, v in metrics.items()}, iteration)
                key = "mAP" if multi_label else "top1"
                if key in metrics and (best is None or metrics[key] > best):
                    best = metrics[key]
                if info.is_main:
                    write_json(run_dir / "metrics.json", {"epoch": epoch + 1, "iteration": iteration,
                                                          "best": best, **metrics})
                    log.info("epoch %d/%d validation: %s", epoch + 1, num_epochs,
                             "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
            save(epoch + 1, 0, iteration)
            tb.flush()
        else:
            log.info("training finished: %d iterations, best %s, %d unreadable video(s) reported", iteration,
                     best, bad_videos.count)
    except NonFiniteLossError as exc:
        log.error("%s", exc)
        status = 1
    finally:
        preemption.restore()
        tb.close()
    return status


def train_one_epoch(cfg, model, batches, optimizer, scheduler, scaler, forward, criterion, multi_label, *,
                    epoch, num_epochs, first_step, steps, start_iteration, global_batch, tb, preemption,
                    save, last_ckpt, bad_videos: BadVideoReport) -> dict:
    """Steps ``first_step..steps-1`` of one epoch. Returns the new global iteration and whether a stop
    signal arrived (``stopped``; the caller then checkpoints at ``step``)."""
    t = cfg.trainer
    model.train()
    every = int(t.checkpoint.every_iters)
    nan_at = t.debug.nan_at_iter
    iteration = start_iteration
    window = {"loss": 0.0, "correct": 0.0, "n": 0.0, "data": 0.0, "time": 0.0, "iters": 0}
    epoch_sum = {"loss": 0.0, "correct": 0.0, "n": 0.0}
    failures = 0
    progress = Progress(range(first_step, steps), total=steps, desc=f"epoch {epoch + 1}/{num_epochs}",
                        mode=t.progress, log_period=int(t.log_period), initial=first_step)
    step = first_step
    tic = time.perf_counter()
    for step in progress:
        try:
            batch = next(batches)
        except StopIteration:
            log.warning("training loader ended after %d of %d steps", step, steps)
            break
        data_time = time.perf_counter() - tic
        failures += len(batch.get("failures") or [])
        new_bad = bad_videos.new(batch.get("failures") or [])
        logits = forward(model, batch["clip"])
        labels = batch["label"].to(logits.device, non_blocking=True)
        loss = criterion(logits, labels.float() if multi_label else labels)
        if nan_at is not None and iteration + 1 == int(nan_at):
            loss = loss * float("nan")
        # One all-reduce per iteration: loss, top-1 hits, clips, stop request (also a NaN check on all
        # ranks), unreadable videos not reported yet (then gathered and logged once by rank 0).
        b = labels.shape[0]
        correct = 0.0 if multi_label else float((logits.argmax(1) == labels).sum())
        reduced = du.all_reduce_sum(torch.tensor(
            [float(loss.detach()) * b, correct, float(b), float(preemption.received is not None),
             float(len(new_bad))], dtype=torch.float64))
        if reduced[4] > 0:
            bad_videos.update(new_bad, "replaced by another training video")
        loss_avg = float(reduced[0] / reduced[2])
        if not math.isfinite(loss_avg):
            last = last_ckpt()
            raise NonFiniteLossError(
                f"loss is {loss_avg} at iteration {iteration + 1} (epoch {epoch + 1}, step {step + 1}/"
                f"{steps}); stopping. Last good checkpoint: {last or 'none'}. Try a lower optim.lr, "
                "optim.clip_grad_norm=10 or trainer.amp=off.")

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if cfg.optim.clip_grad_norm:
                scaler.unscale_(optimizer)
            clip_gradients(model, cfg.optim.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            clip_gradients(model, cfg.optim.clip_grad_norm)
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        iteration += 1

        iter_time = time.perf_counter() - tic
        for k, v in (("loss", float(reduced[0])), ("correct", float(reduced[1])), ("n", float(reduced[2]))):
            window[k] += v
            epoch_sum[k] += v
        window["data"] += data_time
        window["time"] += iter_time
        window["iters"] += 1
        progress.update(it=iteration, loss=loss_avg, lr=lr, clips_s=global_batch / max(iter_time, 1e-9))
        if window["iters"] >= int(t.log_period) or step + 1 == steps:
            scalars = {"train/loss": window["loss"] / window["n"], "train/lr": lr,
                       "train/clips_per_s": window["n"] / max(window["time"], 1e-9),
                       "train/data_time_frac": window["data"] / max(window["time"], 1e-9)}
            if not multi_label:
                scalars["train/top1"] = 100.0 * window["correct"] / window["n"]
            tb.scalars(scalars, iteration)
            window = dict.fromkeys(window, 0.0)
            window["iters"] = 0

        if reduced[3] > 0:
            progress.close()
            return {"iteration": iteration, "step": step + 1, "stopped": True}
        if every and iteration % every == 0 and step + 1 < steps:
            save(epoch, step + 1, iteration)
        tic = time.perf_counter()
    progress.close()

    skipped = int(du.all_reduce_sum(torch.tensor([float(failures)])).item())
    summary = {"train/epoch_loss": epoch_sum["loss"] / max(epoch_sum["n"], 1.0),
               "data/skipped_videos": skipped}
    if not multi_label:
        summary["train/epoch_top1"] = 100.0 * epoch_sum["correct"] / max(epoch_sum["n"], 1.0)
    tb.scalars(summary, iteration)
    top1 = f"  top1 {summary['train/epoch_top1']:.2f}" if not multi_label else ""
    log.info("epoch %d/%d done: iteration %d  loss %.4f%s  skipped videos %d (unreadable reads replaced "
             "this epoch; %d distinct unreadable video(s) so far)", epoch + 1, num_epochs, iteration,
             summary["train/epoch_loss"], top1, skipped, bad_videos.count)
    return {"iteration": iteration, "step": step + 1, "stopped": False}


def validate(cfg, net, loader, ds, forward, multi_label, bad_videos: BadVideoReport) -> dict[str, float]:
    """Multi-view validation over the whole split; every rank gets the same metrics."""
    progress = Progress(loader, total=len(loader), desc="val", mode=cfg.trainer.progress,
                        log_period=int(cfg.trainer.log_period))
    agg = run_evaluation(net, loader, ds.num_videos, ds.num_classes, multi_label, forward,
                         progress=lambda it: _ticking(it, progress))
    progress.close()
    bad_videos.update(bad_videos.new(agg.failures.items()), "skipped in validation")
    _, scores, labels = agg.result()
    metrics = compute_metrics(scores, labels, multi_label)
    metrics["skipped_videos"] = float(agg.num_failed)
    return metrics


def _ticking(iterable, progress: Progress):
    for item in iterable:
        yield item
        progress.update()


def run_job(job, cfg: DictConfig) -> None:
    """Run ``job(cfg)`` (train or evaluate) as a command: a ConfigError is one ``error:`` line and exit
    status 2, a non-zero status from the job exits with it; the process group is always torn down."""
    try:
        status = job(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 2
    finally:
        du.cleanup()
    if status:
        sys.exit(status)


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(train, cfg)


if __name__ == "__main__":
    sys.argv = nonzero_rank_argv(sys.argv)
    exit_on_bad_group_choice(sys.argv[1:])
    main()
