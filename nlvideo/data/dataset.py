"""The clip dataset and :func:`build_dataset` (config -> dataset).

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
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from nlvideo.data import annotations as ann
from nlvideo.data.decode import DecodeError, open_video
from nlvideo.data.sampler import derive_seed
from nlvideo.data.sampling import frame_stride, test_clip_indices, train_clip_indices
from nlvideo.data.transforms import test_transform, train_transform

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
    sampling_rate: int
    target_fps: float | None
    train: bool
    min_scale: int
    max_scale: int
    crop_size: int
    num_clips: int
    num_crops: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool = True
    decoder: str = "decord"
    decode_threads: int = 1
    max_retries: int = 10


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

    def _load(self, rec: ann.VideoRecord, view: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.spec
        video = open_video(rec.path, s.decoder, s.decode_threads)
        try:
            stride = frame_stride(s.sampling_rate, video.fps, s.target_fps)
            if s.train:
                idx = train_clip_indices(video.num_frames, s.num_frames, stride, rng)
            else:
                idx = test_clip_indices(
                    video.num_frames, s.num_frames, stride, view // s.num_crops, s.num_clips
                )
            frames = video.get_batch(idx)
        finally:
            video.close()
        if s.train:
            clip = train_transform(frames, rng, s.min_scale, s.max_scale, s.crop_size, s.mean, s.std, s.hflip)
        else:
            clip = test_transform(
                frames, s.min_scale, s.crop_size, view % s.num_crops, s.num_crops, s.mean, s.std
            )
        if self.multi_label and self.split == "train" and video.fps > 0:
            labels = rec.labels_in_span(idx[0] / video.fps, (idx[-1] + 1) / video.fps)
        else:
            labels = rec.video_labels
        return clip, self._target(labels)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, (tuple, list)):
            index, seed = int(key[0]), int(key[1])
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
                clip, label = self._load(rec, view, rng)
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
        return {
            "clip": clip,
            "label": label,
            "video_index": torch.tensor(video_index, dtype=torch.int64),
            "view_index": torch.tensor(view, dtype=torch.int64),
            "valid": torch.tensor(valid),
            "failures": failures,
        }


# ----------------------------------------------------------------------------------- build_dataset


def _get(cfg: Mapping, key: str, default: Any = None) -> Any:
    try:
        value = cfg.get(key, default)
    except Exception:  # omegaconf MissingMandatoryValue for '???'
        return default
    return default if value is None else value


def data_root(cfg: Mapping) -> Path:
    """``data.root`` with a helpful message when it is missing (``???`` in the yaml)."""
    name = _get(cfg, "name", "?")
    hint = f"data.root is required for data={name}: set data.root=/path/to/videos"
    try:
        root = cfg["root"]
    except Exception as e:  # MissingMandatoryValue, KeyError, ConfigKeyError
        raise ValueError(hint) from e
    if root in (None, "", "???"):
        raise ValueError(hint)
    return Path(str(root)).expanduser()


def clip_spec(cfg: Mapping, split: str) -> ClipSpec:
    scales = list(_get(cfg, "train_jitter_scales", [256, 320]))
    if len(scales) != 2:
        raise ValueError(f"data.train_jitter_scales must be [min, max], got {scales}")
    train_crop = int(_get(cfg, "train_crop_size", 224))
    common = dict(
        num_frames=int(_get(cfg, "num_frames", 8)),
        sampling_rate=int(_get(cfg, "sampling_rate", 8)),
        target_fps=_get(cfg, "target_fps"),
        mean=tuple(ann_float_list(_get(cfg, "mean", 114.75))),
        std=tuple(ann_float_list(_get(cfg, "std", 57.375))),
        hflip=bool(_get(cfg, "train_hflip", True)),
        decoder=str(_get(cfg, "decoder", "decord")),
        decode_threads=int(_get(cfg, "decode_threads", 1)),
        max_retries=int(_get(cfg, "max_retries", 10)),
    )
    if split == "train":
        return ClipSpec(
            train=True,
            min_scale=int(scales[0]),
            max_scale=int(scales[1]),
            crop_size=train_crop,
            num_clips=1,
            num_crops=1,
            **common,
        )
    views = _get(cfg, split, {})
    if split == "val":
        scale = int(_get(views, "scale", scales[0]))
        crop = int(_get(views, "crop_size", train_crop))
        clips, crops = int(_get(views, "num_clips", 1)), int(_get(views, "num_crops", 1))
    else:
        scale = int(_get(views, "scale", _get(cfg, "test_scale", 256)))
        crop = int(_get(views, "crop_size", _get(cfg, "test_crop_size", 256)))
        clips, crops = int(_get(views, "num_clips", 10)), int(_get(views, "num_crops", 3))
    if crop > scale:
        raise ValueError(f"data: {split} crop size {crop} is larger than its short-side scale {scale}")
    return ClipSpec(
        train=False,
        min_scale=scale,
        max_scale=scale,
        crop_size=crop,
        num_clips=clips,
        num_crops=crops,
        **common,
    )


def ann_float_list(v: Any) -> list[float]:
    if isinstance(v, (int, float)):
        return [float(v)]
    return [float(x) for x in v]


def _split_file(cfg: Mapping, root: Path, split: str) -> Path:
    key = f"{split}_list"
    name = _get(cfg, key)
    if name is None:
        raise ValueError(f"data.{key} is not set (the annotation file of the {split!r} split)")
    p = Path(str(name))
    return p if p.is_absolute() else root / p


def build_dataset(cfg: Mapping, split: str) -> VideoDataset:
    """Dataset for ``split`` in {"train", "val", "test"} from the ``data`` config group."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; expected one of {SPLITS}")
    root = data_root(cfg)
    fmt = _get(cfg, "format")
    num_classes = _get(cfg, "num_classes")
    num_classes = None if num_classes is None else int(num_classes)
    multi_label = bool(_get(cfg, "multi_label", False))
    generate = _get(cfg, "generate")
    if generate is not None:
        from nlvideo.data.synthetic import ensure_synthetic

        ensure_synthetic(root, **dict(generate))

    class_file = _get(cfg, "class_file")
    if class_file is not None and not Path(str(class_file)).is_absolute():
        class_file = root / str(class_file)
    if fmt == "kinetics_csv":
        records, class_names = ann.read_kinetics_list(
            _split_file(cfg, root, split), root, num_classes, class_file, _split_file(cfg, root, "train")
        )
    elif fmt == "kinetics_folder":
        train_dir = root / str(_get(cfg, "train_dir", "train"))
        class_names = None
        if split != "train":
            _, class_names = ann.read_kinetics_folder(train_dir, num_classes)
        split_dir = root / str(_get(cfg, f"{split}_dir", split))
        records, class_names = ann.read_kinetics_folder(split_dir, num_classes, class_names)
    elif fmt == "charades":
        if num_classes is None:
            raise ValueError("data.num_classes is required for data.format=charades (157 for Charades v1)")
        video_dir = root / str(_get(cfg, "video_dir", "."))
        records = ann.read_charades_csv(
            _split_file(cfg, root, split), video_dir, num_classes, str(_get(cfg, "video_ext", ".mp4"))
        )
        class_names = ann.charades_class_names(num_classes, class_file)
    else:
        raise ValueError(f"data.format={fmt!r}; expected kinetics_csv, kinetics_folder or charades")
    if multi_label != (fmt == "charades"):
        raise ValueError(f"data.multi_label={multi_label} does not fit data.format={fmt}")
    return VideoDataset(records, class_names, split, clip_spec(cfg, split), multi_label=multi_label)
