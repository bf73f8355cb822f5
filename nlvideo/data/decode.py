"""Video decoding: decord random access (the default) and a PyAV sequential reader.

Both readers expose ``num_frames``, ``fps``, ``native_size`` and ``size`` (``(H, W)`` of the file and
of the frames returned; None when the header does not say) and ``get_batch(indices) -> uint8 array
(T, H, W, 3)`` (RGB). Any failure to open or decode a file is raised as :class:`DecodeError` with the
path and a short reason, so the dataset can skip and count it.

**Frames at the size needed.** With ``short_side=S`` a file whose frames hold at least
:data:`MIN_SHRINK` times the pixels of short side ``S`` comes back at short side ``S`` (aspect kept,
the long side rounded as :func:`~nlvideo.data.transforms.scaled_size` rounds it, so a later resize to
``S`` is a no-op and crops land where they did); other files come back as they are. Each frame is
scaled as soon as it is decoded, so a 32-frame clip of a 3840x2160 video holds 32 small frames
instead of 32 x 24 MiB plus the transforms' full-size intermediates (2.0-2.3 GiB per clip before;
``scripts/bench_decode_memory.py``). The scaling is :func:`to_rgb`: RGB conversion at full size, then
the transforms' own antialiased resize (:func:`~nlvideo.data.transforms.short_side_resize`), one frame
at a time: a test view gets exactly the pixels it got when whole clips were resized, a training crop
differs only by being resampled twice. decord's own resize-on-decode (``VideoReader(width=,
height=)``), faster still, is not used: swscale converts colours on its scaled path 1-2 levels (of
255) darker than on every other path here, enough to turn index-coded test frames into their
neighbours.

decord's FFmpeg and decord itself print to the process's stderr on every failed open (``moov atom not
found``, ``ERROR opening ...``): 60 lines for one bad file in a 10x3 evaluation, beside the single
report that nlvideo makes. :class:`NativeStderr` collects that output while decord runs; a failure keeps
FFmpeg's first message in its reason and drops the rest, a success writes it out as it was. (PyAV, the
fallback and the other reader, prints nothing.)

* :class:`DecordVideo` wraps ``decord.VideoReader(path, num_threads=...)`` and reads a clip with one
  ``get_batch`` call (decord seeks to the key frame before the first index, decodes forward and
  converts only the requested frames). Frames to be scaled are decoded by PyAV instead, from decord's
  key frame before the clip, and matched to decord's frames by presentation time: the same frames
  (variable frame rate included), without decord's full-size frame buffers (+260 MiB at 4K).
* :class:`PyAVVideo` is the PySlowFast baseline used by ``scripts/bench_data.py`` (and available as
  ``data.decoder=pyav``), following PySlowFast's ``pyav_decode``: seek to the key frame at or
  before the first needed frame, decode sequentially until the last needed frame, convert every
  frame of the clip's window ``[first, last]`` to RGB, then keep the needed ones.
"""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import IO, TYPE_CHECKING

import numpy as np
import torch

from nlvideo.data.transforms import scaled_size, short_side_resize

if TYPE_CHECKING:
    import av


