"""``python -m nlvideo.data.check data=kinetics400 data.root=/data/k400 [clip=32x2] [--workers N]``: open
every video a data config lists, before a training run meets them one by one.

The config is composed from ``configs/`` exactly as train.py composes it (any ``key=value`` override
of train.py works), and the videos are those :func:`~nlvideo.data.build_dataset` lists for each split,
ignoring ``data.exclude_list``. Each video is opened in a worker process the way training opens it
(:class:`~nlvideo.data.decode.DecordVideo`, frames scaled to the largest training scale), its first and
last frames are decoded, and its frame times are read from the container's index. Problems:

=====================  ================================================================================
``unreadable``         cannot be opened or decoded (missing, truncated, not a video): training replaces it
``empty``              zero bytes, or no frames
``too_short``          fewer frames than one clip spans (``num_frames x sampling_rate`` at
                       ``data.target_fps``): its clips repeat the last frame
``odd_resolution``     short side below the smallest scale the transforms resize to (every frame is
                       upscaled), or an aspect ratio beyond 3:1
``variable_frame_rate`` frame durations differ by more than 25 % from their median: a frame index is not
                       a time, so ``data.target_fps`` and Charades action times miss
``length_mismatch``    (Charades) the CSV's ``length`` and the video's duration differ by more than 1 s
                       and 5 %: action times may not match the frames
=====================  ================================================================================

A Charades root is also checked against its CSVs: every CSV id without a video is ``unreadable``
(missing file), and the videos of ``data.video_dir`` that no CSV lists are counted. A video listed for
training and for validation or testing too (Kinetics ``train.csv`` and ``val.csv``, Charades' train and
test CSVs) is counted and named (``in_train_and_eval``): its scores would be measured on training data.

A video whose worker dies (the OOM killer) or takes longer than ``--video-timeout`` is ``unreadable``
with that reason (``worker killed by signal 9``, ``timed out after 600 s``); the others are checked on
(:func:`~nlvideo.data.parallel.run_parallel`).

Written to ``--out`` (default ``outputs/check/<data.name>``): ``check_report.json`` (counts, every
problem with its video, splits and detail) and ``exclude.txt``, the videos with a problem of the
``--exclude`` kinds (default: unreadable, empty), one ``<path relative to data.root>\\t<kind: detail>``
per line, which ``data.exclude_list=`` reads. A path that line cannot hold (a file name that is not
UTF-8, a tab or a newline in it) is named in the report instead (``not_in_exclude_list``): rename the
file. Paths in the report are text (:func:`~nlvideo.data.annotations.shown_path`: bytes that are not
UTF-8 as ``\\xe9``). Exit status: 0 when ``exclude.txt`` is empty, 1 when it lists videos (or the
report cannot be written), 2 when an option, the config or an annotation file is wrong, 130 on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nlvideo.data.annotations import VIDEO_EXTENSIONS, VideoRecord, shown_path
from nlvideo.data.dataset import SPLITS, ClipSpec, build_dataset, clip_spec, data_root
from nlvideo.data.decode import DecodeError, DecordVideo
from nlvideo.data.parallel import ArgumentParser, add_worker_options, run_parallel
from nlvideo.data.prepare.layouts import write_atomic
from nlvideo.data.sampling import clip_span, frame_stride

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
KINDS = ("unreadable", "empty", "too_short", "odd_resolution", "variable_frame_rate", "length_mismatch")
MAX_ASPECT = 3.0
VFR_SPREAD = 0.25  # largest frame duration deviation from the median, as a fraction of it
LENGTH_TOLERANCE = (1.0, 0.05)  # seconds, fraction of the CSV length: both must be exceeded


@dataclass(frozen=True)
class VideoInfo:
    """What opening one video found: ``error`` (and ``empty``) when it could not be read, else its frame
    count, average rate, native ``(height, width)`` and the min/median/max frame duration (s)."""

    path: str
    frames: int = 0
    fps: float = 0.0
    height: int = 0
    width: int = 0
    durations: tuple[float, float, float] | None = None
    error: str = ""
    empty: bool = False


def inspect_video(task: tuple[str, int]) -> VideoInfo:
    """Open ``path`` as training does (frames at ``short_side``), decode its first and last frame and
    read its frame times. Runs in a worker process."""
    path, short_side = task
    try:
        video = DecordVideo(path, num_threads=1, short_side=short_side)
        try:
            frames = video.get_batch([0, video.num_frames - 1])
            times = video.frame_times()
        finally:
            video.close()
    except DecodeError as e:
        return VideoInfo(path, error=e.reason, empty=e.empty)
    steps = np.diff(times)
    height, width = video.native_size or frames.shape[1:3]  # unknown header size: the frames' own
    spread = (float(steps.min()), float(np.median(steps)), float(steps.max())) if len(steps) >= 2 else None
    return VideoInfo(path, video.num_frames, video.fps, int(height), int(width), spread)


def _lost(task: tuple[str, int], reason: str) -> VideoInfo:
    return VideoInfo(task[0], error=reason)


def problems(info: VideoInfo, spec: ClipSpec, smallest: int, records: list[VideoRecord]
             ) -> list[tuple[str, str]]:
    """``(kind, detail)`` of each problem of one video (see the module docstring): ``spec`` is the
    training clip, ``smallest`` the smallest short side any split resizes to, ``records`` the video's
    annotations."""
    if info.error:
        return [("empty" if info.empty else "unreadable", info.error)]
    found = []
    span = clip_span(spec.num_frames, frame_stride(spec.sampling_rate, info.fps, spec.target_fps))
    if info.frames < span:
        clip = f"{spec.num_frames}x{spec.sampling_rate}"
        found.append(("too_short", f"{info.frames} frames; a {clip} clip spans {span:.0f}, its last frames "
                                   "repeat the video's last frame"))
    short, long = sorted((info.height, info.width))
    if short < smallest:
        found.append(("odd_resolution", f"{info.width}x{info.height}: short side below the smallest scale "
                                        f"{smallest}, every frame is upscaled"))
    elif long > MAX_ASPECT * short:
        found.append(("odd_resolution", f"{info.width}x{info.height}: aspect ratio {long / short:.1f}:1"))
    if info.durations is not None:
        low, mid, high = info.durations
        if mid > 0 and max(mid - low, high - mid) > VFR_SPREAD * mid:
            found.append(("variable_frame_rate", f"frame durations {1000 * low:.0f}-{1000 * high:.0f} ms "
                                                 f"(median {1000 * mid:.0f}): a frame index is not a time"))
    seconds = info.frames / info.fps if info.fps > 0 else None
    for rec in records:
        if rec.length is not None and seconds is not None and abs(rec.length - seconds) > max(
                LENGTH_TOLERANCE[0], LENGTH_TOLERANCE[1] * rec.length):
            found.append(("length_mismatch", f"{rec.source}: length {rec.length:.1f} s, the video lasts "
                                             f"{seconds:.1f} s"))
            break
    return found


def compose(overrides: list[str]) -> DictConfig:
    """The run config of train.py for these overrides (``configs/config.yaml`` and its groups)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def _unlisted(data: Mapping, root: Path, listed: set[str]) -> list[str]:
    """Videos of a Charades ``data.video_dir`` that no checked CSV lists."""
    video_dir = root / str(data["video_dir"])
    if not video_dir.is_dir():
        return []
    return sorted(os.path.relpath(p, root) for p in video_dir.iterdir()
                  if p.suffix.lower() in VIDEO_EXTENSIONS and os.path.normpath(p) not in listed)


