"""Built-in synthetic dataset: real H.264 videos whose label depends on long-range relations.

``python -m nlvideo.data.synthetic --root DIR`` writes it; ``build_dataset`` generates it on first
use when ``data.generate`` is set (``configs/data/synthetic.yaml``). Deterministic from the seed.

What a video shows (default 72 frames of 80x80 at 24 fps, ~3 s)
----------------------------------------------------------------
* A static, smooth random background texture, per-frame pixel noise, and 3 small dim distractor
  squares drifting anywhere in the frame.
* **Cue**: a saturated disc (one of 6 colours: red, green, blue, yellow, magenta, cyan) in one of
  the four quadrants, visible in frames [0, 28) only.
* **Probe**: a second disc visible in frames [44, 72) only (nothing in between).
* **Movers**: two light squares, one in a band along the top and one along the bottom, sliding
  horizontally (wrapping around inside their band) for the whole video.

The 8 classes are the combinations of three binary relations (class index = 4 colour + 2 place +
movers, names ``<colour>_<place>_<movers>``):

==========  ================  ==========================================================
factor      values            what decides it
==========  ================  ==========================================================
colour      samecolour /      the probe has the cue's colour, or one of the 5 others
            newcolour
place       sameplace /       the probe is in the cue's quadrant, or in the diagonally
            farplace          opposite one (~40 px away in an 80 px frame)
movers      parallel /        the two movers go the same way, or opposite ways
            opposite
==========  ================  ==========================================================

Why these need long-range space-time relations: every single frame has the same distribution in
all classes (one disc of a uniformly random colour in a uniformly random quadrant; movers at
uniform, independent positions since they wrap), so per-frame appearance carries no label
information. Colour and place compare the cue (early frames) with the probe (late frames) -- two
events >16 frames apart that never co-occur, at the same or at distant positions; movers compare two
objects ~50 px apart across frames (parallel: their horizontal offset is constant over time;
opposite: it changes). A model that averages per-frame features (C2D without non-local blocks)
cannot represent any of the three (e.g. "same colour" gives pooled colour features 2e_c versus
e_c + e_c', which no linear read-out separates for all colour pairs); a non-local block can relate
the two discs or the two movers directly. All three relations are invariant to horizontal flips,
and all key objects stay inside the central region [10, 70] px that every training crop keeps
(short side jittered to [64, 72], 64 px crop). With 8x8 or 32x2 sampling a training clip spans
57 or 63 of the 72 frames, so it always contains at least 2 cue and 2 probe frames.

Files under the root: ``videos/<id>.mp4``; Kinetics form ``train.csv``/``val.csv`` (``videos/<id>.mp4
<label>``) with ``classes.txt``; Charades form ``charades_train.csv``/``charades_val.csv`` (``id``,
``script`` (quoted, with commas), ``actions`` with real times, ``length``) with
``charades_classes.txt`` -- 7 action classes: c000 cue shown [0, 28/fps] s; c001 probe of the same
colour / c002 of a new colour, c003 at the same place / c004 at the far place, all [44/fps,
72/fps] s; c005 movers parallel / c006 movers opposite, whole video. ``meta.json`` (written last)
holds the parameters and every video's factors.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

VERSION = 1
PALETTE = np.array(
    [[230, 40, 40], [40, 200, 60], [50, 80, 240], [230, 220, 40], [220, 50, 220], [40, 210, 220]],
    dtype=np.float32,
)
FACTORS = (("samecolour", "newcolour"), ("sameplace", "farplace"), ("parallel", "opposite"))
CLASS_NAMES = [f"{a}_{b}_{c}" for a in FACTORS[0] for b in FACTORS[1] for c in FACTORS[2]]
CHARADES_CLASSES = [
    "cue shown",
    "probe has the cue's colour",
    "probe has a new colour",
    "probe at the cue's place",
    "probe at the far place",
    "movers go the same way",
    "movers go opposite ways",
]
MOVER_COLOUR = np.array([225, 225, 225], dtype=np.float32)
DEFAULTS = dict(seed=0, train_per_class=40, val_per_class=10, num_frames=72, size=80, fps=24)


def class_index(colour: int, place: int, movers: int) -> int:
    return 4 * colour + 2 * place + movers


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


def render_video(label: int, seed: int, num_frames: int = 72, size: int = 80) -> tuple[np.ndarray, dict]:
    """Frames ``(num_frames, size, size, 3)`` uint8 of one video of class ``label`` and its factors."""
    rng = np.random.default_rng(seed)
    colour_f, place_f, movers_f = (label >> 2) & 1, (label >> 1) & 1, label & 1
    u = size / 80.0  # layout designed on an 80 px frame, scaled for other sizes
    # background: smooth texture (5x5 noise, bilinear upsampled), dark and desaturated
    small = rng.uniform(20, 90, (5, 5, 1)) + rng.uniform(-12, 12, (5, 5, 3))
    grid = np.linspace(0, 4, size)
    i0 = np.clip(np.floor(grid).astype(int), 0, 3)
    f = (grid - i0)[:, None]
    rows = small[i0] * (1 - f[..., None]) + small[i0 + 1] * f[..., None]
    bg = rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]
    bg = bg.astype(np.float32)

    quadrants = [(25 * u, 25 * u), (25 * u, 55 * u), (55 * u, 25 * u), (55 * u, 55 * u)]  # (y, x)
    q_cue = int(rng.integers(4))
    q_probe = q_cue if place_f == 0 else 3 - q_cue  # 3 - q is the diagonally opposite quadrant
    c_cue = int(rng.integers(len(PALETTE)))
    c_probe = c_cue if colour_f == 0 else int((c_cue + rng.integers(1, len(PALETTE))) % len(PALETTE))
    cue_yx = np.array(quadrants[q_cue]) + rng.uniform(-2, 2, 2) * u
    probe_yx = np.array(quadrants[q_probe]) + rng.uniform(-2, 2, 2) * u
    radius = 5 * u
    cue_end = int(round(num_frames * 28 / 72))
    probe_start = num_frames - cue_end

    band_lo, band_hi = 13 * u, 67 * u
    period = band_hi - band_lo
    speed = 0.75 * u
    d1 = 1 if rng.random() < 0.5 else -1
    d2 = d1 if movers_f == 0 else -d1
    m_x0 = rng.uniform(0, period, 2)
    m_y = (14 * u, 66 * u)

    n_distract = 3
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
        for j, d in enumerate((d1, d2)):
            x = band_lo + (m_x0[j] + d * speed * t) % period
            for shift in (-period, 0.0, period):  # wraps around inside its band
                if band_lo - 3 * u <= x + shift <= band_hi + 3 * u:
                    _paint(img, m_y[j], x + shift, 2.5 * u, MOVER_COLOUR)
        if t < cue_end:
            _paint(img, *cue_yx, radius, PALETTE[c_cue], disc=True)
        if t >= probe_start:
            _paint(img, *probe_yx, radius, PALETTE[c_probe], disc=True)
        img += noise[t]
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    factors = dict(
        colour=FACTORS[0][colour_f],
        place=FACTORS[1][place_f],
        movers=FACTORS[2][movers_f],
        cue_colour=c_cue,
        probe_colour=c_probe,
        cue_quadrant=q_cue,
        probe_quadrant=q_probe,
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
) -> None:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames as H.264 (libx264, yuv420p) with PyAV.

    ``faststart`` puts the mp4 index (moov) before the frame data, as web videos have it.
    """
    import av

    t, h, w, _ = frames.shape
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else None) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _video_seed(seed: int, split: str, i: int) -> int:
    from nlvideo.data.sampler import derive_seed

    return derive_seed(seed, {"train": 1, "val": 2}[split], i) % 2**32