class DecodeError(RuntimeError):
    """A video could not be opened or decoded. ``path`` and ``reason`` are kept for counting; ``empty``
    marks a file that holds nothing (zero bytes, no frames) rather than one that cannot be read, which
    ``nlvideo.data.check`` reports apart."""

    def __init__(self, path: str, reason: str, empty: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.empty = empty


def check_file(path: str) -> None:
    """Cheap checks that give clearer reasons than the decoder's messages. A NUL byte (a list written by
    a broken tool) makes every file-system call raise ValueError: such a path is unreadable like any
    other, not a crash."""
    if "\0" in path:
        raise DecodeError(path, "path contains a NUL byte")
    if not path.isprintable() and any(0xDC80 <= ord(ch) <= 0xDCFF for ch in path):
        raise DecodeError(path, "file name is not UTF-8 (decord cannot open it): rename the file, e.g. "
                                "python -m nlvideo.data.prepare gives it a UTF-8 name")
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise DecodeError(path, "broken symbolic link" if os.path.islink(path) else "missing file") from None
    except OSError as e:
        raise DecodeError(path, f"cannot stat: {e}") from None
    if size == 0:
        raise DecodeError(path, "zero-byte file", empty=True)


# Frames are scaled while decoding only when they hold at least this many times the pixels kept. Below
# that, full-size frames cost little memory, and resizing every frame whole costs more than it saves
# (training otherwise resizes only the crop box). Measured (scripts/bench_decode_memory.py's clips):
# 854x480 to short side 320 (2.25x the pixels) 61 ms scaled vs 45 ms full size, to 256 (3.5x) 39 vs
# 59 ms; 1280x720 to 320 (5.1x) 127 vs 130 ms and 108 vs 260 MiB; 3840x2160 ~170 MiB vs 2 GiB.
MIN_SHRINK = 3.0


def output_size(native: tuple[int, int] | None, short_side: int | None) -> tuple[int, int] | None:
    """``(H, W)`` to scale frames of ``native`` size to for ``short_side``, or None to keep them as they
    are: the size is unknown, or scaling would not shrink them by :data:`MIN_SHRINK` (upscaling stays
    with the transforms)."""
    if native is None or short_side is None:
        return None
    size = scaled_size(*native, short_side)
    return size if native[0] * native[1] >= MIN_SHRINK * size[0] * size[1] else None


def to_rgb(frame: av.VideoFrame, short_side: int | None = None) -> np.ndarray:
    """``frame`` as RGB ``(H, W, 3)``, its short side resized to ``short_side`` when given: converted at
    full size (swscale's exact unscaled path), then resized by :func:`short_side_resize` (torch's uint8
    antialiased resize, which keeps the frame channels-last). Scaling in YUV instead would resample the
    4:2:0 chroma at the small size (9 levels off at colour edges), and converting while scaling takes
    swscale's darker colour path (see the module docstring)."""
    rgb = frame.to_ndarray(format="rgb24")
    if short_side is None:
        return rgb
    frames = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # (1, C, H, W), channels-last in memory
    return short_side_resize(frames, short_side)[0].permute(1, 2, 0).numpy()


NO_VIDEO_STREAM = "no video stream"  # e.g. an audio-only file


class NoVideoStream(ValueError):
    """The container opens but holds no video stream."""


def has_no_video_stream(path: str) -> bool:
    """Whether ``path`` is a container FFmpeg opens that holds no video stream (decord's message for
    one is an internal check, ``cannot find video stream with wanted index: -1``)."""
    try:
        open_pyav(path)[0].close()
    except NoVideoStream:
        return True
    except Exception:  # noqa: BLE001 - unreadable for another reason: the decoder's message says which
        return False
    return False


def open_pyav(path: str, num_threads: int = 1) -> tuple[av.container.InputContainer, av.VideoStream]:
    """The container and first video stream of ``path``, decoding with ``num_threads`` threads."""
    import av

    container = av.open(path)
    try:
        stream = container.streams.video[0]
    except IndexError:
        container.close()
        raise NoVideoStream(NO_VIDEO_STREAM) from None
    if num_threads != 1:
        stream.thread_type = "AUTO"
        stream.thread_count = max(num_threads, 0)
    return container, stream


def frame_size(stream: av.VideoStream) -> tuple[int, int] | None:
    """``(H, W)`` of the stream's frames from its header, None when the header does not say."""
    ctx = stream.codec_context
    return (ctx.height, ctx.width) if ctx is not None and ctx.height > 0 and ctx.width > 0 else None


def _short(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:200]}"


_FFMPEG_MESSAGE = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\] (.+)$", re.MULTILINE)


class NativeStderr:
    """``with NativeStderr() as native:`` sends what native code writes to file descriptor 2 during the
    block to a temporary file (Python-level redirection cannot catch C++ ``std::cerr`` or FFmpeg's
    ``av_log``); afterwards ``native.text`` holds it.

    File descriptor 2 belongs to the whole process, so blocks are serialised by a lock: a second thread
    would otherwise save the redirected descriptor as "the original" and leave stderr pointing at the
    sink. The sink is one file per process (a forked loader worker makes its own: an inherited one
    would share its offset with the parent), emptied after each block; about 5 us per block.
    """

    _lock = threading.Lock()
    _sink: tuple[int, IO[bytes]] | None = None  # (pid, file)

    def __init__(self) -> None:
        self.text = ""

    @classmethod
    def _sink_fd(cls) -> int:
        if cls._sink is None or cls._sink[0] != os.getpid():
            cls._sink = (os.getpid(), tempfile.TemporaryFile())  # noqa: SIM115 - open for the process's life
        return cls._sink[1].fileno()

    def __enter__(self) -> NativeStderr:
        self._lock.acquire()
        sys.stderr.flush()  # Python's pending output belongs before the block, not in the sink
        self._saved = os.dup(2)
        os.dup2(self._sink_fd(), 2)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            fd = self._sink_fd()
            size = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, 0, os.SEEK_SET)
            self.text = os.read(fd, size).decode("utf-8", "replace") if size else ""
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)  # truncating leaves the offset where it was
        finally:
            self._lock.release()

    def detail(self) -> str:
        """FFmpeg's first message as ``" (moov atom not found)"``, or ``""``: it says more than
        decord's exception (``Error reading <path>...``)."""
        m = _FFMPEG_MESSAGE.search(self.text)
        return f" ({m.group(1).strip()})" if m else ""

    def replay(self) -> None:
        """Write the collected output to stderr: what a successful call printed is not ours to hide."""
        if self.text:
            os.write(2, self.text.encode())


