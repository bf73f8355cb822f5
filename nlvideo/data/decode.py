"""Video decoding: decord random access (the default) and a PyAV sequential reader.

Both readers expose ``num_frames``, ``fps`` and ``get_batch(indices) -> uint8 array (T, H, W, 3)``
(RGB). Any failure to open or decode a file is raised as :class:`DecodeError` with the path and a
short reason, so the dataset can skip and count it.

decord's FFmpeg and decord itself print to the process's stderr on every failed open (``moov atom not
found``, ``ERROR opening ...``): 60 lines for one bad file in a 10x3 evaluation, beside the single
report that nlvideo makes. :class:`NativeStderr` collects that output while decord runs; a failure keeps
FFmpeg's first message in its reason and drops the rest, a success writes it out as it was. (PyAV, the
fallback and the other reader, prints nothing.)

* :class:`DecordVideo` wraps ``decord.VideoReader(path, num_threads=...)`` and reads a clip with one
  ``get_batch`` call (decord seeks to the key frame before the first index, decodes forward and
  converts only the requested frames).
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
from typing import IO

import numpy as np


class DecodeError(RuntimeError):
    """A video could not be opened or decoded. ``path`` and ``reason`` are kept for counting."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def check_file(path: str) -> None:
    """Cheap checks that give clearer reasons than the decoder's messages. A NUL byte (a list written by
    a broken tool) makes every file-system call raise ValueError: such a path is unreadable like any
    other, not a crash."""
    if "\0" in path:
        raise DecodeError(path, "path contains a NUL byte")
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise DecodeError(path, "broken symbolic link" if os.path.islink(path) else "missing file") from None
    except OSError as e:
        raise DecodeError(path, f"cannot stat: {e}") from None
    if size == 0:
        raise DecodeError(path, "zero-byte file")


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
    def __init__(self, path: str, num_threads: int = 1):
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
            raise DecodeError(path, f"cannot open: {_short(e)}{native.detail()}") from None
        native.replay()
        if self.num_frames < 1:
            raise DecodeError(path, "no frames")

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        native = NativeStderr()
        try:
            with native:
                frames = self._vr.get_batch(list(indices)).asnumpy()
        except Exception as e:
            reason = f"decode failed: {_short(e)}{native.detail()}"
            return self._pyav_fallback(indices, reason)
        native.replay()
        if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
            shape = f"decoder returned shape {frames.shape} for {len(indices)} frames"
            return self._pyav_fallback(indices, shape)
        return frames

    def _pyav_fallback(self, indices: Sequence[int], reason: str) -> np.ndarray:
        """decord cannot convert some valid videos (e.g. frames narrower than 32 px: "The size must
        exactly match"); decode those with PyAV. If PyAV fails too, the video is reported with
        decord's reason."""
        try:
            video = PyAVVideo(self.path)
        except DecodeError:
            raise DecodeError(self.path, reason) from None
        try:
            return video.get_batch(indices)
        except DecodeError:
            raise DecodeError(self.path, reason) from None
        finally:
            video.close()

    def close(self) -> None:
        self._vr = None


class PyAVVideo:
    def __init__(self, path: str, num_threads: int = 1):
        import av

        check_file(path)
        self.path = path
        try:
            self._container = av.open(path)
            self._stream = self._container.streams.video[0]
        except Exception as e:
            raise DecodeError(path, f"cannot open: {_short(e)}") from None
        if num_threads != 1:
            self._stream.thread_type = "AUTO"
            self._stream.thread_count = max(num_threads, 0)
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
            raise DecodeError(path, "no frames")

    def _index(self, pts: int) -> int:
        return int(math.floor(float((pts - self._start) * self._time_base) * self.fps + 0.5))

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
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
                    got[idx] = frame.to_ndarray(format="rgb24")
                if idx >= last:
                    break
        except Exception as e:
            raise DecodeError(self.path, f"decode failed: {_short(e)}") from None
        if not got:
            raise DecodeError(self.path, f"no frames decoded in [{first}, {last}]")
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


def open_video(path: str, decoder: str = "decord", num_threads: int = 1) -> DecordVideo | PyAVVideo:
    """Open ``path`` with the named decoder; raises :class:`DecodeError` on any failure."""
    try:
        cls = DECODERS[decoder]
    except KeyError:
        raise ValueError(f"data.decoder={decoder!r}; expected one of {sorted(DECODERS)}") from None
    return cls(path, num_threads=num_threads)
