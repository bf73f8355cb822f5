"""The clip dataset and :func:`build_dataset` (config -> dataset).

``data.format`` names the annotation reader in :data:`FORMATS` (Kinetics lists or folders, Charades
CSVs); every other setting comes from the ``data`` config as it is, with no defaults in code
(:mod:`nlvideo.data.config`).

Items are views: ``len(ds) == ds.num_videos * ds.num_views`` and item ``i`` is view
``i % num_views`` of video ``i // num_views``; view ``v`` is temporal clip ``v // num_crops`` and
spatial crop ``v % num_crops``. ``train`` has one random clip per video; ``val`` uses
``data.val.num_clips x data.val.num_crops`` views (scale ``train_jitter_scales[0]``, crop
``train_crop_size``, as PySlowFast validates), ``test`` ``data.test.num_clips x
data.test.num_crops`` at ``test_scale`` / ``test_crop_size``.

``ds[key]`` accepts ``(index, aug_seed)`` from :class:`~nlvideo.data.sampler.ClipSampler` or a plain
index (then the seed is derived from the index). All randomness of the item -- clip start, scale,
crop, flip and the choice of a replacement for a bad video -- comes from ``random.Random(aug_seed)``.

Bad videos (missing, zero-byte, truncated, not a video, no frames) never end an epoch. The item's
``failures`` lists every ``(path, reason)`` met while producing it (the main process counts them:
worker processes cannot share counters) and a warning is logged once per path per process.
``train`` replaces the video by another one drawn from the item's RNG, up to ``data.max_retries``
times, then raises ``RuntimeError`` naming the paths. ``val``/``test`` never substitute another
video's label: the item comes back with ``valid=False``, an all-zero clip and its own label, for
the evaluator to skip and count. The warning can be turned off per dataset
(``ds.report_failures = False``) by a caller that reports the ``failures`` itself, as train.py and
eval.py do (once per run over all loader workers and ranks, see :mod:`nlvideo.engine.bad_videos`).

Returned item: ``clip`` float32 (3, T, H, W); ``label`` int64 scalar, or float32 multi-hot (K,) for
multi-label data; ``video_index``/``view_index`` int64; ``valid`` bool; ``failures`` list.

Repeated clips (``data.clips_per_video`` k > 1, ``train`` only): item ``i`` is k clips of video ``i``
from one decode (:func:`read_clips`), each with its own start, scale, crop and flip: ``clip`` (k, 3, T,
H, W) and per clip ``label`` (k,) or (k, K) (Charades: each clip's actions in its own time span),
``video_index``, ``view_index`` (the clip's number 0..k-1) and ``valid``, all (k,). A bad video is
replaced as above, the replacement giving all k clips. :func:`~nlvideo.data.loader.collate_clip_groups`
turns a batch of them into a batch of single clips.

Whole videos: :class:`WholeVideos` (``val``/``test``; what eval.py loads) has one item per video,
all its views from one decode (:func:`read_views`: each frame that any of its clips needs decoded
once, in one ``get_batch`` call), stacked as ``clip`` (V, 3, T, H, W) with ``view_index``/``valid``
(V,); view ``v`` is bit for bit item ``video * num_views + v`` above.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf.errors import MissingMandatoryValue
from torch.utils.data import Dataset

from nlvideo.data import annotations as ann
from nlvideo.data.config import channels, choice, flag, number, require, shown
from nlvideo.data.decode import DECODERS, DecodeError, DecordVideo, PyAVVideo, open_video
from nlvideo.data.loader import loader_options
from nlvideo.data.sampler import derive_seed
from nlvideo.data.sampling import frame_stride, test_clip_indices, train_clip_indices, union_indices
from nlvideo.data.transforms import test_crop, test_resize, test_transform, train_transform

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
_warned: set[str] = set()


def _warn_once(path: str, reason: str) -> None:
    if path not in _warned:
        _warned.add(path)
        log.warning("skipping unreadable video %s (%s)", path, reason)


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to turn a video into a clip tensor (picklable, for workers)."""

    num_frames: int
    sampling_rate: float  # data.sampling_rate (an integer); multigrid stretches it for coarse grids
    target_fps: float | None
    train: bool
    min_scale: int
    max_scale: int
    crop_size: int
    num_clips: int
    num_crops: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    decoder: str
    decode_threads: int
    max_retries: int
    # Frames of larger videos come from the decoder at short side ``max_scale`` (nlvideo.data.decode);
    # False decodes them at full size and leaves the whole resize to the transforms: the path before,
    # which scripts/bench_decode_memory.py and tests/test_data_decode_size.py compare against.
    scale_on_decode: bool = True
    # Training clips per decoded video (data.clips_per_video; evaluation specs have 1): read_clips.
    clips_per_video: int = 1