class DecordVideo:
    def __init__(self, path: str, num_threads: int = 1, short_side: int | None = None):
        import decord  # imported lazily: a broken decord install should only fail when used

        check_file(path)
        self.path = path
        native = NativeStderr()
        try:
            with native:
                self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
                self.num_frames = len(self._vr)
                self.fps = float(self._vr.get_avg_fps())
        except Exception as e:  # decord raises DECORDError / RuntimeError for unreadable files
            if has_no_video_stream(path):
                raise DecodeError(path, NO_VIDEO_STREAM) from None
            raise DecodeError(path, f"cannot open: {_short(e)}{native.detail()}") from None
        native.replay()
        if self.num_frames < 1:
            raise DecodeError(path, "no frames", empty=True)
        self._short_side, self._times = short_side, None  # the fallback reader gets the same request
        self._container, self._stream, self.native_size = None, None, None
        try:  # the frame size, from the header: decord cannot tell it without decoding a frame
            self._container, self._stream = open_pyav(path, num_threads)
            self.native_size = frame_size(self._stream)
        except Exception:  # noqa: BLE001 - unknown size: frames at full size, from decord
            pass
        self.size = output_size(self.native_size, short_side) or self.native_size
        self._scale_to = short_side if self.size != self.native_size else None
        if self._scale_to is None and self._container is not None:  # PyAV is only needed to scale
            self._container.close()
            self._container = None

    def get_batch(self, indices: Sequence[int], strict: bool = False) -> np.ndarray:
        """Frames ``indices`` (T, H, W, 3). ``strict``: raise :class:`DecodeError` where the PyAV fallback
        (:meth:`_pyav_fallback`) would step in: this reader's own frames, or none."""
        fallback = self._refuse if strict else self._pyav_fallback
        if self._scale_to is not None:
            try:
                return self._scaled_batch(indices)
            except Exception as e:  # noqa: BLE001 - any PyAV failure: the PySlowFast reader tries next
                return fallback(indices, f"decode failed: {_short(e)}")
        native = NativeStderr()
        try:
            with native:
                frames = self._vr.get_batch(list(indices)).asnumpy()
        except Exception as e:
            reason = f"decode failed: {_short(e)}{native.detail()}"
            return fallback(indices, reason)
        native.replay()
        if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
            shape = f"decoder returned shape {frames.shape} for {len(indices)} frames"
            return fallback(indices, shape)
        return frames

    def frame_times(self) -> np.ndarray:
        """Presentation time (s) of every frame, in decord's frame order (from the container's index;
        nothing is decoded)."""
        if self._times is None:
            self._times = self._vr.get_frame_timestamp(range(self.num_frames))[:, 0].astype(np.float64)
        return self._times

    def _scaled_batch(self, indices: Sequence[int]) -> np.ndarray:
        """decord's frames ``indices``, decoded by PyAV and scaled one at a time (:func:`to_rgb`): seek to
        decord's key frame before the first one, decode forward and keep each frame whose presentation
        time (from the stream's start, as decord counts it) is that of a wanted frame of decord's index
        (within 1 ms). A frame not met that way (times
        that the two libraries read differently) raises, and the caller falls back to PyAV's own
        indexing."""
        times, tol = self.frame_times(), 1e-3
        base, start = float(self._stream.time_base), self._stream.start_time or 0
        wanted = set(int(i) for i in indices)
        first, last = min(wanted), max(wanted)
        key = max((int(k) for k in self._vr.get_key_indices() if k <= first), default=0)
        self._container.seek(start + int((times[key] + tol) / base), stream=self._stream, backward=True,
                             any_frame=False)
        got: dict[int, np.ndarray] = {}
        for frame in self._container.decode(self._stream):
            if frame.pts is None:
                continue
            t = (frame.pts - start) * base
            i = min(int(np.searchsorted(times, t - tol)), len(times) - 1)
            if i in wanted and i not in got and abs(times[i] - t) <= tol:
                got[i] = to_rgb(frame, self._scale_to)
            if len(got) == len(wanted) or t > times[last] + tol:
                break
        missing = sorted(wanted - got.keys())
        if missing:
            raise ValueError(f"PyAV met no frame at the time of decord's frame(s) {missing[:3]}")
        return np.stack([got[int(i)] for i in indices])

    def _pyav_fallback(self, indices: Sequence[int], reason: str) -> np.ndarray:
        """decord cannot convert some valid videos (e.g. frames narrower than 32 px: "The size must
        exactly match"); decode those with PyAV. If PyAV fails too, the video is reported with
        decord's reason."""
        try:
            video = PyAVVideo(self.path, short_side=self._short_side)
        except DecodeError:
            raise DecodeError(self.path, reason) from None
        try:
            return video.get_batch(indices)
        except DecodeError:
            raise DecodeError(self.path, reason) from None
        finally:
            video.close()

    def _refuse(self, indices: Sequence[int], reason: str) -> np.ndarray:
        raise DecodeError(self.path, reason)

    def close(self) -> None:
        self._vr = None
        if self._container is not None:
            self._container.close()
            self._container = None


