"""Label videos with a trained checkpoint: eval.py's multi-view test, one video at a time.

    from nlvideo import Predictor
    predictor = Predictor.from_checkpoint("outputs/train/.../checkpoint_000001000.pt")  # 10 x 3 views
    predictor.predict("clip.mp4")          # [("abseiling", 0.91), ...]: top 5 by probability

The views are the dataset's own test views: the checkpoint's data config gives the frames, sampling
rate, scale, crop and normalisation, and :func:`nlvideo.data.read_clip` decodes and transforms each
view as eval.py's loader does. Only their number is chosen here (``views``): ``paper`` is the paper's
10 clips x 3 crops, ``1`` the centre clip. View probabilities (softmax, or sigmoid for a multi-label
checkpoint such as Charades) are averaged per video, as eval.py averages them. Class names and the
task come from the checkpoint. ``predict.py`` is the command line (:func:`run`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from nlvideo.data import ClipSpec, DecodeError, clip_spec, read_clip
from nlvideo.data.annotations import VIDEO_EXTENSIONS
from nlvideo.engine.checkpoint import load_checkpoint
from nlvideo.engine.config import DEVICES, resolve_device
from nlvideo.engine.evaluate import clip_probabilities
from nlvideo.models import ConfigError, build_video_resnet

PAPER_VIEWS = (10, 3)  # clips x crops: the paper's (and PySlowFast's) Kinetics test protocol
OUTPUTS = ("text", "json")
CHECKPOINT_KEYS = ("model", "config", "class_names", "multi_label")  # what the trainer stores


def parse_views(views: str | int) -> tuple[int, int]:
    """``paper`` -> (10 clips, 3 crops); ``1`` -> the centre clip and crop; ``CxK`` -> C clips x K crops."""
    text = str(views).strip().lower()
    if text == "paper":
        return PAPER_VIEWS
    if text == "1":
        return 1, 1
    clips, sep, crops = text.partition("x")
    if sep and clips.isdigit() and crops.isdigit() and int(clips) > 0 and int(crops) > 0:
        return int(clips), int(crops)
    raise ConfigError(
        f"views={views!r} is not allowed; choose paper (10 clips x 3 crops), 1 (the centre clip) or "
        "<clips>x<crops>, e.g. 10x3"
    )


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One video's top classes with their probabilities, or why it could not be read."""

    video: str
    top: list[tuple[str, float]]
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"video": self.video, "error": self.error}
        return {"video": self.video, "top": [{"class": name, "probability": p} for name, p in self.top]}

    def as_text(self) -> str:
        return "\n".join([self.video, *(f"  {p:.4f}  {name}" for name, p in self.top)])


