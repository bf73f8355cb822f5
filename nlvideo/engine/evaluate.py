"""Multi-view evaluation: aggregate clip scores per video, then top-k accuracy or mAP.

Each test video is seen as ``num_views`` clips (temporal clips x spatial crops); eval.py reads them
together, from one decode of the video (:class:`~nlvideo.data.dataset.WholeVideos`), and scores them
``data.batch_size`` clips at a time. Clip logits become probabilities (softmax for single-label data
such as Kinetics, sigmoid for multi-label data such as Charades) and are averaged per
``video_index``, as in the paper's testing protocol. Under DDP every rank accumulates the clips it saw
into a (num_videos, K) sum and a count; one all-reduce then gives every rank the full result, so
metrics are exact over the whole split, not a mean of per-rank means.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from nlvideo.engine import distributed as du
from nlvideo.engine.faults import sigkill_point
from nlvideo.engine.logging import Progress

log = logging.getLogger(__name__)


def clip_probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """(B, K) clip logits -> probabilities: sigmoid per class for multi-label data, else softmax.

    Shared by evaluation and :mod:`nlvideo.predict`, so a prediction is scored as eval.py scores it.
    """
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)


def clip_losses(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """(B,) loss of each clip under the training objective (cross-entropy; binary cross-entropy averaged
    over classes for multi-label data), so a validation loss reads on the scale of ``train/loss``."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").mean(1)
    return F.cross_entropy(logits, labels.long(), reduction="none")