class PyAVVideo:
    def __init__(self, path: str, num_threads: int = 1, short_side: int | None = None):
        check_file(path)
        self.path = path
        try:
            self._container, self._stream = open_pyav(path, num_threads)
        except NoVideoStream:
            raise DecodeError(path, NO_VIDEO_STREAM) from None
        except Exception as e:
            raise DecodeError(path, f"cannot open: {_short(e)}") from None
        self.native_size = frame_size(self._stream)
        self.size = output_size(self.native_size, short_side) or self.native_size
        self._scale_to = short_side if self.size != self.native_size else None
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 30.0
        self._time_base = self._stream.time_base or Fraction(1, 1)
        self._start = self._stream.start_time or 0
        n = self._stream.frames
        if not n and self._stream.duration:
            n = int(math.floor(float(self._stream.duration * self._time_base) * self.fps + 0.5))
        if not n and self._container.duration:  # e.g. Matroska: only the container has a duration
            n = int(math.floor(self._container.duration / 1_000_000 * self.fps + 0.5))
        self.num_frames = int(n)
        if self.num_frames < 1:
            self._container.close()
            raise DecodeError(path, "no frames", empty=True)

    def _index(self, pts: int) -> int:
        return int(math.floor(float((pts - self._start) * self._time_base) * self.fps + 0.5))

    def get_batch(self, indices: Sequence[int], strict: bool = False) -> np.ndarray:
        """Frames ``indices`` (T, H, W, 3); an index past the frames decoded repeats the last one before
        it, unless ``strict``: then a frame not decoded is a :class:`DecodeError`."""
        wanted = sorted(set(int(i) for i in indices))
        first, last = wanted[0], wanted[-1]
        got: dict[int, np.ndarray] = {}
        try:
            if first > 0:
                target = self._start + int(first / self.fps / self._time_base)
                self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
            for frame in self._container.decode(self._stream):
                if frame.pts is None:
                    continue
                idx = self._index(frame.pts)
                if first <= idx <= last and idx not in got:  # PySlowFast converts the whole window
                    got[idx] = to_rgb(frame, self._scale_to)
                if idx >= last:
                    break
        except Exception as e:
            raise DecodeError(self.path, f"decode failed: {_short(e)}") from None
        if not got:
            raise DecodeError(self.path, f"no frames decoded in [{first}, {last}]")
        if strict and not got.keys() >= set(wanted):
            missing = sorted(set(wanted) - got.keys())
            raise DecodeError(self.path, f"frame(s) {missing[:3]} not decoded")
        # Frames missing at the end (index beyond the real length) repeat the last decoded one.
        keys = sorted(got)
        out = []
        for i in indices:
            k = max((k for k in keys if k <= i), default=keys[0])
            out.append(got[k])
        return np.stack(out)

    def close(self) -> None:
        self._container.close()


DECODERS = {"decord": DecordVideo, "pyav": PyAVVideo}


def open_video(path: str, decoder: str = "decord", num_threads: int = 1,
               short_side: int | None = None) -> DecordVideo | PyAVVideo:
    """Open ``path`` with the named decoder, frames at ``short_side`` when the file is larger (see the
    module docstring); raises :class:`DecodeError` on any failure."""
    try:
        cls = DECODERS[decoder]
    except KeyError:
        raise ValueError(f"data.decoder={decoder!r}; expected one of {sorted(DECODERS)}") from None
    return cls(path, num_threads=num_threads, short_side=short_side)
