"""Label videos with a trained checkpoint or published weights: eval.py's multi-view test, per video.

    from nlvideo import Predictor
    predictor = Predictor.from_checkpoint("outputs/train/.../checkpoint_000001000.pt")  # 10 x 3 views
    predictor.predict("clip.mp4")          # [("abseiling", 0.91), ...]: top 5 by probability
    predictor = Predictor.from_pretrained("I3D_NLN_8x8_R50.pkl", "i3d_nl5", "kinetics_classes.txt")

The views are the dataset's own test views: the data config gives the frames, sampling rate, scale,
crop and normalisation, and :func:`nlvideo.data.dataset.iter_views` decodes the video once for all
its views and transforms them ``batch_size`` at a time, as eval.py's loader does. Only their number
is chosen here (``views``, at most :data:`MAX_VIEWS`): ``paper`` is the paper's 10 clips x 3 crops,
``1`` the centre clip. View probabilities (softmax, or
sigmoid for a multi-label task such as Charades) are averaged per video, as eval.py averages them. A
checkpoint holds its model, data config, class names and task. Published weights
(``model.pretrained``, docs/pretrained.md) hold neither class names nor a data config: the names
come from a class file, the data config is ``configs/data`` (Kinetics-400 by default), and the model
and the normalisation are what :func:`~nlvideo.models.apply_pretrained_to_config` says the weights
need, as eval.py tests them. ``predict.py`` is the command line (:func:`run`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from nlvideo.data import ClipSpec, DecodeError, clip_spec
from nlvideo.data.annotations import VIDEO_EXTENSIONS, read_class_file
from nlvideo.data.dataset import iter_views
from nlvideo.engine.config import DEVICES, resolve_device
from nlvideo.engine.evaluate import clip_probabilities
from nlvideo.engine.runtime import task_overrides
from nlvideo.factory import group_config, model_config
from nlvideo.models import ConfigError, apply_pretrained_to_config, make_spec
from nlvideo.models.build import build_pretrained, model_of_checkpoint
from nlvideo.models.pretrained import Checkpoint, read_checkpoint

PAPER_VIEWS = (10, 3)  # clips x crops: the paper's (and PySlowFast's) Kinetics test protocol
# Views are scored batch_size at a time, so memory does not grow with their number; time does, linearly.
# 10x the paper's 30 views: its accuracy saturates by 10 clips, and views beyond the video's distinct
# frames and crop positions repeat the same pixels.
MAX_VIEWS = 300
OUTPUTS = ("text", "json")
CHECKPOINT_KEYS = ("model", "config", "class_names", "multi_label")  # what the trainer stores
PRETRAINED_KEYS = ("model", "data", "clip", "classes")  # predict.py's keys for published weights only


def parse_views(views: str | int) -> tuple[int, int]:
    """``paper`` -> (10 clips, 3 crops); ``1`` -> the centre clip and crop; ``CxK`` -> C clips x K crops."""
    text = str(views).strip().lower()
    if text == "paper":
        return PAPER_VIEWS
    if text == "1":
        return 1, 1
    clips, sep, crops = text.partition("x")
    if sep and clips.isdigit() and crops.isdigit() and int(clips) > 0 and int(crops) > 0:
        if int(clips) * int(crops) > MAX_VIEWS:
            raise ConfigError(f"views={views} is {int(clips) * int(crops)} views per video, more than "
                              f"{MAX_VIEWS} (10x the paper's 10x3): more views repeat the same frames and "
                              "crops, at the cost of time per video")
        return int(clips), int(crops)
    raise ConfigError(
        f"views={views!r} is not allowed; choose paper (10 clips x 3 crops), 1 (the centre clip) or "
        "<clips>x<crops>, e.g. 10x3"
    )


def view_spec(data: Mapping[str, Any], views: str | int) -> ClipSpec:
    """The data config's test views (frames, sampling, scale, crop, normalisation), ``views`` of them
    (:func:`parse_views`); a bad data value is a :class:`ConfigError` naming it."""
    clips, crops = parse_views(views)
    try:
        spec = clip_spec(data, "test")
    except ValueError as exc:  # clip_spec's one-line message, as a command's error rather than a traceback
        raise ConfigError(str(exc)) from None
    return dataclasses.replace(spec, num_clips=clips, num_crops=crops)


def read_class_names(source: str | os.PathLike | Sequence[str]) -> list[str]:
    """Class names given as such, or a class file as the data readers take it
    (:func:`~nlvideo.data.annotations.read_class_file`): one name per line (``classes.txt``), or
    ``{"name": index}`` JSON (PySlowFast's Kinetics ``classids.json``)."""
    if not isinstance(source, str | os.PathLike):
        return list(source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(f"class file {source} does not exist")
    try:
        return read_class_file(path)
    except ValueError as exc:  # "<file>:<line>: ..."
        raise ConfigError(str(exc)) from None


def check_class_count(ckpt: Checkpoint, class_names: Sequence[str], named_by: str) -> None:
    """Published weights must have one classifier output per class name; output i is the class on line
    i. A head of another size would be re-initialised (the fine-tuning case of model.pretrained),
    labelling videos at random."""
    fc = ckpt.state_dict.get("head.fc.weight")
    if fc is None:
        raise ConfigError(f"{ckpt.where} has no classifier (head.fc): it cannot label videos")
    if fc.shape[0] != len(class_names):
        raise ConfigError(f"{named_by} names {len(class_names)} classes, the classifier of {ckpt.where} has "
                          f"{fc.shape[0]}: the class file must list the weights' classes in output order")


def _device(device: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``, checked before any model is built."""
    if device not in DEVICES:
        raise ConfigError(f"device={device!r} is not allowed; choose one of: {', '.join(DEVICES)}")
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but CUDA is not available")
    return dev


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
    ``config`` is the training run's config (:meth:`from_checkpoint`) or the composed ``model`` and
    ``data`` config of published weights (:meth:`from_pretrained`), for the record.
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
        dev = _device(device)
        ckpt = read_checkpoint(str(path), key="checkpoint")
        state = ckpt.saved
        missing = [k for k in CHECKPOINT_KEYS if k not in state]
        if missing:
            raise ConfigError(f"checkpoint={path} lacks {missing}: not a checkpoint written by train.py")
        cfg = state["config"]
        spec = view_spec(cfg["data"], views)
        return cls(model_of_checkpoint(ckpt).to(dev), state["class_names"], spec, bool(state["multi_label"]),
                   batch_size, cfg)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, model: str,
                        class_names: str | os.PathLike | Sequence[str],
                        data: str | Mapping[str, Any] = "kinetics400", clip: str = "8x8",
                        views: str | int = "paper", device: str = "auto", batch_size: int = 8,
                        **overrides: Any) -> Predictor:
        """Published weights (any ``model.pretrained`` format) as model ``model`` (``i3d_nl5``, ...: the
        configs/model name the weights fit), labelled by ``class_names`` (a class file or the names).

        The run config is composed as ``predict.py model=MODEL data=DATA clip=CLIP`` composes it:
        ``data`` (a configs/data name or a data config) gives the test views and the task, ``clip``
        (``8x8`` | ``32x2``) the frames and the model's input variant; ``overrides`` are model keys, as
        :func:`nlvideo.create_model` takes them. The data's ``mean``/``std`` become the weights' own.
        """
        clip_cfg = group_config("clip", clip)
        data_cfg = group_config("data", data) if isinstance(data, str) else OmegaConf.create(dict(data))
        data_cfg = OmegaConf.merge(data_cfg, clip_cfg.data)
        model_cfg = model_config(model, int(data_cfg.num_classes), pretrained=str(path),
                                 **{**clip_cfg.model, **overrides})
        cfg = OmegaConf.create({"model": model_cfg, "data": data_cfg})
        return cls.from_pretrained_config(cfg, class_names, views, device, batch_size)

    @classmethod
    def from_pretrained_config(cls, cfg: DictConfig, class_names: str | os.PathLike | Sequence[str],
                               views: str | int = "paper", device: str = "auto", batch_size: int = 8,
                               overrides: Sequence[str] = ()) -> Predictor:
        """Published weights ``cfg.model.pretrained`` with the composed run config ``cfg`` (``model``
        and ``data``, as eval.py tests such weights), labelled by ``class_names``.

        The classifier must have one output per name. ``cfg`` is updated in place: ``model.num_classes``
        from the names, then :func:`~nlvideo.models.apply_pretrained_to_config` (the model options the
        weights need; their normalisation unless ``overrides``, the command line, set ``data.mean`` or
        ``data.std``). Softmax or sigmoid per class by ``data.multi_label``.
        """
        dev = _device(device)
        names = read_class_names(class_names)
        named_by = str(class_names) if isinstance(class_names, str | os.PathLike) else "class_names"
        ckpt = read_checkpoint(str(cfg.model.pretrained), int(cfg.model.depth))  # read once, used thrice
        check_class_count(ckpt, names, named_by)
        cfg.model.num_classes = len(names)
        apply_pretrained_to_config(cfg, overrides, ckpt)
        model = build_pretrained(make_spec(**OmegaConf.to_container(cfg.model, resolve=True)), ckpt)
        spec = view_spec(cfg.data, views)
        record = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "data")}
        return cls(model.to(dev), names, spec, bool(cfg.data.multi_label), batch_size, record)

    @property
    def num_views(self) -> int:
        return self.spec.num_clips * self.spec.num_crops

    def scores(self, video: str | os.PathLike) -> torch.Tensor:
        """Class probabilities (K,) of ``video``, averaged over its views (read from one decode of the
        video, ``batch_size`` views at a time, each batch scored before the next is made: memory does
        not grow with the number of views); :class:`DecodeError` if one of them cannot be read."""
        total = torch.zeros(len(self.class_names), dtype=torch.float64)
        for clips, errors in iter_views(self.spec, str(video), self.batch_size):
            failed = next((e for e in errors if e is not None), None)
            if failed is not None:
                raise failed
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
    reason, when it is read. In a folder, hidden files and folders (``.ipynb_checkpoints/``, ``._x.mp4``
    from macOS) are left out, and a broken symbolic link with a video name is kept, to be reported.
    """
    items = [video] if isinstance(video, (str, os.PathLike)) else list(video)
    if not items:
        raise ConfigError("video=[] names no video: give a file, a folder or a list [a.mp4,b.mp4]")
    found: list[str] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if not path.is_dir():
            found.append(str(path))
            continue
        files = sorted(str(f) for f in path.rglob("*")
                       if f.suffix.lower() in VIDEO_EXTENSIONS and (f.is_file() or _broken_link(f))
                       and not any(part.startswith(".") for part in f.relative_to(path).parts))
        if not files:
            raise ConfigError(f"video={path}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in this folder")
        found.extend(files)
    return found


def _broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def positive_int(value: object, key: str) -> int:
    """``key=value`` as a whole number >= 1, or one :class:`ConfigError` line naming the key."""
    try:
        number = int(str(value))  # not int(value): 2.5 and true are refused, not truncated
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{key}={value!r} must be a whole number >= 1")
    return number


def command_predictor(cfg: DictConfig, overrides: Sequence[str]) -> Predictor:
    """``predict.py``'s predictor: ``checkpoint=CKPT``, or published weights ``model=NAME
    model.pretrained=FILE classes=FILE`` (with ``data=``, ``clip=``, ``data.*``). ``overrides`` (the
    command line) must not mix the two: a checkpoint holds its own model, data config and names, and
    those keys would be silently ignored."""
    if cfg.checkpoint is None:
        if not cfg.model.get("pretrained"):
            raise ConfigError("a checkpoint or published weights are required: predict.py checkpoint=CKPT.pt "
                              "video=clip.mp4, or predict.py model=i3d_nl5 model.pretrained=WEIGHTS "
                              "classes=classes.txt video=clip.mp4")
        if cfg.classes is None:
            raise ConfigError(f"model.pretrained={cfg.model.pretrained} needs classes=FILE, the names of its "
                              "classes: one per line in output order, or classids.json")
        return Predictor.from_pretrained_config(cfg, str(cfg.classes), cfg.views, cfg.device,
                                                int(cfg.batch_size), overrides)
    mixed = [o for o in overrides if re.split(r"[.=]", o.lstrip("+~"), maxsplit=1)[0] in PRETRAINED_KEYS]
    if mixed:
        raise ConfigError(f"checkpoint= holds its model, data config and class names; {mixed} are for "
                          "published weights (model.pretrained=FILE classes=FILE) instead of a checkpoint")
    if not Path(str(cfg.checkpoint)).is_file():
        raise ConfigError(f"checkpoint={cfg.checkpoint} does not exist")
    return Predictor.from_checkpoint(str(cfg.checkpoint), cfg.views, cfg.device, int(cfg.batch_size))


def run(cfg: DictConfig) -> int:
    """``predict.py``: print (or ``output=json``) each video's top classes; returns the exit status,
    1 when no video could be read."""
    if cfg.video is None:
        raise ConfigError("video is required: a file, a folder or a list [a.mp4,b.mp4]")
    if cfg.output not in OUTPUTS:
        raise ConfigError(f"output={cfg.output!r} is not allowed; choose one of: {', '.join(OUTPUTS)}")
    topk = positive_int(cfg.topk, "topk")
    cfg.batch_size = positive_int(cfg.batch_size, "batch_size")
    videos = collect_videos(cfg.video)
    predictor = command_predictor(cfg, task_overrides())
    results = []
    bar = tqdm(total=len(videos), desc="predict", unit="video", file=sys.stderr, disable=len(videos) < 2)
    with bar:
        for pred in predictor.predict_many(videos, topk):
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