class Predictor:
    """A classifier and the test views of its data: video file -> class probabilities.

    ``model`` is put in eval mode and run in fp32 on its own device, ``batch_size`` views per forward.
    ``config`` is the training run's config where known (:meth:`from_checkpoint`), for the record.
    """

    def __init__(self, model: torch.nn.Module, class_names: Sequence[str], spec: ClipSpec,
                 multi_label: bool, batch_size: int = 8, config: Mapping[str, Any] | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        self.config = config
        self.model = model.eval()
        self.class_names = list(class_names)
        self.spec = spec
        self.multi_label = multi_label
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, views: str | int = "paper", device: str = "auto",
                        batch_size: int = 8) -> Predictor:
        """The model, class names, task and test views of a ``train.py`` checkpoint.

        ``views``: see :func:`parse_views`; ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        """
        if device not in DEVICES:
            raise ConfigError(f"device={device!r} is not allowed; choose one of: {', '.join(DEVICES)}")
        dev = resolve_device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda but CUDA is not available")
        state = load_checkpoint(path)
        missing = [k for k in CHECKPOINT_KEYS if k not in state]
        if missing:
            raise ConfigError(f"checkpoint={path} lacks {missing}: not a checkpoint written by train.py")
        cfg = state["config"]
        # The checkpoint holds every weight: whatever model.pretrained named is not needed (nor there).
        model = build_video_resnet(**{**cfg["model"], "pretrained": None})
        model.load_state_dict(state["model"])
        clips, crops = parse_views(views)
        spec = dataclasses.replace(clip_spec(cfg["data"], "test"), num_clips=clips, num_crops=crops)
        return cls(model.to(dev), state["class_names"], spec, bool(state["multi_label"]), batch_size, cfg)

    @property
    def num_views(self) -> int:
        return self.spec.num_clips * self.spec.num_crops

    def scores(self, video: str | os.PathLike) -> torch.Tensor:
        """Class probabilities (K,) of ``video``, averaged over its views; :class:`DecodeError` if it
        cannot be read."""
        total = torch.zeros(len(self.class_names), dtype=torch.float64)
        for start in range(0, self.num_views, self.batch_size):
            views = range(start, min(start + self.batch_size, self.num_views))
            clips = torch.stack([read_clip(self.spec, str(video), v)[0] for v in views])
            with torch.inference_mode():
                logits = self.model(clips.to(self.device)).float()
            total += clip_probabilities(logits, self.multi_label).sum(0).cpu().double()
        return (total / self.num_views).float()

    def predict(self, video: str | os.PathLike, topk: int = 5) -> list[tuple[str, float]]:
        """The ``topk`` most probable classes of ``video`` as ``(name, probability)``, most probable first."""
        probs, idx = self.scores(video).topk(min(topk, len(self.class_names)))
        return [(self.class_names[i], p) for i, p in zip(idx.tolist(), probs.tolist(), strict=True)]

    def predict_many(self, videos: Iterable[str | os.PathLike], topk: int = 5) -> Iterator[Prediction]:
        """:meth:`predict` for each video; an unreadable one yields a :class:`Prediction` with its reason."""
        for video in videos:
            try:
                yield Prediction(str(video), self.predict(video, topk))
            except DecodeError as exc:
                yield Prediction(str(video), [], error=exc.reason)


def collect_videos(video: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """A video file, a folder (its video files, recursively, sorted) or a list of either.

    A path that is not a folder is kept as it is: a missing or unreadable file is reported, with its
    reason, when it is read.
    """
    items = [video] if isinstance(video, (str, os.PathLike)) else list(video)
    found: list[str] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if not path.is_dir():
            found.append(str(path))
            continue
        files = sorted(str(f) for f in path.rglob("*")
                       if f.suffix.lower() in VIDEO_EXTENSIONS and f.is_file())
        if not files:
            raise ConfigError(f"video={path}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in this folder")
        found.extend(files)
    return found


def run(cfg: DictConfig) -> int:
    """``predict.py``: print (or ``output=json``) each video's top classes; returns the exit status,
    1 when no video could be read."""
    if cfg.checkpoint is None or cfg.video is None:
        raise ConfigError("checkpoint and video are required: predict.py checkpoint=CKPT.pt video=clip.mp4 "
                          "(a file, a folder or a list [a.mp4,b.mp4])")
    if not Path(str(cfg.checkpoint)).is_file():
        raise ConfigError(f"checkpoint={cfg.checkpoint} does not exist")
    if cfg.output not in OUTPUTS:
        raise ConfigError(f"output={cfg.output!r} is not allowed; choose one of: {', '.join(OUTPUTS)}")
    if int(cfg.topk) < 1:
        raise ConfigError(f"topk={cfg.topk} must be >= 1")
    videos = collect_videos(cfg.video)
    predictor = Predictor.from_checkpoint(str(cfg.checkpoint), cfg.views, cfg.device, int(cfg.batch_size))
    results = []
    bar = tqdm(total=len(videos), desc="predict", unit="video", file=sys.stderr, disable=len(videos) < 2)
    with bar:
        for pred in predictor.predict_many(videos, int(cfg.topk)):
            if pred.error is not None:
                tqdm.write(f"skipping unreadable video {pred.video} ({pred.error})", file=sys.stderr)
            elif cfg.output == "text":
                tqdm.write(pred.as_text(), file=sys.stdout)
            results.append(pred)
            bar.update(1)
    if cfg.output == "json":
        print(json.dumps([p.as_dict() for p in results], indent=2))
    if all(p.error is not None for p in results):
        print(f"error: none of the {len(results)} videos could be read", file=sys.stderr)
        return 1
    return 0