def main(argv: list[str] | None = None) -> int:
    try:
        return _check(argv)
    except KeyboardInterrupt:  # the workers are gone by now
        print("interrupted: no report written; rerun the same command to check the dataset", file=sys.stderr)
        return 130


def _check(argv: list[str] | None) -> int:
    p = ArgumentParser(prog="python -m nlvideo.data.check",
                       description="Open every video of a data config and report the bad ones.")
    p.add_argument("overrides", nargs="*", help="as train.py's: data=kinetics400 data.root=... clip=32x2")
    add_worker_options(p)
    p.add_argument("--out", type=Path, default=None, help="report folder; default outputs/check/<data.name>")
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    p.add_argument("--exclude", nargs="+", choices=KINDS, default=["unreadable", "empty"],
                   help="problem kinds whose videos go into exclude.txt")
    a = p.parse_args(argv)
    try:
        data = compose(a.overrides).data
        OmegaConf.set_struct(data, False)
        data.exclude_list = None  # check everything the lists name
        root = data_root(data)
        by_path: dict[str, list[tuple[str, VideoRecord]]] = defaultdict(list)
        for split in a.splits:
            for rec in build_dataset(data, split).records:
                by_path[os.path.normpath(rec.path)].append((split, rec))
        spec = clip_spec(data, "train")
        smallest = min(clip_spec(data, split).min_scale for split in SPLITS)
    except (ValueError, OSError, HydraException, OmegaConfBaseException) as e:  # one line, no traceback
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    tasks = [(path, spec.max_scale) for path in sorted(by_path)]
    found = {}
    for info in run_parallel(inspect_video, tasks, a.workers, "check", failed=lambda i: bool(i.error),
                             lost=_lost, timeout=a.video_timeout):
        entries = by_path[info.path]
        kinds = problems(info, spec, smallest, [rec for _, rec in entries])
        if kinds:
            found[info.path] = ([split for split, _ in entries], kinds)
    unlisted = _unlisted(data, root, set(by_path)) if data["format"] == "charades" else []
    overlap = sorted(path for path, entries in by_path.items()
                     if "train" in (splits := {split for split, _ in entries}) and len(splits) > 1)
    out = a.out or Path("outputs") / "check" / str(data["name"])
    report = _report(root, found, set(a.exclude), data, len(by_path), unlisted, overlap)
    try:
        _write(out, report)
    except OSError as e:
        print(f"error: cannot write the report to {shown_path(out)} ({e.strerror or e}); it follows",
              file=sys.stderr)
        print(json.dumps(report, ensure_ascii=True), file=sys.stderr)
        return 1
    _print_summary(out, root, data, report, a.overrides)
    return 1 if report["excluded"] or report["not_in_exclude_list"] else 0