def read_clip(
    spec: ClipSpec, path: str, view: int = 0, rng: random.Random | None = None
) -> tuple[torch.Tensor, list[int], float]:
    """Decode and transform view ``view`` of the video at ``path``: the dataset's one code path from a
    file to a clip, also used by tools that show a single video (:mod:`nlvideo.visualize`).

    Returns the clip (3, T, H, W), the frame indices it was taken from and the video's fps (for
    placing the clip in time). ``rng`` draws the clip start, scale, crop and flip of a training spec;
    evaluation views are deterministic and need none. Raises :class:`DecodeError` for an unreadable
    video.
    """
    if spec.train and rng is None:
        raise ValueError("read_clip: a training spec draws its clip from rng; pass one")
    video = _open(spec, path)
    try:
        if spec.train:
            stride = frame_stride(spec.sampling_rate, video.fps, spec.target_fps)
            idx = train_clip_indices(video.num_frames, spec.num_frames, stride, rng)
        else:
            idx = _test_clips(spec, video)[view // spec.num_crops]
        frames = video.get_batch(idx)
    finally:
        video.close()
    mean, std, crop = spec.mean, spec.std, spec.crop_size
    if spec.train:
        clip = train_transform(frames, rng, spec.min_scale, spec.max_scale, crop, mean, std, spec.hflip,
                               video.native_size)
    else:
        clip = test_transform(frames, spec.min_scale, crop, view % spec.num_crops, spec.num_crops, mean, std)
    return clip, idx, video.fps


def read_clips(spec: ClipSpec, path: str, rng: random.Random) -> tuple[torch.Tensor, list[list[int]], float]:
    """``spec.clips_per_video`` training clips of the video at ``path`` from one decode, for when decoding
    costs more than the rest of a clip (large or long-GOP videos): the video opened once (frames at the
    decode-time size of :func:`_open`), each clip's frame indices drawn from ``rng``
    (:func:`~nlvideo.data.sampling.train_clip_indices`), their union decoded in one ``get_batch`` call,
    each frame once (:func:`~nlvideo.data.sampling.union_indices`), then each clip gathered from those
    frames and given its own scale, crop and flip, drawn from ``rng`` in clip order, by
    :func:`~nlvideo.data.transforms.train_transform` as :func:`read_clip` gives one. That transform
    resizes only the crop box of each clip (``resized_crop``), so there is no whole-frame resize for the
    clips to share.

    Returns the clips (k, 3, T, H, W), each clip's frame indices and the video's fps. Raises
    :class:`DecodeError` for an unreadable video."""
    if not spec.train:
        raise ValueError("read_clips: repeated clips are training clips; evaluation reads views")
    video = _open(spec, path)
    try:
        stride = frame_stride(spec.sampling_rate, video.fps, spec.target_fps)
        clips = [train_clip_indices(video.num_frames, spec.num_frames, stride, rng)
                 for _ in range(spec.clips_per_video)]
        union, positions = union_indices(clips)
        frames = video.get_batch(union)
    finally:
        video.close()
    crop = spec.crop_size
    out = torch.empty(len(clips), 3, spec.num_frames, crop, crop)  # every clip written
    for clip, pos in zip(out, positions, strict=True):
        train_transform(frames[pos], rng, spec.min_scale, spec.max_scale, crop, spec.mean, spec.std,
                        spec.hflip, video.native_size, out=clip)
    return out, clips, video.fps


def _open(spec: ClipSpec, path: str) -> DecordVideo | PyAVVideo:
    short_side = spec.max_scale if spec.scale_on_decode else None  # no later resize needs more pixels
    return open_video(path, spec.decoder, spec.decode_threads, short_side)


def _test_clips(spec: ClipSpec, video: DecordVideo | PyAVVideo) -> list[list[int]]:
    """The frame indices of each of the ``num_clips`` temporal clips of an evaluation spec."""
    stride = frame_stride(spec.sampling_rate, video.fps, spec.target_fps)
    return [test_clip_indices(video.num_frames, spec.num_frames, stride, c, spec.num_clips)
            for c in range(spec.num_clips)]


def read_views(spec: ClipSpec, path: str) -> tuple[torch.Tensor, list[DecodeError | None]]:
    """Every view of an evaluation spec from one decode of the video at ``path``: float32 (V, 3, T, H,
    W), view ``v`` bit for bit ``read_clip(spec, path, v)[0]``, and per view None or the
    :class:`DecodeError` that left it all zeros. :func:`iter_views` in one batch."""
    return next(iter_views(spec, path, spec.num_clips * spec.num_crops))


def iter_views(spec: ClipSpec, path: str, batch_size: int
               ) -> Iterator[tuple[torch.Tensor, list[DecodeError | None]]]:
    """The views of :func:`read_views`, in order, ``batch_size`` at a time (the last batch may be
    smaller): memory holds one batch of views and the decoded frames, whatever the number of views.

    The steps: open the video once; the frame indices of the ``num_clips`` temporal clips
    (:func:`~nlvideo.data.sampling.test_clip_indices`); their union, decoded in one ``get_batch`` call,
    each frame once (:func:`~nlvideo.data.sampling.union_indices`); those frames resized once
    (:func:`~nlvideo.data.transforms.test_resize`); then each view gathered from them and cropped
    (:func:`~nlvideo.data.transforms.test_crop`). When the union cannot be decoded by the reader's own
    path (a truncated file, a frame the decoders index differently: ``get_batch(strict=True)``), each
    temporal clip is read as :func:`read_clip` reads it, so a clip that decoded before still does,
    from the same frames, and one that failed fails with the same reason.
    """
    if spec.train:
        raise ValueError("read_views: a training spec has no fixed views; use read_clip")
    sources = _view_sources(spec, path)
    num_views = spec.num_clips * spec.num_crops
    for start in range(0, num_views, batch_size):
        out = torch.empty(min(batch_size, num_views - start), 3, spec.num_frames, spec.crop_size,
                          spec.crop_size)  # every view written
        errors: list[DecodeError | None] = []
        for view, (v, (clip, error)) in zip(out, enumerate(sources, start), strict=False):
            if error is None:
                test_crop(clip, spec.crop_size, v % spec.num_crops, spec.num_crops, spec.mean, spec.std,
                          out=view)
            else:
                view.zero_()
            errors.append(error)
        yield out, errors


def _view_sources(spec: ClipSpec, path: str) -> Iterator[tuple[torch.Tensor | None, DecodeError | None]]:
    """For each view in order: its resized temporal clip (T, C, H, W) (the same tensor for the
    ``num_crops`` views of a clip), or the :class:`DecodeError` that leaves it unread."""
    num_views, crops = spec.num_clips * spec.num_crops, spec.num_crops
    try:
        video = _open(spec, path)
    except DecodeError as e:
        yield from [(None, e)] * num_views
        return
    try:
        union, positions = union_indices(_test_clips(spec, video))
        frames = video.get_batch(union, strict=True)
    except DecodeError:
        frames = None
    finally:
        video.close()
    if frames is None:
        yield from _view_sources_per_clip(spec, path)
        return
    resized = test_resize(frames, spec.min_scale)
    for pos in positions:
        clip = resized[torch.tensor(pos)]
        yield from [(clip, None)] * crops


def _view_sources_per_clip(spec: ClipSpec, path: str
                           ) -> Iterator[tuple[torch.Tensor | None, DecodeError | None]]:
    """:func:`_view_sources` one temporal clip at a time (open, decode its frames, resize), as
    :func:`read_clip` reads them: for videos whose frames cannot all be decoded at once."""
    for c in range(spec.num_clips):
        try:
            video = _open(spec, path)
            try:
                frames = video.get_batch(_test_clips(spec, video)[c])
            finally:
                video.close()
        except DecodeError as e:
            yield from [(None, e)] * spec.num_crops
            continue
        yield from [(test_resize(frames, spec.min_scale), None)] * spec.num_crops


class VideoDataset(Dataset):
    def __init__(
        self,
        records: Sequence[ann.VideoRecord],
        class_names: Sequence[str],
        split: str,
        spec: ClipSpec,
        multi_label: bool = False,
    ):
        if split not in SPLITS:
            raise ValueError(f"split {split!r}; expected one of {SPLITS}")
        self.records = list(records)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.split = split
        self.spec = spec
        self.multi_label = multi_label
        self.num_videos = len(self.records)
        self.num_views = spec.num_clips * spec.num_crops
        # Clips an item holds (data.clips_per_video for train, else 1): build_loader batches
        # batch_size / clips_per_item items and flattens them into clips.
        self.clips_per_item = spec.clips_per_video
        self.grid_specs = [spec]  # training specs of each sampling grid (multigrid), the first the target
        self.report_failures = True  # warn once per path and process (off when the caller reports)

    def __len__(self) -> int:
        return self.num_videos * self.num_views

    def video_labels(self, video_index: int) -> list[int]:
        return self.records[video_index].video_labels

    def video_target(self, video_index: int) -> torch.Tensor:
        """Video-level target: int64 label, or float32 multi-hot (K,)."""
        return self._target(self.video_labels(video_index))

    def _target(self, labels: Sequence[int]) -> torch.Tensor:
        if self.multi_label:
            t = torch.zeros(self.num_classes, dtype=torch.float32)
            t[list(labels)] = 1.0
            return t
        return torch.tensor(labels[0], dtype=torch.int64)

    def _load(self, rec: ann.VideoRecord, view: int, rng: random.Random, spec: ClipSpec
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The item's clip and target: one clip (3, T, H, W), or the ``clips_per_item`` clips of
        :func:`read_clips` (k, 3, T, H, W) with one target per clip (k,) / (k, K)."""
        if self.clips_per_item > 1:
            clips, indices, fps = read_clips(spec, rec.path, rng)
            return clips, torch.stack([self._clip_target(rec, idx, fps) for idx in indices])
        clip, idx, fps = read_clip(spec, rec.path, view, rng)
        return clip, self._clip_target(rec, idx, fps)

    def _clip_target(self, rec: ann.VideoRecord, idx: Sequence[int], fps: float) -> torch.Tensor:
        """A clip's target: multi-label training clips get the actions of their own time span."""
        if self.multi_label and self.split == "train" and fps > 0:
            return self._target(rec.labels_in_span(idx[0] / fps, (idx[-1] + 1) / fps))
        return self._target(rec.video_labels)

    def video_item(self, video_index: int) -> dict[str, Any]:
        """Every view of video ``video_index`` from one decode (:func:`read_views`; ``val``/``test``):
        ``clip`` (V, 3, T, H, W), ``label``, ``video_index``, ``view_index`` (V,), ``valid`` (V,) and
        ``failures`` (each ``(path, reason)`` once). View ``v`` is item ``video_index * num_views + v``,
        bit for bit; a view that item would flag invalid is flagged here, all zeros, for the same
        reason."""
        if self.split == "train":
            raise ValueError("video_item: the training split has no fixed views")
        clips, errors = read_views(self.spec, self.records[video_index].path)
        failures = list(dict.fromkeys((e.path, e.reason) for e in errors if e is not None))
        if self.report_failures:
            for path, reason in failures:
                _warn_once(path, reason)
        return {
            "clip": clips,
            "label": self.video_target(video_index),
            "video_index": torch.tensor(video_index, dtype=torch.int64),
            "view_index": torch.arange(self.num_views, dtype=torch.int64),
            "valid": torch.tensor([e is None for e in errors]),
            "failures": failures,
        }

    def __getitem__(self, key: int | tuple[int, int] | tuple[int, int, int]) -> dict[str, Any]:
        """Item ``index``, or ``(index, aug_seed)``, or ``(index, aug_seed, grid)``: a training clip at
        sampling grid ``grid_specs[grid]`` (multigrid training; :mod:`nlvideo.engine.plan`)."""
        spec = self.spec
        if isinstance(key, (tuple, list)):
            index, seed = int(key[0]), int(key[1])
            if len(key) > 2:
                spec = self.grid_specs[int(key[2])]
        else:
            index = int(key)
            seed = derive_seed(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = random.Random(seed)
        video_index, view = divmod(index, self.num_views)
        failures: list[tuple[str, str]] = []
        while True:
            rec = self.records[video_index]
            try:
                clip, label = self._load(rec, view, rng, spec)
                valid = True
                break
            except DecodeError as e:
                failures.append((e.path, e.reason))
                if self.report_failures:
                    _warn_once(e.path, e.reason)
            if self.split != "train":
                s = self.spec
                clip = torch.zeros(3, s.num_frames, s.crop_size, s.crop_size)
                label = self.video_target(video_index)
                valid = False
                break
            if len(failures) > self.spec.max_retries:
                paths = ", ".join(p for p, _ in failures)
                raise RuntimeError(
                    f"{len(failures)} consecutive unreadable videos for item {index} "
                    f"(data.max_retries={self.spec.max_retries}): {paths}"
                )
            video_index = rng.randrange(self.num_videos)
        item = {
            "clip": clip,
            "label": label,
            "video_index": torch.tensor(video_index, dtype=torch.int64),
            "view_index": torch.tensor(view, dtype=torch.int64),
            "valid": torch.tensor(valid),
            "failures": failures,
        }
        if self.clips_per_item > 1:  # one entry per clip, the clip's number as its view index
            k = self.clips_per_item
            item.update(video_index=item["video_index"].repeat(k), view_index=torch.arange(k),
                        valid=item["valid"].repeat(k))
        return item


class WholeVideos(Dataset):
    """An evaluation split (``val``/``test``) of a :class:`VideoDataset` with whole videos as items: item
    ``i`` is ``videos.video_item(i)``, its ``num_views`` views from one decode. Keys as
    :class:`VideoDataset` takes them (the seed of ``(index, seed)`` is unused: views draw nothing).
    ``views_per_item`` tells :func:`~nlvideo.data.loader.build_loader` to batch whole videos."""

    def __init__(self, videos: VideoDataset):
        if videos.split == "train":
            raise ValueError("WholeVideos: the training split has no fixed views")
        self.videos = videos
        self.split = videos.split
        self.views_per_item = videos.num_views

    def __len__(self) -> int:
        return self.videos.num_videos

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = int(key[0]) if isinstance(key, (tuple, list)) else int(key)
        if not 0 <= index < len(self):
            raise IndexError(f"video {index} out of range for {len(self)} videos")
        return self.videos.video_item(index)


def class_usage_warning(ds: VideoDataset) -> str | None:
    """A warning when the videos of ``ds`` use at most half of its classes, naming the ones they use.

    With integer labels the class count is ``data.num_classes`` (400 for ``data=kinetics400``), so a
    2-class list trains a 400-way classifier whose validation reads ``top1 0.00``, and nothing says
    why. Meant for the training split at start-up (a small test split may rightly use few classes)."""
    used = sorted({label for rec in ds.records for label in rec.video_labels})
    if len(used) > ds.num_classes / 2:
        return None
    names = ", ".join(ds.class_names[i] for i in used[:10]) + (", ..." if len(used) > 10 else "")
    hint = (f"set data.num_classes={len(used)} if the data has {len(used)} classes"
            if used == list(range(len(used))) else "check data.num_classes and the labels")
    return (f"{ds.split}: the {ds.num_videos} videos use {len(used)} of the {ds.num_classes} classes "
            f"({names}): the classifier has {ds.num_classes - len(used)} outputs that are never a target; "
            f"{hint}")


def split_overlap_warning(train: VideoDataset, other: VideoDataset) -> str | None:
    """A warning when videos of ``other`` (validation, or Charades' test CSV) are training videos too:
    their scores overstate accuracy on unseen videos. ``python -m nlvideo.data.check`` names them all."""
    trained = {os.path.normpath(r.path) for r in train.records}
    both = sorted({os.path.normpath(r.path) for r in other.records} & trained)
    if not both:
        return None
    return (f"{other.split}: {len(both)} of its {other.num_videos} videos are training videos too (e.g. "
            f"{ann.shown_path(both[0])}): its scores overstate accuracy on unseen videos")


# ----------------------------------------------------------------------------------- build_dataset


def data_root(cfg: Mapping) -> Path:
    """``data.root`` with a hint on what to pass when it is missing (``???`` in the yaml).

    :func:`nlvideo.engine.config.validate_config` makes the same check for train.py and eval.py; this
    one serves every other caller of :func:`build_dataset` (``nlvideo.visualize``, scripts, tests).
    """
    try:
        root = cfg["root"]
    except (KeyError, MissingMandatoryValue):  # absent, or ``???``
        root = None
    if root in (None, "", "???"):
        name = cfg.get("name") or "?"
        raise ValueError(f"data.root is required for data={name}: set data.root=/path/to/videos")
    return Path(str(root)).expanduser()


def _scales(cfg: Mapping) -> tuple[int, int]:
    """``data.train_jitter_scales``: [min, max] short sides of the random training scale."""
    scales = require(cfg, "train_jitter_scales")
    ok = isinstance(scales, Sequence) and not isinstance(scales, str) and len(scales) == 2
    ok = ok and all(type(s) is int for s in scales) and 1 <= scales[0] <= scales[1]  # a bool is no scale
    if not ok:
        raise ValueError(f"data.train_jitter_scales={shown(scales)} must be [min, max]: integers with "
                         "1 <= min <= max")
    return int(scales[0]), int(scales[1])


def clips_per_video(cfg: Mapping) -> int:
    """``data.clips_per_video``: training clips per decoded video, an integer >= 1. Configs saved before
    the key existed (in checkpoints, read back by predict.py and export) lack it, which means 1."""
    if "clips_per_video" not in cfg:
        return 1
    return number(cfg, "clips_per_video", integer=True, at_least=1)


def clip_spec(cfg: Mapping, split: str) -> ClipSpec:
    """The :class:`ClipSpec` of ``split`` from the ``data`` config, every value checked (one-line
    ``ValueError`` naming the key; nothing is read from disk, so ``validate_config`` runs it first).

    Every value comes from the config (see :mod:`nlvideo.data.config`: the yaml holds the defaults).
    The evaluation views default to PySlowFast's: ``val`` at ``train_jitter_scales[0]`` /
    ``train_crop_size``, ``test`` at ``test_scale`` / ``test_crop_size``; ``data.<split>.scale`` and
    ``data.<split>.crop_size`` (absent from the yamls) override them when given. Only ``train`` reads
    ``data.clips_per_video``.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; expected one of {SPLITS}")
    min_scale, max_scale = _scales(cfg)
    train_crop = number(cfg, "train_crop_size", integer=True, at_least=1)
    if train_crop > min_scale:
        raise ValueError(f"data.train_crop_size={train_crop} is larger than the smallest training scale "
                         f"data.train_jitter_scales[0]={min_scale}")
    common = dict(
        num_frames=number(cfg, "num_frames", integer=True, at_least=1),
        sampling_rate=number(cfg, "sampling_rate", integer=True, at_least=1),
        target_fps=number(cfg, "target_fps", above=0, optional=True),
        mean=channels(cfg, "mean"),
        std=channels(cfg, "std", positive=True),
        hflip=flag(cfg, "train_hflip"),
        decoder=choice(cfg, "decoder", list(DECODERS)),
        decode_threads=number(cfg, "decode_threads", integer=True, at_least=0),
        max_retries=number(cfg, "max_retries", integer=True, at_least=0),
    )
    if split == "train":
        return ClipSpec(
            train=True,
            min_scale=min_scale,
            max_scale=max_scale,
            crop_size=train_crop,
            num_clips=1,
            num_crops=1,
            clips_per_video=clips_per_video(cfg),
            **common,
        )
    views, where = require(cfg, split), f"data.{split}"
    if split == "val":
        scale, crop = min_scale, train_crop
    else:
        scale = number(cfg, "test_scale", integer=True, at_least=1)
        crop = number(cfg, "test_crop_size", integer=True, at_least=1)
    if views.get("scale") is not None:
        scale = number(views, "scale", where, integer=True, at_least=1)
    if views.get("crop_size") is not None:
        crop = number(views, "crop_size", where, integer=True, at_least=1)
    if crop > scale:
        raise ValueError(f"data: {split} crop size {crop} is larger than its short-side scale {scale}")
    return ClipSpec(
        train=False,
        min_scale=scale,
        max_scale=scale,
        crop_size=crop,
        num_clips=number(views, "num_clips", where, integer=True, at_least=1),
        num_crops=number(views, "num_crops", where, integer=True, at_least=1),
        **common,
    )


def _split_file(cfg: Mapping, root: Path, split: str) -> Path:
    key = f"{split}_list"
    name = require(cfg, key)
    if name is None:
        raise ValueError(f"data.{key} is not set (the annotation file of the {split!r} split)")
    p = Path(str(name))
    return p if p.is_absolute() else root / p


Annotations = tuple[list[ann.VideoRecord], list[str]]


def _read_kinetics_csv(
    cfg: Mapping, root: Path, split: str, num_classes: int | None, class_file: Path | None
) -> Annotations:
    return ann.read_kinetics_list(
        _split_file(cfg, root, split), root, num_classes, class_file, _split_file(cfg, root, "train")
    )


def _read_kinetics_folder(
    cfg: Mapping, root: Path, split: str, num_classes: int | None, class_file: Path | None
) -> Annotations:
    class_names = None
    if split != "train":  # the class order is the training split's, whatever folders val/test have
        _, class_names = ann.read_kinetics_folder(root / str(require(cfg, "train_dir")), num_classes)
    return ann.read_kinetics_folder(root / str(require(cfg, f"{split}_dir")), num_classes, class_names)


def _read_charades(
    cfg: Mapping, root: Path, split: str, num_classes: int | None, class_file: Path | None
) -> Annotations:
    if num_classes is None:
        raise ValueError("data.num_classes is required for data.format=charades (157 for Charades v1)")
    csv_file = _split_file(cfg, root, split)
    records = ann.read_charades_csv(
        csv_file, root / str(require(cfg, "video_dir")), num_classes, str(require(cfg, "video_ext"))
    )
    log.info("%s: %s", split, ann.charades_summary(records, csv_file))  # bad annotation/video pairs, visible
    return records, ann.charades_class_names(num_classes, class_file)


@dataclass(frozen=True)
class DataFormat:
    """How to read one ``data.format``: its annotation reader and whether its labels are multi-label.

    ``read(cfg, root, split, num_classes, class_file) -> (records, class_names)``.
    """

    read: Callable[[Mapping, Path, str, int | None, Path | None], Annotations]
    multi_label: bool


# data.format -> reader. A new annotation format is one entry here.
FORMATS: dict[str, DataFormat] = {
    "kinetics_csv": DataFormat(_read_kinetics_csv, multi_label=False),
    "kinetics_folder": DataFormat(_read_kinetics_folder, multi_label=False),
    "charades": DataFormat(_read_charades, multi_label=True),
}


def _data_format(cfg: Mapping) -> tuple[DataFormat, bool, int | None]:
    """``data.format``'s reader, ``data.multi_label`` (which must fit it) and ``data.num_classes``."""
    fmt_name = choice(cfg, "format", list(FORMATS))
    fmt = FORMATS[fmt_name]
    multi_label = flag(cfg, "multi_label")
    if multi_label != fmt.multi_label:
        raise ValueError(f"data.multi_label={multi_label} does not fit data.format={fmt_name}")
    return fmt, multi_label, number(cfg, "num_classes", integer=True, at_least=1, optional=True)


def _exclude_list(cfg: Mapping) -> Path | None:
    """``data.exclude_list``: a file, or null. Configs saved before the key existed (in checkpoints, read
    back by predict.py and export) lack it, which means the same: nothing is excluded."""
    value = cfg.get("exclude_list")
    if value is not None and not isinstance(value, str):
        raise ValueError(f"data.exclude_list={shown(value)} must be a file (as python -m nlvideo.data.check "
                         "writes it) or null")
    return None if value is None else Path(value).expanduser()


def _without_excluded(cfg: Mapping, root: Path, split: str, records: list[ann.VideoRecord]
                      ) -> list[ann.VideoRecord]:
    """``records`` less the videos of ``data.exclude_list`` (relative paths: from the working directory),
    with one log line counting them."""
    path = _exclude_list(cfg)
    if path is None:
        return records
    excluded = ann.read_exclude_list(path, root)
    kept = [r for r in records if os.path.normpath(r.path) not in excluded]
    log.info("%s: %d of %d videos left out by data.exclude_list=%s", split, len(records) - len(kept),
             len(records), path)
    if not kept:
        raise ValueError(f"data.exclude_list={path} leaves no {split} video")
    return kept


def check_data_config(cfg: Mapping) -> None:
    """Check every value of the ``data`` config that the pipeline reads, without touching a file:
    :func:`nlvideo.engine.config.validate_config` runs it so that ``data.sampling_rate=0`` or
    ``data.std=0`` is one line at start-up, not a traceback (or a wrong clip) at the first batch."""
    _data_format(cfg)
    _exclude_list(cfg)
    number(cfg, "batch_size", integer=True, at_least=1)
    for split in SPLITS:
        clip_spec(cfg, split)
    loader_options(cfg)


def build_dataset(cfg: Mapping, split: str) -> VideoDataset:
    """Dataset for ``split`` in {"train", "val", "test"} from the ``data`` config group, less the videos of
    ``data.exclude_list`` when it is set."""
    spec = clip_spec(cfg, split)
    root = data_root(cfg)
    fmt, multi_label, num_classes = _data_format(cfg)
    generate = cfg.get("generate")  # only the built-in synthetic dataset has this key
    if generate is not None:
        from nlvideo.data.synthetic import ensure_synthetic

        ensure_synthetic(root, **dict(generate))
    class_file = require(cfg, "class_file")
    if class_file is not None:
        class_file = root / str(class_file)  # relative to the root; an absolute path stays as it is
    records, class_names = fmt.read(cfg, root, split, num_classes, class_file)
    records = _without_excluded(cfg, root, split, records)
    return VideoDataset(records, class_names, split, spec, multi_label=multi_label)