def _make_one(job: tuple[str, str, int, int, int, int, int, int]) -> tuple[str, dict]:
    out_dir, vid, label, seed, num_frames, size, fps, _ = job
    frames, factors = render_video(label, seed, num_frames, size)
    write_mp4(Path(out_dir) / "videos" / f"{vid}.mp4", frames, fps)
    return vid, factors


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
                cue_end = fa["cue_frames"][1] / fps
                p0, p1 = fa["probe_frames"][0] / fps, fa["probe_frames"][1] / fps
                acts = [
                    (0, 0.0, cue_end),
                    (1 if fa["colour"] == "samecolour" else 2, p0, p1),
                    (3 if fa["place"] == "sameplace" else 4, p0, p1),
                    (5 if fa["movers"] == "parallel" else 6, 0.0, length),
                ]
                actions = ";".join(f"c{c:03d} {a:.2f} {b:.2f}" for c, a, b in acts)
                script = f"A {fa['colour']} disc, then {fa['place']}, movers {fa['movers']}."
                w.writerow([vid, "synthetic", script, actions, f"{length:.2f}"])


def generate(
    out: str | Path,
    seed: int = 0,
    train_per_class: int = 40,
    val_per_class: int = 10,
    num_frames: int = 72,
    size: int = 80,
    fps: int = 24,
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
