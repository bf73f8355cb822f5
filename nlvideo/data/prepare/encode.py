"""Re-encoding one video with PyAV: smaller, a short key-frame interval, no audio.

:func:`encode_video` decodes the source's first video stream, scales each frame so that its short side
is ``short_side`` (never up: a smaller video keeps its size; both sides rounded to even numbers, which
4:2:0 H.264 needs), optionally resamples it to a constant ``fps`` by presentation time, and encodes it
with libx264 (``crf``, ``preset``, a key frame at least every ``gop`` frames, closed GOPs) into an mp4
whose index is at the front, with the caller's ``comment`` in its metadata (prepare records the
source and options there, see :func:`comment_of`). The output is written under a hidden temporary
name next to the target and renamed when complete, so an interrupted run never leaves a partial file
under the final name. Frames are streamed: a long 4K video costs a few frames of memory.

:class:`H264Writer` is that encoder on its own; the built-in dataset's
:func:`~nlvideo.data.synthetic.write_mp4` writes through it too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import av

# A file decoding to fewer of the frames its header counts is cut short (an interrupted download);
# mp4 edit lists can hide a frame or two, hence the margin.
MIN_FRAME_FRACTION = 0.95
_COLOUR_TAGS = ("colorspace", "color_range", "color_primaries", "color_trc")


class H264Writer:
    """``with H264Writer(path, width, height, fps, ...) as w: w.write_rgb(rgb)`` writes an H.264 mp4
    (libx264, yuv420p) frame by frame. ``gop``: key-frame interval (x264's default, 250, when None);
    ``faststart``: the mp4 index before the frame data, so a reader needs no seek to the end;
    ``colour_from``: a decoded stream whose colour tags (matrix, range) the output keeps, so that
    decoders convert its YUV values to the same RGB; ``metadata``: the container's tags. One encoder
    thread: parallelism comes from encoding several videos at once, and one thread makes the output a
    function of the input.

    x264's ``cpu-independent`` is on too. Without it, on a CPU with AVX-512, x264's AVX-512 mb-tree
    propagation handles 8 macroblocks at a time and, when a row is not a multiple of 8 macroblocks wide,
    also propagates the lanes past the row's end: on the last row those are read from uninitialised
    memory, so the same input can encode to different bytes from one call to the next (a frame's QP
    moves). The option swaps just the two mb-tree functions for x264's C ones (no measurable slowdown),
    and is x264's switch for output that is the same on every CPU."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float | Fraction, crf: int = 23,
                 preset: str = "veryfast", gop: int | None = None, faststart: bool = False,
                 container_format: str | None = None, colour_from: av.VideoStream | None = None,
                 metadata: dict[str, str] | None = None):
        import av

        self.rate = Fraction(fps).limit_denominator(1001 * 1000)
        self._container = av.open(str(path), "w", format=container_format,
                                  options={"movflags": "faststart"} if faststart else None)
        try:
            self._container.metadata.update(metadata or {})
            self._stream = self._container.add_stream("libx264", rate=self.rate)
            self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
            self._stream.options = {"crf": str(crf), "preset": preset, "x264-params": "cpu-independent=1",
                                    **({"g": str(gop)} if gop else {})}
            ctx = self._stream.codec_context
            ctx.thread_count = 1
            if colour_from is not None:
                for tag in _COLOUR_TAGS:
                    setattr(ctx, tag, getattr(colour_from.codec_context, tag))
        except BaseException:
            self._container.close()
            raise
        self.frames = 0

    def write(self, frame: av.VideoFrame) -> None:
        """Encode ``frame`` (at the output size; PyAV converts other pixel formats) as the next frame."""
        frame.pts, frame.time_base = self.frames, 1 / self.rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def write_rgb(self, rgb: np.ndarray) -> None:
        """Encode a uint8 ``(H, W, 3)`` RGB array as the next frame."""
        import av

        self.write(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))

    def close(self, flush: bool = True) -> None:
        """Finish the file (``flush``: encode the frames x264 still holds) and close it; without flushing
        the file is incomplete, for a caller that deletes it."""
        try:
            if flush:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
            self._container.close()

    def __enter__(self) -> H264Writer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(flush=exc_type is None)


