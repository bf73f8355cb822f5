"""What a training and a testing job set up the same way: seeds and device, the model, one split's
data, the forward pass (device transfer, memory format, autocast), and the run directory.

Used by :mod:`nlvideo.engine.trainer` and :mod:`nlvideo.engine.tester`; everything here works with or
without a process group.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from nlvideo.engine import distributed as du
from nlvideo.engine.config import ConfigError, resolve_device
from nlvideo.models import to_channels_last_3d

log = logging.getLogger("nlvideo.train")

Forward = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
T = TypeVar("T")


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
    # TensorFloat-32 for fp32 matmuls and convolutions (Ampere and newer); cuDNN convolutions use it by
    # default already, matmuls only when asked.
    tf32 = bool(cfg.trainer.get("tf32", True))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    if device.type == "cuda":  # the GPU init_distributed made current; several ranks may share one
        device = torch.device("cuda", du.cuda_index(du.info().local_rank, torch.cuda.device_count()))
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_mode(requested: Any, device: torch.device) -> str | None:
    """``trainer.amp`` as ``bf16``, ``fp16`` or None (off). ``auto`` is bf16 on a CUDA device that has it
    (Ampere and newer; no loss scaling needed) and off on a CPU, where bf16 autocast is slower than fp32
    unless the CPU has AMX."""
    if requested == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return None if requested in (None, False, "off") else str(requested)


def autocast(cfg: DictConfig, device: torch.device) -> contextlib.AbstractContextManager:
    amp = amp_mode(cfg.trainer.amp, device)
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def make_forward(cfg: DictConfig, device: torch.device) -> Forward:
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
    try:
        net = hydra.utils.instantiate(cfg.model)
    except InstantiationException as exc:  # Hydra wraps the builder's one-line error in a dozen
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        raise
    net = net.to(device)
    if cfg.trainer.channels_last:
        net = to_channels_last_3d(net)
    return net


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


def build_split(cfg: DictConfig, split: str, train: bool, batch_size: int, whole_videos: bool = False):
    """Dataset, sampler and loader of one split for this rank. ``whole_videos`` (evaluation): the
    loader's items are whole videos, every view from one decode (:class:`~nlvideo.data.WholeVideos`),
    still scored ``batch_size`` views at a time; the sampler is then over videos."""
    from nlvideo.data import ClipSampler, WholeVideos, build_dataset, build_loader

    info = du.info()
    try:
        ds = build_dataset(cfg.data, split)
    except (ValueError, FileNotFoundError) as exc:  # missing lists/classes, bad data keys: one line
        raise ConfigError(str(exc)) from exc
    ds.report_failures = False  # reported once per run by BadVideoReport, not by every worker
    items = WholeVideos(ds) if whole_videos else ds
    sampler = ClipSampler(len(items), shuffle=train, seed=int(cfg.seed), rank=info.rank,
                          world_size=info.world_size, drop_last=train)
    loader = build_loader(items, cfg.data, sampler, batch_size=batch_size)
    return ds, sampler, loader


def dataset_fingerprint(ds, root: str) -> str:
    """``"<videos>:<hash>"`` of a dataset's classes, videos (relative to ``root``) and labels."""
    digest = hashlib.sha1(repr(list(ds.class_names)).encode())
    for rec in ds.records:
        digest.update(f"{os.path.relpath(rec.path, root)}\0{rec.label}\0{getattr(rec, 'actions', None)}\n"
                      .encode())
    return f"{ds.num_videos}:{digest.hexdigest()[:12]}"


def run_dir_of_this_job() -> Path:
    """Rank 0's Hydra output directory, shared with every rank."""
    path = HydraConfig.get().runtime.output_dir if du.is_main_process() else None
    return Path(du.broadcast_object(path))


def decide_on_main(decide: Callable[[], T]) -> T:
    """Run ``decide()`` on rank 0 only (file-system decisions: locks, which checkpoint) and give every
    rank its result, or raise on every rank the :class:`ConfigError` it raised, so no rank is left
    waiting in a collective for a rank that stopped."""
    outcome = None
    if du.is_main_process():
        try:
            outcome = ("ok", decide())
        except ConfigError as exc:
            outcome = ("error", str(exc))
    kind, value = du.broadcast_object(outcome)
    if kind == "error":
        raise ConfigError(value)
    return value


def task_overrides() -> list[str]:
    """The command-line overrides of this job (stored in checkpoints, so eval.py can recompose)."""
    return list(HydraConfig.get().overrides.task)


