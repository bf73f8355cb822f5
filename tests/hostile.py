"""Writers of hostile inputs for the reliability tests: unusual but valid videos (1 frame, 2x2, grey,
yuv444p, variable frame rate, one key frame for the whole video, spaces and unicode in the name) and
broken files (zero bytes, truncated at a fraction, text named ``.mp4``).

Every real video is index-coded like ``tests/conftest.make_video``: frame ``t`` is flat grey level
``3 * (t % 85)`` (so a decoded clip tells which frames it holds), encoded with libx264 through PyAV.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def coded_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t] = 3 * (t % 85)
    return frames


def encode(path: str | Path, num_frames: int = 40, width: int = 64, height: int = 48, fps: int = 24,
           pix_fmt: str = "yuv420p", gop: int | None = None, pts_ms: list[int] | None = None) -> Path:
    """Write an index-coded H.264 mp4.

    ``pix_fmt``: ``yuv420p``, ``yuv444p`` or ``gray``; ``gop``: key-frame interval (a huge value gives
    one key frame for the whole video); ``pts_ms``: per-frame presentation times in milliseconds
    (irregular values make a variable-frame-rate video).
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = coded_frames(num_frames, height, width)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        options = {"crf": "10", "preset": "superfast"}
        if gop is not None:
            options.update({"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"})
        stream.options = options
        stream.codec_context.thread_count = 1
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        for t, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if pix_fmt == "gray":
                frame = frame.reformat(format="gray")
            if pts_ms is not None:
                frame.pts = pts_ms[t]
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def irregular_pts_ms(num_frames: int, seed: int = 0) -> list[int]:
    """Strictly increasing times with gaps of 10..90 ms (11..100 fps), as phone videos have."""
    gaps = np.random.default_rng(seed).integers(10, 91, num_frames)
    return [0, *np.cumsum(gaps[:-1]).astype(int).tolist()]


def truncated(src: str | Path, dst: str | Path, fraction: float) -> Path:
    """The first ``fraction`` of the bytes of ``src`` (an interrupted download or copy)."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def zero_byte(path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def text_as_mp4(path: str | Path) -> Path:
    path = Path(path)
    path.write_text("<html><body>404 Not Found</body></html>\n" * 40)
    return path


def gray_mkv(path: str | Path, num_frames: int = 40, width: int = 64, height: int = 48,
             fps: int = 24) -> Path:
    """A single-channel (``gray``) video: lossless FFV1 in Matroska (this libx264 build only writes
    4:2:0/4:2:2/4:4:4 in mp4)."""
    import av

    path = Path(path)
    frames = coded_frames(num_frames, height, width)[..., 0]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "gray"
        for g in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(g), format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# name -> number of frames of the unusual but valid videos of :func:`make_hostile_root`
VALID = {"one_frame.mp4": 1, "tiny_2x2.mp4": 40, "gray.mkv": 40, "yuv444p.mp4": 40, "vfr.mp4": 40,
         "long_gop.mp4": 80, "dir with space/vidéo ü 日本 #1.mp4": 40}
# name -> the start of the reason each broken file is reported with
BROKEN = {"zero_byte.mp4": "zero-byte file", "text.mp4": "cannot open", "missing.mp4": "missing file",
          "cut_10.mp4": "cannot open", "cut_50.mp4": "cannot open", "cut_90.mp4": "cannot open",
          "faststart_cut_10.mp4": "cannot open", "faststart_cut_50.mp4": "cannot open"}


def make_hostile_root(root: str | Path, num_good: int = 4) -> dict[str, list[str]]:
    """A Kinetics-style dataset (``train.csv``/``val.csv``, tab-separated, 2 classes) mixing
    ``num_good`` ordinary videos (``good_<i>.mp4``, label ``i % 2``), the unusual but valid videos
    of :data:`VALID` and the broken files of :data:`BROKEN` (``missing.mp4`` is listed, not written),
    interleaved. Returns the relative paths by kind: ``good``, ``valid``, ``broken``."""
    from nlvideo.data.synthetic import write_mp4

    root = Path(root)
    v = root / "videos"
    good = [f"good_{i}.mp4" for i in range(num_good)]
    for i, name in enumerate(good):
        encode(v / name, num_frames=40 + 4 * i)
    encode(v / "one_frame.mp4", num_frames=1)
    encode(v / "tiny_2x2.mp4", width=2, height=2)
    gray_mkv(v / "gray.mkv")
    encode(v / "yuv444p.mp4", pix_fmt="yuv444p")
    encode(v / "vfr.mp4", pts_ms=irregular_pts_ms(40))
    encode(v / "long_gop.mp4", num_frames=80, gop=100_000)
    encode(v / "dir with space" / "vidéo ü 日本 #1.mp4")
    zero_byte(v / "zero_byte.mp4")
    text_as_mp4(v / "text.mp4")
    for pct in (10, 50, 90):
        truncated(v / "long_gop.mp4", v / f"cut_{pct}.mp4", pct / 100)  # mp4 index (moov) at the end
    write_mp4(v / "faststart_full.mp4", coded_frames(80, 48, 64), faststart=True)
    for pct in (10, 50):
        truncated(v / "faststart_full.mp4", v / f"faststart_cut_{pct}.mp4", pct / 100)
    (v / "faststart_full.mp4").unlink()
    kinds = {"good": good, "valid": list(VALID), "broken": list(BROKEN)}
    order = []  # round robin: every good video has unusual and broken neighbours
    for i in range(max(map(len, kinds.values()))):
        order += [names[i] for names in (kinds["good"], kinds["valid"], kinds["broken"]) if i < len(names)]
    labels = {name: (good.index(name) % 2 if name in good else pos % 2) for pos, name in enumerate(order)}
    lines = "".join(f"videos/{name}\t{labels[name]}\n" for name in order)
    (root / "train.csv").write_text(lines, encoding="utf-8")
    (root / "val.csv").write_text(lines, encoding="utf-8")
    return {k: [f"videos/{n}" for n in names] for k, names in kinds.items()}