@dataclass(frozen=True)
class EncodeOptions:
    """How videos are re-encoded (``python -m nlvideo.data.prepare --help`` describes each)."""

    short_side: int = 256
    gop: int = 16
    fps: float | None = None
    crf: int = 23
    preset: str = "veryfast"


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                "veryslow", "placebo")


@dataclass(frozen=True)
class Encoded:
    """What was written: frame count, duration (s) and size."""

    frames: int
    seconds: float
    width: int
    height: int


def output_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(H, W)`` with the short side at ``short_side`` (or kept when already smaller) and the aspect
    ratio kept, both rounded to even numbers."""
    scale = min(short_side / min(height, width), 1.0)
    return max(2, 2 * round(height * scale / 2)), max(2, 2 * round(width * scale / 2))


def _resampled(frames: Iterator[av.VideoFrame], src_rate: float, fps: float) -> Iterator[av.VideoFrame]:
    """``frames`` at a constant ``fps``: output frame j shows the source frame on screen at time j/fps
    (the last one starting at most half a source frame later, so a source at the same rate with
    jittered timestamps maps one to one), until the end of the last source frame. A frame without a
    timestamp is placed at its index / ``src_rate``."""
    half, start, prev, last, j = 0.5 / src_rate, None, None, 0.0, 0
    for i, frame in enumerate(frames):
        t = float(frame.time) if frame.time is not None else i / src_rate
        start = t if start is None else start
        while prev is not None and j / fps + half < t - start:
            yield prev
            j += 1
        prev, last = frame, t - start
    while prev is not None and j / fps < last + 2 * half - 1e-9:
        yield prev
        j += 1


def _source_rate(stream: av.VideoStream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else Fraction(30)


def encode_video(src: str | Path, dst: str | Path, opts: EncodeOptions, comment: str = "") -> Encoded:
    """Re-encode ``src`` into ``dst`` (see the module docstring), ``comment`` in its metadata. Raises
    ValueError for a source with no video, no decodable frame or fewer frames than its header counts;
    PyAV's errors pass through."""
    import av

    dst = Path(dst)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.part"
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one thread per video: videos are prepared in parallel
        src_rate = _source_rate(stream)
        out_rate = Fraction(opts.fps).limit_denominator(1001) if opts.fps else src_rate
        decoded = 0

        def counted() -> Iterator[av.VideoFrame]:
            nonlocal decoded
            for frame in container.decode(stream):
                decoded += 1
                yield frame

        frames = counted()
        if opts.fps:
            frames = _resampled(frames, float(src_rate), float(out_rate))
        writer = None
        try:
            for frame in frames:
                if writer is None:
                    height, width = output_size(frame.height, frame.width, opts.short_side)
                    writer = H264Writer(tmp, width, height, out_rate, opts.crf, opts.preset, opts.gop,
                                        faststart=True, container_format="mp4", colour_from=stream,
                                        metadata={"comment": comment} if comment else None)
                writer.write(frame.reformat(width=width, height=height, format="yuv420p",
                                            interpolation="BICUBIC"))
            if writer is None:
                raise ValueError("no frames decoded")
            expected = stream.frames
            if expected and decoded < MIN_FRAME_FRACTION * expected:
                raise ValueError(f"cut short: {decoded} of the {expected} frames its header counts decode")
            writer.close()
            os.replace(tmp, dst)
        except BaseException:
            if writer is not None:
                writer.close(flush=False)
            tmp.unlink(missing_ok=True)
            raise
    return Encoded(writer.frames, writer.frames / float(out_rate), width, height)


def comment_of(path: str | Path) -> tuple[float, str]:
    """Seconds of a video from its header (frame count / rate, else the container's duration), and the
    ``comment`` :func:`encode_video` wrote into it ("" if none)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        comment = container.metadata.get("comment", "")
        if stream.frames:
            return stream.frames / float(_source_rate(stream)), comment
        return (container.duration / 1e6 if container.duration else math.nan), comment
