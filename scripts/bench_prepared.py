"""Decoding speed of videos as downloaded vs the same videos after ``nlvideo.data.prepare``, one run.

Generates ``--videos`` 10-second 30 fps H.264 videos per size (default 1280x720 and 340x256,
Kinetics-like) the way downloads come: a textured, moving picture, x264 ``veryfast``, a key frame every
``--source-gop`` frames (250: x264's default, about YouTube's). Each is then re-encoded with
:func:`nlvideo.data.prepare.encode.encode_video` at ``--short-side 256 --gop 16`` (what
``python -m nlvideo.data.prepare kinetics SRC DST`` does per file). Then, side by side:

* per core: random training clips/s of :func:`nlvideo.data.read_clip` (the dataset's path: decode +
  scale jitter [256, 320] + 224 crop + flip + normalise; ``kinetics400.yaml``) in this process with one
  torch thread and one decoder thread, for 32x2 and 8x8 clips, the same clips (seeds) from both copies,
  best of ``--rounds`` interleaved rounds;
* a whole loader (``build_loader``: decode + transforms + collate) with 0, 1 and 2 workers, 32x2 clips;
* 10x3-view testing (32x2, short side 256, 3 crops of 256) of the 10-second videos: videos/s of
  eval.py's input path (loader without workers, batches of 8 views, no model) in this process, two
  ways side by side: a loader of single views, one ``read_clip`` each (30 decodes of 32 frames a
  video: the path before), and a loader of whole videos, one ``read_views`` each (each frame that any
  clip needs decoded once, in one ``get_batch`` call), their views regrouped into batches of 8 (the
  path now). The script first checks that both give the same 30 tensors, bit for bit.

    python scripts/bench_prepared.py                      # ~7 minutes on 2 CPU cores
    python scripts/bench_prepared.py --sizes 1280x720 --workers 0 2
    python scripts/bench_prepared.py --sections test      # only the 10x3 testing table

Tables and machine: docs/benchmarks.md#prepared-vs-downloaded-videos and
docs/benchmarks.md#10x3-testing-one-decode-per-video.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

import nlvideo  # noqa: F401  (torchvision compat shim)
from nlvideo.data import (
    ClipSampler,
    WholeVideos,
    build_dataset,
    build_loader,
    clip_spec,
    read_clip,
    read_views,
    regroup_views,
)
from nlvideo.data.prepare.encode import EncodeOptions, H264Writer, encode_video

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import bench_data  # noqa: E402  (the loader measurement, shared)


def write_download(path: Path, width: int, height: int, seconds: float, fps: int, gop: int,
                   seed: int) -> None:
    """A smooth random colour texture scrolling 4 px per frame plus noise, encoded frame by frame."""
    rng = np.random.default_rng(seed)
    frames = int(seconds * fps)
    coarse = rng.uniform(0, 255, (height // 32 + 2, (width + 4 * frames) // 32 + 2, 3)).astype(np.uint8)
    texture = np.repeat(np.repeat(coarse, 32, axis=0), 32, axis=1)[:height]
    with H264Writer(path, width, height, fps, crf=23, preset="veryfast", gop=gop) as writer:
        for t in range(frames):
            noise = rng.integers(0, 12, (height, width, 3), dtype=np.uint8)
            writer.write_rgb(texture[:, 4 * t : 4 * t + width] + noise)


def make_pair(root: Path, size: str, count: int, seconds: float, gop: int, short_side: int,
              prepared_gop: int) -> tuple[Path, Path, float, float]:
    """``root/<size>/raw`` and ``root/<size>/prepared``, each with ``train.csv`` and ``val.csv``."""
    width, height = (int(v) for v in size.split("x"))
    raw, prep = root / size / "raw", root / size / "prepared"
    raw.mkdir(parents=True)
    prep.mkdir(parents=True)
    t0 = time.perf_counter()
    for v in range(count):
        write_download(raw / f"v{v}.mp4", width, height, seconds, 30, gop, seed=v)
    t1 = time.perf_counter()
    opts = EncodeOptions(short_side=short_side, gop=prepared_gop)
    for v in range(count):
        encode_video(raw / f"v{v}.mp4", prep / f"v{v}.mp4", opts)
    t2 = time.perf_counter()
    lines = "".join(f"v{v}.mp4 0\n" for v in range(count))
    for d in (raw, prep):
        (d / "train.csv").write_text(lines)
        (d / "val.csv").write_text(lines)
    return raw, prep, t1 - t0, t2 - t1


def _cfg(root: Path, nf: int, sr: int):
    cfg = OmegaConf.load(REPO / "configs" / "data" / "kinetics400.yaml")
    cfg.root, cfg.num_classes, cfg.decoder, cfg.decode_threads = str(root), 1, "decord", 1
    cfg.num_frames, cfg.sampling_rate = nf, sr
    return cfg


def per_core(root: Path, nf: int, sr: int, clips: int, videos: int) -> tuple[float, float]:
    """(clips/s, CPU ms/clip) of ``clips`` random training clips, one thread, seeds 0..clips-1."""
    spec = clip_spec(_cfg(root, nf, sr), "train")
    paths = [str(root / f"v{v}.mp4") for v in range(videos)]
    read_clip(spec, paths[0], rng=random.Random(-1))  # warm-up: imports, first open
    start, cpu = time.perf_counter(), time.process_time()
    for seed in range(clips):
        read_clip(spec, paths[seed % videos], rng=random.Random(seed))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return clips / wall, 1000 * cpu / clips


def loader_rate(root: Path, workers: int, clips: int, batch: int) -> float:
    """Clips/s of the whole training loader, 32x2 clips (scripts/bench_data.py's measurement)."""
    return bench_data.measure(root, "decord", 32, 2, workers, clips, batch, 1)[0]


def test_views(root: Path, whole: bool, batch: int) -> tuple[float, float]:
    """(videos/s, CPU ms/video) of 10x3 testing (32x2) of every video of ``root``, eval.py's input path
    without the model, in this process (``build_loader``, no worker, ``batch`` views a model batch):
    whole videos (``WholeVideos``, one ``read_views`` each, views regrouped by ``regroup_views``) or
    single views (the dataset's items, one ``read_clip`` each: the path before)."""
    cfg = _cfg(root, 32, 2)
    cfg.num_workers, cfg.pin_memory, cfg.persistent_workers = 0, False, False
    ds = build_dataset(cfg, "test")
    ds.report_failures = False
    items = WholeVideos(ds) if whole else ds
    loader = build_loader(items, cfg, ClipSampler(len(items), shuffle=False, drop_last=False), batch)
    start, cpu = time.perf_counter(), time.process_time()
    views = sum(int(b["valid"].sum()) for b in regroup_views(loader, loader.views_per_batch))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert views == ds.num_videos * ds.num_views, f"{views} views scored"
    return ds.num_videos / wall, 1000 * cpu / ds.num_videos


def same_views(root: Path) -> None:
    """The 30 views of ``v0.mp4`` are the same tensors both ways (else the timing compares nothing)."""
    spec = clip_spec(_cfg(root, 32, 2), "test")
    path = str(root / "v0.mp4")
    views, errors = read_views(spec, path)
    assert not any(errors), errors
    for view in range(len(views)):
        if not torch.equal(views[view], read_clip(spec, path, view)[0]):
            raise AssertionError(f"{path}: view {view} differs between read_views and read_clip")


def best_of(rounds: int, fns: dict) -> dict:
    """Interleaved rounds; per key the best (max for rates, min for times) of each returned tuple."""
    out: dict = {}
    for _ in range(rounds):
        for key, (fn, better) in fns.items():
            r = fn()
            r = r if isinstance(r, tuple) else (r,)
            out[key] = r if key not in out else tuple(better(a, b) for a, b in zip(out[key], r, strict=True))
    return out


SECTIONS = ("per_core", "loader", "test")


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["1280x720", "340x256"],
                   help="WIDTHxHEIGHT of the downloads")
    p.add_argument("--videos", type=int, default=2, help="videos per size")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--source-gop", type=int, default=250, help="key-frame interval of the downloads")
    p.add_argument("--short-side", type=int, default=256, help="prepare's --short-side")
    p.add_argument("--gop", type=int, default=16, help="prepare's --gop")
    p.add_argument("--clips", type=int, default=8, help="timed clips per per-core cell")
    p.add_argument("--loader-clips", type=int, default=16, help="timed clips per loader cell")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--test-batch-size", type=int, default=8, help="views a model batch in 10x3 testing "
                   "(data.batch_size)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per cell (best is kept)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   help="the tables to measure (default: all)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    per_core_rows, loader_rows, test_rows, notes = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="nlvideo_bench_prep_") as tmp:
        for size in a.sizes:
            raw, prep, t_gen, t_prep = make_pair(Path(tmp), size, a.videos, a.seconds, a.source_gop,
                                                 a.short_side, a.gop)
            with __import__("av").open(str(prep / "v0.mp4")) as c:
                s = c.streams.video[0]
                prep_size = f"{s.width}x{s.height}"
            notes.append(f"{size}: generated {a.videos} in {t_gen:.1f}s, prepared to {prep_size} "
                         f"in {t_prep:.1f}s")
            print(notes[-1], flush=True)
            for nf, sr in ((32, 2), (8, 8)) if "per_core" in a.sections else ():
                r = best_of(a.rounds, {
                    d: (partial(per_core, d, nf, sr, a.clips, a.videos), max) for d in (raw, prep)})
                (rr, rcpu), (pr, pcpu) = r[raw], r[prep]
                per_core_rows.append((size, prep_size, f"{nf}x{sr}", rr, pr, rcpu, pcpu))
                print(f"  per core {nf}x{sr}: downloaded {rr:.2f}, prepared {pr:.2f} clips/s", flush=True)
            for w in a.workers if "loader" in a.sections else ():
                r = best_of(a.rounds, {
                    d: (partial(loader_rate, d, w, a.loader_clips, a.batch_size), max) for d in (raw, prep)})
                loader_rows.append((size, w, r[raw][0], r[prep][0]))
                print(f"  loader 32x2 workers={w}: downloaded {r[raw][0]:.2f}, prepared {r[prep][0]:.2f}",
                      flush=True)
            if "test" not in a.sections:
                continue
            for copy, d in (("downloaded", raw), ("prepared", prep)):
                same_views(d)
                best: dict[bool, tuple[float, float]] = {}  # the fastest round of each way, its CPU time
                for _ in range(a.rounds):
                    for whole in (False, True):
                        r = test_views(d, whole, a.test_batch_size)
                        best[whole] = max(best.get(whole, r), r)
                test_rows.append((size, copy, *best[False], *best[True]))
                print(f"  10x3 testing, {copy}: per view {best[False][0]:.3f}, one decode "
                      f"{best[True][0]:.3f} videos/s", flush=True)
    out = [
        "",
        f"CPU: {bench_data.cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}, torch "
        f"{torch.__version__}; decord, one decoder thread, one torch thread per process; "
        f"{a.videos} videos per size, {a.seconds:g} s at 30 fps, downloads key frame every {a.source_gop}, "
        f"prepared --short-side {a.short_side} --gop {a.gop}; best of {a.rounds} interleaved rounds; "
        f"total {time.perf_counter() - t_all:.0f}s",
        *notes,
    ]
    if per_core_rows:
        out += [
            "",
            "| download | prepared | clip | downloaded clips/s/core | prepared clips/s/core "
            "| prepared / downloaded | CPU ms/clip downloaded / prepared |",
            "|---|---|---|---|---|---|---|",
            *(f"| {s} | {ps} | {c} | {rr:.2f} | {pr:.2f} | {pr / rr:.2f}x | {rc:.0f} / {pc:.0f} |"
              for s, ps, c, rr, pr, rc, pc in per_core_rows),
        ]
    if loader_rows:
        out += [
            "",
            "| download | loader workers | downloaded clips/s | prepared clips/s | prepared / downloaded |",
            "|---|---|---|---|---|",
            *(f"| {s} | {w} | {rr:.2f} | {pr:.2f} | {pr / rr:.2f}x |" for s, w, rr, pr in loader_rows),
        ]
    if test_rows:
        out += [
            "",
            "| download | copy | 10x3 videos/s, per view (before) | one decode (after) | after / before "
            "| CPU ms/video before / after |",
            "|---|---|---|---|---|---|",
            *(f"| {s} | {c} | {b:.3f} | {w:.3f} | {w / b:.2f}x | {bc:.0f} / {wc:.0f} |"
              for s, c, b, bc, w, wc in test_rows),
        ]
    print("\n".join(out))
    return out


if __name__ == "__main__":
    main()