class VideoScoreAggregator:
    """Running per-video sum of clip probabilities, plus each video's label and the summed clip loss."""

    def __init__(self, num_videos: int, num_classes: int, multi_label: bool,
                 output_order: list[int] | None = None):
        """``output_order[j]``: the model output that scores the data's class ``j`` (None: output j).
        Probabilities are computed in the model's order and then permuted, so a model evaluated on a
        list that orders its classes differently scores exactly as on its own order."""
        self.multi_label = multi_label
        self.order = None if output_order is None else torch.tensor(output_order)
        self.scores = torch.zeros(num_videos, num_classes, dtype=torch.float64)
        self.counts = torch.zeros(num_videos, dtype=torch.float64)
        label_shape = (num_videos, num_classes) if multi_label else (num_videos,)
        self.label_sum = torch.zeros(label_shape, dtype=torch.float64)
        self.label_seen = torch.zeros(num_videos, dtype=torch.float64)
        self.failed = torch.zeros(num_videos, dtype=torch.float64)
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.failures: dict[str, str] = {}  # path -> reason of the unreadable videos met on this rank

    def update(self, logits: torch.Tensor, labels: torch.Tensor, video_index: torch.Tensor,
               valid: torch.Tensor | None = None) -> None:
        logits = logits.detach().float().cpu()
        video_index = video_index.long().cpu()
        labels = labels.cpu()
        keep = torch.ones(len(video_index), dtype=torch.bool) if valid is None else valid.bool().cpu()
        if (~keep).any():
            self.failed.index_fill_(0, video_index[~keep], 1.0)
        if not keep.any():
            return
        logits, labels, video_index = logits[keep], labels[keep], video_index[keep]
        probs = clip_probabilities(logits, self.multi_label)
        self.loss_sum += clip_losses(logits, self._in_model_order(labels), self.multi_label).double().sum()
        if self.order is not None:
            probs = probs[:, self.order]
        self.scores.index_add_(0, video_index, probs.double())
        self.counts.index_add_(0, video_index, torch.ones(len(video_index), dtype=torch.float64))
        self.label_sum[video_index] = labels.double()  # every view of a video has the same label
        self.label_seen[video_index] = 1.0

    def _in_model_order(self, labels: torch.Tensor) -> torch.Tensor:
        """The data's labels as the model's class indices (or columns, multi-label)."""
        if self.order is None:
            return labels
        if self.multi_label:
            return labels[:, torch.argsort(self.order)]
        return self.order[labels.long()]

    def reduce(self) -> None:
        """Sum the accumulators over ranks (call on every rank)."""
        self.scores = du.all_reduce_sum(self.scores)
        self.counts = du.all_reduce_sum(self.counts)
        self.failed = du.all_reduce_sum(self.failed).clamp(max=1)
        self.label_sum = du.all_reduce_sum(self.label_sum)
        self.label_seen = du.all_reduce_sum(self.label_seen)
        self.loss_sum = du.all_reduce_sum(self.loss_sum)

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(indices of videos with at least one valid clip, their mean scores, their labels)."""
        present = torch.nonzero(self.counts > 0).flatten()
        mean = self.scores[present] / self.counts[present, None]
        seen = self.label_seen[present].clamp(min=1)
        labels = self.label_sum[present] / (seen[:, None] if self.multi_label else seen)
        return present, mean.float(), labels

    @property
    def num_failed(self) -> int:
        """Videos none of whose clips could be decoded (skipped in the metrics)."""
        return int(((self.failed > 0) & (self.counts == 0)).sum())

    @property
    def num_views_scored(self) -> int:
        """Clips that were decoded and scored (fewer than videos x views when some views failed)."""
        return int(self.counts.sum())

    def metrics(self) -> dict[str, float]:
        """:func:`compute_metrics` of the per-video scores plus ``loss``, the mean loss over the scored
        clips; empty when nothing was scored."""
        _, scores, labels = self.result()
        metrics = compute_metrics(scores, labels, self.multi_label)
        if metrics:
            metrics["loss"] = float(self.loss_sum) / self.num_views_scored
        return metrics


def compute_metrics(scores: torch.Tensor, labels: torch.Tensor, multi_label: bool,
                    topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """top-k accuracy in percent (single-label) or mAP in percent (multi-label)."""
    from nlvideo.engine.metrics import mean_average_precision, topk_accuracy

    if scores.numel() == 0:
        return {}
    if multi_label:
        return {"mAP": 100.0 * float(mean_average_precision(scores, labels.float()))}
    ks = [k for k in topk if k <= scores.shape[1]]
    accs = topk_accuracy(scores, labels.long(), ks=ks)
    return {f"top{k}": 100.0 * float(accs[k]) for k in ks}


def rank_positions_kept(num_items: int, rank: int, world_size: int, count: int) -> torch.Tensor:
    """For DistributedSampler-style striding without drop_last: which of this rank's ``count``
    positions are real samples (True) rather than the padding repeated to even out ranks."""
    pos = rank + torch.arange(count) * world_size
    return pos < num_items


def write_predictions(path: str | os.PathLike, video_ids: Sequence[str], scores: torch.Tensor,
                      labels: torch.Tensor, class_names: Sequence[str], multi_label: bool,
                      k: int = 5) -> None:
    """One row per video: id, ground truth, top-k predicted classes with their scores."""
    k = min(k, scores.shape[1])
    top_scores, top_idx = scores.topk(k, dim=1)
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "label", "pred", "score", f"top{k}", f"top{k}_scores"])
        for vid, lab, idx, sc in zip(video_ids, labels, top_idx.tolist(), top_scores.tolist(), strict=True):
            if multi_label:
                truth = ";".join(class_names[i] for i in torch.nonzero(lab > 0.5).flatten().tolist())
            else:
                truth = class_names[int(lab)]
            w.writerow([vid, truth, class_names[idx[0]], f"{sc[0]:.6f}",
                        ";".join(class_names[i] for i in idx), ";".join(f"{s:.6f}" for s in sc)])


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` (same directory, same ending) for the block to write; renamed
    over ``path`` when the block succeeds, removed when it fails. ``os.replace`` is atomic on POSIX: a
    reader, or a process killed while writing, sees the previous file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


STAGING_PREFIX = ".results-"  # + run id: the staging folder of an evaluation being written


@contextlib.contextmanager
def one_evaluation(out_dir: Path, run_id: str, names: Sequence[str],
                   marker: str = "metrics.json") -> Iterator[Path]:
    """A staging folder inside ``out_dir`` for one evaluation's result files, published into ``out_dir``
    when the block succeeds.

    Publishing removes the previous evaluation's ``names`` (its ``marker`` first), then renames the new
    files in, ``marker`` last. So a directory with a ``marker`` holds the files of the evaluation it
    names and no other's; a process killed while writing leaves the previous evaluation whole (and the
    staging folder, which the next evaluation in ``out_dir`` removes), one killed while publishing
    leaves some new files and no ``marker`` (crash tests: :func:`~nlvideo.engine.faults.sigkill_point`
    ``staged`` and ``publishing``)."""
    for stale in out_dir.glob(STAGING_PREFIX + "*"):  # of killed evaluations: the run-dir lock is ours
        shutil.rmtree(stale, ignore_errors=True)
    stage = out_dir / f"{STAGING_PREFIX}{run_id}"
    stage.mkdir()
    try:
        yield stage
        sigkill_point("staged")
        for name in (marker, *names):
            (out_dir / name).unlink(missing_ok=True)
        new = sorted(p.name for p in stage.iterdir())
        for i, name in enumerate(sorted(new, key=lambda n: n == marker)):
            os.replace(stage / name, out_dir / name)
            if i == 0:
                sigkill_point("publishing")
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@torch.no_grad()
def run_evaluation(model: torch.nn.Module, loader, num_videos: int, num_classes: int, multi_label: bool,
                   forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
                   progress: Progress | None = None,
                   output_order: list[int] | None = None) -> VideoScoreAggregator:
    """Forward every clip of ``loader`` and aggregate per video (all-reduced over ranks).

    The loader's items are views, or whole videos (:class:`~nlvideo.data.dataset.WholeVideos`, all
    views of a video from one decode): their views go to the model ``loader.views_per_batch`` at a time
    (:func:`~nlvideo.data.loader.regroup_views`), the same model batches as a loader of their views.
    Padding that a DistributedSampler-style sampler adds to even out ranks is dropped, so each view is
    counted once. ``forward(model, clip) -> logits``; ``progress`` ticks once per loader batch;
    ``output_order``: see :class:`VideoScoreAggregator`.
    """
    from nlvideo.data.loader import regroup_views

    was_training = model.training
    model.eval()
    agg = VideoScoreAggregator(num_videos, num_classes, multi_label, output_order)
    for views in regroup_views(_without_padding(loader, progress), getattr(loader, "views_per_batch", None)):
        logits = forward(model, views["clip"])
        agg.update(logits, views["label"], views["video_index"], views["valid"])
        for path, reason in views["failures"]:
            agg.failures.setdefault(path, reason)
    agg.reduce()
    model.train(was_training)
    return agg


def _without_padding(loader, progress: Progress | None) -> Iterator[dict]:
    """The loader's batches with ``valid`` False on the positions a sampler repeated to even out ranks
    (:func:`rank_positions_kept`; an item of whole videos: all its views), ticking ``progress``."""
    info = du.info()
    n_items = len(loader.dataset)
    seen = 0
    for batch in loader:
        b = len(batch["video_index"])
        keep = rank_positions_kept(n_items, info.rank, info.world_size, seen + b)[seen:]
        seen += b
        per_view = batch["clip"].shape[:2] if batch["clip"].dim() == 6 else (b,)  # items of whole videos
        valid = batch.get("valid", torch.ones(per_view, dtype=torch.bool)).bool().cpu()
        yield {**batch, "valid": valid & (keep if valid.dim() == 1 else keep[:, None])}
        if progress is not None:
            progress.update()


def evaluate_dataset(model: torch.nn.Module, loader, ds, forward: Callable[[torch.nn.Module, torch.Tensor],
                     torch.Tensor], trainer_cfg, desc: str,
                     output_order: list[int] | None = None) -> VideoScoreAggregator:
    """:func:`run_evaluation` over every view of dataset ``ds`` with the progress display that
    ``trainer.progress`` / ``trainer.log_period`` ask for (validation in training, and eval.py)."""
    progress = Progress(loader, total=len(loader), desc=desc, mode=trainer_cfg.progress,
                        log_period=int(trainer_cfg.log_period))
    try:
        return run_evaluation(model, loader, ds.num_videos, ds.num_classes, bool(ds.multi_label), forward,
                              progress=progress, output_order=output_order)
    finally:
        progress.close()