def _report(root: Path, found: dict, exclude: set[str], data: Mapping, total: int, unlisted: list[str],
            overlap: list[str]) -> dict:
    """``check_report.json``'s content (paths relative to ``root``, as text: :func:`shown_path`), and
    under ``excluded`` the lines of ``exclude.txt``."""
    rel = {path: os.path.relpath(path, root) for path in found}
    counts = {kind: sum(any(k == kind for k, _ in kinds) for _, kinds in found.values()) for kind in KINDS}
    report = {
        "data": {k: data[k] for k in ("name", "format", "root", "num_frames", "sampling_rate", "target_fps")},
        "videos": total, "counts": counts, "exclude_kinds": sorted(exclude),
        "problems": [{"path": shown_path(rel[path]), "splits": splits, "kind": kind,
                      "detail": shown_path(detail)}
                     for path, (splits, kinds) in sorted(found.items()) for kind, detail in kinds],
        "in_train_and_eval": [shown_path(os.path.relpath(path, root)) for path in overlap],
    }
    if data["format"] == "charades":
        report["charades_unlisted_videos"] = [shown_path(path) for path in unlisted]
    excluded = [(rel[path], next(f"{k}: {d}" for k, d in kinds if k in exclude))
                for path, (_, kinds) in sorted(found.items()) if any(k in exclude for k, _ in kinds)]
    report["not_in_exclude_list"] = [shown_path(path) for path, _ in excluded if shown_path(path) != path]
    report["excluded"] = [f"{path}\t{' '.join(shown_path(why).split())}" for path, why in excluded
                          if shown_path(path) == path]
    return report


def _write(out: Path, report: dict) -> None:
    """``check_report.json`` and ``exclude.txt`` in ``out``, each written whole or not at all."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "check_report.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    write_atomic(out / "exclude.txt", "".join(f"{line}\n" for line in report["excluded"]))


def _print_summary(out: Path, root: Path, data: Mapping, report: dict, overrides: list[str]) -> None:
    counts, excluded = report["counts"], report["excluded"]
    with_problems = len({p["path"] for p in report["problems"]})
    print(f"check data={data['name']} root={shown_path(root)}: {report['videos']} videos, {with_problems} "
          "with problems")
    for kind in KINDS:
        example = next((f"{p['path']} ({p['detail']})" for p in report["problems"] if p["kind"] == kind),
                       None)
        if example:
            print(f"  {kind}: {counts[kind]}, e.g. {example}")
    unlisted, overlap = report.get("charades_unlisted_videos"), report["in_train_and_eval"]
    if unlisted:
        print(f"  in {data['video_dir']} but in no CSV: {len(unlisted)}, e.g. {unlisted[0]}")
    if overlap:
        print(f"  listed for training and for validation/testing too: {len(overlap)}, e.g. {overlap[0]}")
    if report["not_in_exclude_list"]:
        print(f"  not in exclude.txt, which cannot hold their file names (not UTF-8, a tab or a newline): "
              f"{len(report['not_in_exclude_list'])}, e.g. {report['not_in_exclude_list'][0]}: rename them")
    print(f"  report: {shown_path(out / 'check_report.json')}")
    exclude = report["exclude_kinds"]
    print(f"  exclude list ({', '.join(exclude)}): {len(excluded)} videos in "
          f"{shown_path(out / 'exclude.txt')}")
    if excluded:
        print(f"  train without them: python train.py {' '.join(overrides)} "
              f"data.exclude_list={(out / 'exclude.txt').resolve()}")


if __name__ == "__main__":
    sys.exit(main())
