"""One writer per run directory: an exclusive ``flock`` on ``<run_dir>/.nlvideo.lock`` for the run's life.

A requeued job can start while the previous one still runs (or a user reruns the same command): two
processes training into one run dir would interleave their checkpoints and delete each other's
temporary files. The lock makes the second one refuse at once with one line naming the holder, or
wait for it (``trainer.wait_for_run_dir=true``). The kernel drops the lock when its holder dies, so a
killed run never leaves a stale lock behind; the file itself only records who holds it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".nlvideo.lock"


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory."""


class RunDirLock:
    """``with RunDirLock(run_dir):`` holds the run dir; :meth:`acquire` raises :class:`RunDirBusy`."""

    def __init__(self, run_dir: str | os.PathLike, wait: bool = False, poll_s: float = 1.0):
        self.path = Path(run_dir) / LOCK_NAME
        self.wait = wait
        self.poll_s = poll_s
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self.holder() or "another process"
                if not self.wait:
                    os.close(fd)
                    raise RunDirBusy(f"run dir {self.path.parent} is in use by {holder}: wait for it to end, "
                                     "pass trainer.wait_for_run_dir=true to wait, or choose another "
                                     "hydra.run.dir") from None
                if not announced:
                    print(f"waiting for run dir {self.path.parent} (held by {holder})", flush=True)
                    announced = True
                time.sleep(self.poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%F %T')}\n"
                 .encode())
        os.fsync(fd)
        self._fd = fd

    def holder(self) -> str:
        """What the holder wrote about itself ("host H pid P since T"), or "" if unknown."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
