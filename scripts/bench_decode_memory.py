"""Peak memory and time of one clip from a large video: frames scaled as decoded vs decoded at full size.

Writes a short H.264 video per size (default 3840x2160 and 1280x720, 80 frames at 30 fps, textured and
moving, key frame every 250 frames as downloaded videos have them) into a temporary folder, then reads
one Kinetics clip from it with :func:`nlvideo.data.read_clip`, the dataset's own path, in a fresh
process per cell: ``configs/data/kinetics400.yaml`` with ``clip=32x2`` (32 frames, every 2nd; training:
short side jittered in [256, 320], 224 crop; testing: short side 256, one of the 256x256 crops). "full
size" is the path before frames were scaled on decode (``ClipSpec.scale_on_decode=False``: native
frames, the transforms resize); "scaled" the current one (frames decoded at short side 320 for
training, 256 for testing).

A cell's peak is the process's RSS high-water mark (``VmHWM``) after reading ``--clips`` clips minus
the mark after the imports (torch, torchvision, decord, PyAV: ~360 MiB that every loader worker holds
anyway), so it is what one clip adds per loader worker. Time: the fastest of the cell's clips (this
machine is shared), decoding and transforms included.

    python scripts/bench_decode_memory.py                      # ~2 minutes on 2 CPU cores
    python scripts/bench_decode_memory.py --sizes 3840x2160 --decoders decord --clips 1

Table and machine: docs/benchmarks.md#decoding-memory-frames-scaled-as-decoded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_video(path: Path, width: int, height: int, frames: int, fps: int = 30) -> None:
    """A smooth random colour texture scrolling 4 px per frame, with noise, encoded frame by frame (a 4K
    clip held whole would need 2 GiB here)."""
    import numpy as np

    from nlvideo.data.prepare.encode import H264Writer

    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (height // 32 + 2, (width + 4 * frames) // 32 + 2, 3)).astype(np.uint8)
    texture = np.repeat(np.repeat(coarse, 32, axis=0), 32, axis=1)[:height]
    with H264Writer(path, width, height, fps, crf=23, preset="ultrafast", gop=250) as writer:
        for t in range(frames):
            noise = rng.integers(0, 12, (height, width, 3), dtype=np.uint8)
            writer.write_rgb(texture[:, 4 * t : 4 * t + width] + noise)


def child(path: str, decoder: str, split: str, scaled: bool, clips: int) -> dict:
    """Runs in its own process: read ``clips`` clips, report the added RSS high-water mark."""
    import av  # noqa: F401  (imported before the baseline mark: every worker has them loaded)
    import decord  # noqa: F401
    import torch
    from omegaconf import OmegaConf

    import nlvideo  # noqa: F401  (torchvision compat shim)
    from nlvideo.data import clip_spec, read_clip

    torch.set_num_threads(1)  # one loader worker's share
    cfg = OmegaConf.load(REPO / "configs" / "data" / "kinetics400.yaml")
    cfg.root, cfg.num_frames, cfg.sampling_rate, cfg.decoder = "unused", 32, 2, decoder
    spec = dataclasses.replace(clip_spec(cfg, split), scale_on_decode=scaled)
    base, times = _hwm_mib(), []
    for seed in range(clips):
        start = time.perf_counter()
        clip, _, _ = read_clip(spec, path, view=1, rng=random.Random(seed))
        times.append(time.perf_counter() - start)
    return {"added_mib": _hwm_mib() - base, "base_mib": base, "ms": 1000 * min(times),
            "shape": list(clip.shape)}


def measure(path: Path, decoder: str, split: str, scaled: bool, clips: int) -> dict:
    """:func:`child` in a fresh process (a high-water mark only rises)."""
    cmd = [sys.executable, __file__, "--clips", str(clips), "--child", str(path), decoder, split,
           str(int(scaled))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _hwm_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["3840x2160", "1280x720"], help="WIDTHxHEIGHT")
    p.add_argument("--frames", type=int, default=80)
    p.add_argument("--decoders", nargs="+", default=["decord", "pyav"])
    p.add_argument("--splits", nargs="+", default=["train", "test"])
    p.add_argument("--clips", type=int, default=3, help="clips per cell (the fastest is shown)")
    p.add_argument("--child", nargs=4, metavar=("PATH", "DECODER", "SPLIT", "SCALED"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        path, decoder, split, scaled = a.child
        print(json.dumps(child(path, decoder, split, scaled == "1", a.clips)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="nlvideo_bench_mem_") as tmp:
        for size in a.sizes:
            width, height = (int(v) for v in size.split("x"))
            path = Path(tmp) / f"{size}.mp4"
            t0 = time.perf_counter()
            write_video(path, width, height, a.frames)
            print(f"wrote {path.name}: {a.frames} frames in {time.perf_counter() - t0:.1f}s", flush=True)
            for decoder in a.decoders:
                for split in a.splits:
                    full, scaled = (measure(path, decoder, split, s, a.clips) for s in (False, True))
                    print(f"  {size} {decoder} {split}: full size {full}, scaled {scaled}", flush=True)
                    rows.append((size, decoder, split, full, scaled))
    print()
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_data import cpu_name  # after the measurements: the children import only what they use

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {platform.python_version()}; one torch thread; "
          f"clip 32x2 (kinetics400.yaml); fastest of {a.clips} clips per cell; peak = RSS high-water mark "
          f"added to the ~{rows[0][3]['base_mib']:.0f} MiB after imports")
    print()
    print("| video | decoder | clip | full size: peak MiB | scaled: peak MiB | full size: ms/clip "
          "| scaled: ms/clip |")
    print("|---|---|---|---|---|---|---|")
    for size, decoder, split, full, scaled in rows:
        print(f"| {size} | {decoder} | {split} | {full['added_mib']:.0f} | {scaled['added_mib']:.0f} "
              f"| {full['ms']:.0f} | {scaled['ms']:.0f} |")


if __name__ == "__main__":
    main()
