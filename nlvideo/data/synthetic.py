"""Built-in synthetic dataset: real H.264 videos whose label depends on long-range relations.

``python -m nlvideo.data.synthetic --root DIR`` writes it; ``build_dataset`` generates it on first
use when ``data.generate`` is set (``configs/data/synthetic.yaml``). Deterministic from the seed.

What a video shows (default 64 frames of 64x64 at 24 fps, ~2.7 s)
-----------------------------------------------------------------
* A static, smooth random background texture, per-frame pixel noise, and 2 small dim distractor
  squares drifting anywhere in the frame.
* **Cue**: a saturated disc (one of 3 colours: red, green, blue) in a random quadrant, visible in
  the first 39 % of the frames only (frames [0, 25) of 64).
* **Probe**: a second disc in a random quadrant, visible in the last 39 % only (frames [39, 64);
  nothing in between).
* **Movers**: two saturated squares, one in a band along the top and one along the bottom, ~42 px
  apart, sliding horizontally in random directions (wrapping around inside their band) for the
  whole video.

The 4 classes are the combinations of two binary relations (class index = 2 colour + pair, names
``<colour>_<pair>``):

==========  ================  ==========================================================
factor      values            what decides it
==========  ================  ==========================================================
colour      samecolour /      the probe has the cue's colour, or one of the 2 others:
            newcolour         a relation between two events >=15 frames apart
pair        samepair /        the two movers have the same colour, or different ones:
            diffpair          a relation between two objects ~42 px apart
==========  ================  ==========================================================

Why these need long-range relations, and why a non-local block can learn them: every object's
colour and place are distributed the same way in all classes, so no single object carries label
information; only a comparison of two objects does. A C2D network computes per-frame
features, averages them over the clip and reads them out linearly, so its colour decision is a
threshold on g(a) + h(b), an additive function of the cue colour a and the probe colour b (given
the movers, which it may use as a reference). No such function is "a == b": with 3 colours the best
one is right on 75 % of the videos (brute force over all additive scores; e.g. g = (R 1, G 2, B 0),
h = (R 2, G 1, B 0), "same" iff g(a) + h(b) >= 3), so **C2D is bounded at 75 % on the colour
relation** (and on top-1), where a model that compares the two discs reaches 100 %. (The pair
relation lies inside one frame; C2D's receptive field can reach both movers.) A non-local block
adds to every position a weighted sum over all positions of the whole clip (theta_i^T phi_j is a
learned similarity of appearance; even uniform weights broadcast the clip's colour content), after
which the next ReLU layers at the cue can compute "my colour also appears later". Both relations
are about appearance, not position or motion, which the non-local operation (no positional
encoding) could not see. I3D can relate frames through its temporal kernels, stacked over stages.

All relations are invariant to horizontal flips, and the centre of every key object stays inside
every training crop (short side jittered to [48, 56], 48 px crop; the discs stay wholly inside).
With 8x8 or 32x2 sampling a training clip spans 57 or 63 of the 64 frames, so it always contains
at least 3 cue and 3 probe frames.

Files under the root: ``videos/<id>.mp4``; Kinetics form ``train.csv``/``val.csv`` (``videos/<id>.mp4
<label>``) with ``classes.txt``; Charades form ``charades_train.csv``/``charades_val.csv`` (``id``,
``script`` (quoted, with commas), ``actions`` with real times, ``length``) with
``charades_classes.txt`` -- 5 action classes: c000 cue shown (its ``cue_frames`` in seconds);
c001 probe of the same colour / c002 of a new colour (its ``probe_frames``); c003 movers of one
colour / c004 of two colours, whole video. ``meta.json`` (written last)
holds the parameters and every video's factors.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

VERSION = 3
PALETTE = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 240]], dtype=np.float32)  # red, green, blue
FACTORS = (("samecolour", "newcolour"), ("samepair", "diffpair"))
CLASS_NAMES = [f"{a}_{b}" for a in FACTORS[0] for b in FACTORS[1]]
CHARADES_CLASSES = [
    "cue shown",
    "probe has the cue's colour",
    "probe has a new colour",
    "movers of one colour",
    "movers of two colours",
]
DEFAULTS = dict(seed=0, train_per_class=300, val_per_class=50, num_frames=64, size=64, fps=24)


def class_index(colour: int, pair: int) -> int:
    return 2 * colour + pair


def _other_colour(rng: np.random.Generator, c: int) -> int:
    """A palette colour different from ``c``, uniformly."""
    return int((c + rng.integers(1, len(PALETTE))) % len(PALETTE))


def _paint(img: np.ndarray, cy: float, cx: float, half: float, colour: np.ndarray, disc: bool = False):
    """Alpha-blend an anti-aliased square (or disc of radius ``half``) centred at (cy, cx), in place."""
    size_y, size_x = img.shape[:2]
    y0, y1 = max(int(cy - half - 1), 0), min(int(cy + half + 2), size_y)
    x0, x1 = max(int(cx - half - 1), 0), min(int(cx + half + 2), size_x)
    if y0 >= y1 or x0 >= x1:
        return
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    dist = np.sqrt(yy**2 + xx**2) if disc else np.maximum(np.abs(yy), np.abs(xx))
    m = np.clip(half + 0.5 - dist, 0.0, 1.0)[..., None]
    patch = img[y0:y1, x0:x1]
    patch += m * (colour - patch)


def render_video(
    label: int, seed: int, num_frames: int = DEFAULTS["num_frames"], size: int = DEFAULTS["size"]
) -> tuple[np.ndarray, dict]:
    """Frames ``(num_frames, size, size, 3)`` uint8 of one video of class ``label`` and its factors."""
    rng = np.random.default_rng(seed)
    colour_f, pair_f = (label >> 1) & 1, label & 1
    u = size / 80.0  # layout designed on an 80 px frame, scaled for other sizes
    # background: smooth texture (5x5 noise, bilinear upsampled), dark and desaturated
    small = rng.uniform(20, 90, (5, 5, 1)) + rng.uniform(-12, 12, (5, 5, 3))
    grid = np.linspace(0, 4, size)
    i0 = np.clip(np.floor(grid).astype(int), 0, 3)
    f = (grid - i0)[:, None]
    rows = small[i0] * (1 - f[..., None]) + small[i0 + 1] * f[..., None]
    bg = rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]
    bg = bg.astype(np.float32)

    quadrants = [(28 * u, 26 * u), (28 * u, 54 * u), (52 * u, 26 * u), (52 * u, 54 * u)]  # (y, x)
    q_cue, q_probe = int(rng.integers(4)), int(rng.integers(4))
    c_cue = int(rng.integers(len(PALETTE)))
    c_probe = c_cue if colour_f == 0 else _other_colour(rng, c_cue)
    cue_yx = np.array(quadrants[q_cue]) + rng.uniform(-2, 2, 2) * u
    probe_yx = np.array(quadrants[q_probe]) + rng.uniform(-2, 2, 2) * u
    radius = 6 * u
    cue_end = int(round(num_frames * 28 / 72))
    probe_start = num_frames - cue_end

    band_lo, band_hi = 13 * u, 67 * u
    period = band_hi - band_lo
    speed = 0.75 * u
    directions = np.where(rng.random(2) < 0.5, 1.0, -1.0)
    c_m1 = int(rng.integers(len(PALETTE)))
    mover_colours = (c_m1, c_m1 if pair_f == 0 else _other_colour(rng, c_m1))
    m_x0 = rng.uniform(0, period, 2)
    m_y = (14 * u, 66 * u)

    n_distract = 2
    d_pos = rng.uniform(4 * u, size - 4 * u, (n_distract, 2))
    d_vel = rng.uniform(-0.8, 0.8, (n_distract, 2)) * u
    d_col = (rng.uniform(90, 150, (n_distract, 1)) + rng.uniform(-15, 15, (n_distract, 3))).astype(np.float32)

    noise = rng.standard_normal((num_frames, size, size, 3), dtype=np.float32) * 8
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        img = bg.copy()
        for k in range(n_distract):
            pos = d_pos[k] + d_vel[k] * t
            pos = np.abs((pos - 4 * u) % (2 * (size - 8 * u)) - (size - 8 * u)) + 4 * u  # bounce
            _paint(img, pos[0], pos[1], 1.5 * u, d_col[k])
        for j, d in enumerate(directions):
            x = band_lo + (m_x0[j] + d * speed * t) % period
            for shift in (-period, 0.0, period):  # wraps around inside its band
                if band_lo - 3 * u <= x + shift <= band_hi + 3 * u:
                    _paint(img, m_y[j], x + shift, 3.5 * u, PALETTE[mover_colours[j]])
        if t < cue_end:
            _paint(img, *cue_yx, radius, PALETTE[c_cue], disc=True)
        if t >= probe_start:
            _paint(img, *probe_yx, radius, PALETTE[c_probe], disc=True)
        img += noise[t]
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    factors = dict(
        colour=FACTORS[0][colour_f],
        pair=FACTORS[1][pair_f],
        cue_colour=c_cue,
        probe_colour=c_probe,
        cue_quadrant=q_cue,
        probe_quadrant=q_probe,
        mover_colours=list(mover_colours),
        cue_frames=[0, cue_end],
        probe_frames=[probe_start, num_frames],
    )
    return frames, factors


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: int = 24,
    crf: int = 20,
    preset: str = "superfast",
    faststart: bool = False,
    gop: int | None = None,
) -> None:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames as H.264 (libx264, yuv420p) with PyAV.

    ``faststart`` puts the mp4 index (moov) before the frame data, as web videos have it; ``gop`` is the
    key-frame interval (x264's default, 250 frames, when None).
    """
    from nlvideo.data.prepare.encode import H264Writer

    _, h, w, _ = frames.shape
    with H264Writer(path, w, h, fps, crf=crf, preset=preset, gop=gop, faststart=faststart) as writer:
        for frame in frames:
            writer.write_rgb(frame)


def factor_accuracy(truth: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """Accuracy (%) of each factor from class names ``<colour>_<pair>``, as in ``predictions.csv``.

    The top-1 of a 4-class model mixes the two relations; this separates them, which is what tells
    a model that only learned the within-frame ``pair`` relation from one that also relates the cue
    to the probe across time (C2D cannot exceed 75 % on ``colour``; see the module docstring).
    """
    if len(truth) != len(pred) or not truth:
        raise ValueError(f"need one prediction per label, at least one (got {len(pred)} and {len(truth)})")
    known = set(CLASS_NAMES)
    unknown = sorted({n for n in (*truth, *pred) if n not in known})
    if unknown:
        raise ValueError(f"class names {unknown[:3]} are not built-in synthetic classes {CLASS_NAMES}")
    split_t = [n.split("_") for n in truth]
    split_p = [n.split("_") for n in pred]
    return {
        name: 100.0 * sum(t[k] == p[k] for t, p in zip(split_t, split_p, strict=True)) / len(truth)
        for k, name in enumerate(("colour", "pair"))
    }


def _video_seed(seed: int, split: str, i: int) -> int:
    from nlvideo.data.sampler import derive_seed

    return derive_seed(seed, {"train": 1, "val": 2}[split], i) % 2**32


def _make_one(job: tuple[str, str, int, int, int, int, int, int]) -> tuple[str, dict]:
    out_dir, vid, label, seed, num_frames, size, fps, _ = job
    frames, factors = render_video(label, seed, num_frames, size)
    write_mp4(Path(out_dir) / "videos" / f"{vid}.mp4", frames, fps)
    return vid, factors


def _seconds(frames: Sequence[int], fps: int) -> tuple[float, float]:
    """Frames ``[a, b)`` as times written with 2 decimals, rounded inwards (start up, end down), so a
    clip that overlaps the written span also overlaps the frames (39/24 s must not become 1.62)."""
    return math.ceil(frames[0] / fps * 100 - 1e-6) / 100, math.floor(frames[1] / fps * 100 + 1e-6) / 100


def _write_annotations(out: Path, videos: dict[str, dict], num_frames: int, fps: int) -> None:
    (out / "classes.txt").write_text("".join(f"{n}\n" for n in CLASS_NAMES))
    (out / "charades_classes.txt").write_text(
        "".join(f"c{i:03d} {n}\n" for i, n in enumerate(CHARADES_CLASSES))
    )
    length = num_frames / fps
    for split in ("train", "val"):
        ids = [v for v in videos if videos[v]["split"] == split]
        with (out / f"{split}.csv").open("w") as f:
            for vid in ids:
                f.write(f"videos/{vid}.mp4 {videos[vid]['label']}\n")
        with (out / f"charades_{split}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "subject", "script", "actions", "length"])
            for vid in ids:
                fa = videos[vid]["factors"]
                acts = [
                    (0, *_seconds(fa["cue_frames"], fps)),
                    (1 if fa["colour"] == "samecolour" else 2, *_seconds(fa["probe_frames"], fps)),
                    (3 if fa["pair"] == "samepair" else 4, *_seconds([0, num_frames], fps)),
                ]
                actions = ";".join(f"c{c:03d} {a:.2f} {b:.2f}" for c, a, b in acts)
                script = f"A cue, then a probe of {fa['colour']}, with movers of {fa['pair']}."
                w.writerow([vid, "synthetic", script, actions, f"{length:.2f}"])


def generate(
    out: str | Path,
    seed: int = DEFAULTS["seed"],
    train_per_class: int = DEFAULTS["train_per_class"],
    val_per_class: int = DEFAULTS["val_per_class"],
    num_frames: int = DEFAULTS["num_frames"],
    size: int = DEFAULTS["size"],
    fps: int = DEFAULTS["fps"],
    workers: int = 0,
) -> Path:
    """Write the dataset into ``out`` (which must not exist or be empty). ``workers=0``: all CPUs."""
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    jobs = []
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for i in range(per_class * len(CLASS_NAMES)):
            label = i % len(CLASS_NAMES)
            jobs.append(
                (str(out), f"{split}_{i:05d}", label, _video_seed(seed, split, i), num_frames, size, fps, 0)
            )
    workers = workers or (os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 16:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_make_one, jobs, chunksize=8))
    else:
        results = [_make_one(j) for j in jobs]
    videos = {}
    for (_, vid, label, *_), (_, factors) in zip(jobs, results, strict=True):
        videos[vid] = dict(split=vid.split("_")[0], label=label, factors=factors)
    _write_annotations(out, videos, num_frames, fps)
    params = dict(
        seed=seed,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        num_frames=num_frames,
        size=size,
        fps=fps,
    )
    meta = dict(
        version=VERSION, params=params, classes=CLASS_NAMES, charades_classes=CHARADES_CLASSES, videos=videos
    )
    (out / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: marks a complete dataset
    return out


def _check_meta(root: Path, params: dict) -> None:
    meta = json.loads((root / "meta.json").read_text())
    if meta.get("version") != VERSION or meta.get("params") != params:
        raise ValueError(
            f"{root} holds a synthetic dataset generated with version {meta.get('version')} and "
            f"{meta.get('params')}, but the config asks for version {VERSION} and {params}; "
            f"delete that folder or point data.root elsewhere"
        )


def ensure_synthetic(root: str | Path, workers: int = 0, **params) -> Path:
    """Generate the dataset at ``root`` unless it is already there (safe with concurrent callers).

    Generation writes into a temporary sibling folder that is renamed to ``root`` when complete;
    an exclusive ``flock`` on ``<root>.lock`` makes other processes (e.g. DDP ranks on the same
    machine) wait instead of generating too, and they then find the finished dataset.
    """
    root = Path(root).expanduser()
    params = {**DEFAULTS, **{k: int(v) for k, v in params.items()}}
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise ValueError(
            f"unknown data.generate keys {sorted(unknown)}; expected {sorted(DEFAULTS)} or workers"
        )
    if (root / "meta.json").is_file():
        _check_meta(root, params)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (root / "meta.json").is_file():  # another process finished it while we waited
                _check_meta(root, params)
                return root
            if root.exists():
                if root.is_dir() and not any(root.iterdir()):
                    root.rmdir()
                else:
                    raise ValueError(f"{root} exists but is not a generated synthetic dataset (no meta.json)")
            tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
            os.chmod(tmp, 0o755)  # mkdtemp makes it private
            try:
                start = time.time()
                generate(tmp, workers=workers, **params)
                os.rename(tmp, root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            import logging

            logging.getLogger(__name__).info(
                "generated synthetic dataset at %s in %.1fs", root, time.time() - start
            )
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(lock, fcntl.LOCK_UN)
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="output folder (created; must not hold another dataset)")
    for k, v in DEFAULTS.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=int, default=v)
    p.add_argument("--workers", type=int, default=0, help="encoding processes (0: all CPUs)")
    a = p.parse_args(argv)
    start = time.time()
    params = {k: getattr(a, k) for k in DEFAULTS}
    root = ensure_synthetic(a.root, workers=a.workers, **params)
    print(f"synthetic dataset ready at {root} ({time.time() - start:.1f}s)")


if __name__ == "__main__":
    main()
