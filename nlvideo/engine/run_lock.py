"""One writer per run directory: an exclusive record lock (``lockf``) on ``<run_dir>/.nlvideo.lock`` for
the run's life.

A requeued job can start while the previous one still runs (or a user reruns the same command): two
processes training into one run dir would interleave their checkpoints and delete each other's
temporary files. The lock makes the second one refuse at once with one line naming the holder, or
wait for it (``trainer.wait_for_run_dir=true``). The kernel drops the lock when its holder dies, so a
killed run never leaves a stale lock behind; the file itself only records who holds it.

A POSIX record lock belongs to the process, and a child made by ``fork`` (a DataLoader worker) does not
inherit it. An ``flock`` belongs to the open file, which forked workers share: after a SIGKILL of
the main process its workers, still alive for a few seconds, kept the dir held and an immediate rerun
was refused naming the dead pid. The price of record locks: closing *any* descriptor of the lock
file drops the process's lock, so a process that holds it never opens the file again (its hold is
kept in ``_held`` and shared).

Hydra writes into the run dir (``.hydra/*.yaml``, the job's log file) before the job function runs, so
the lock is taken earlier than ``train()``: the job's log file is :class:`RunLogFile`
(``configs/hydra/job_logging/nlvideo.yaml``), and Hydra configures logging after it has made the run
dir and before it writes anything there. A process holds its run dir once: ``train()``'s own
:class:`RunDirLock` on the same dir shares the hold it already has.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".nlvideo.lock"
_held: dict[str, list[int]] = {}  # lock file -> [fd, holders]: the run dirs this process holds


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
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in _held:  # this process holds the dir already (its log file took it): share that hold
            _held[key][1] += 1
            self._fd = _held[key][0]
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        announced = False
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
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
        _held[key] = [fd, 1]

    def holder(self) -> str:
        """What the holder wrote about itself ("host H pid P since T"), or "" if unknown."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def release(self) -> None:
        """Give up this hold; the lock itself is dropped when the process's last hold on the dir ends."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        key = os.path.realpath(self.path)
        if _held.get(key, [None])[0] != fd:  # released already, by another holder of this process
            return
        _held[key][1] -= 1
        if _held[key][1] > 0:
            return
        del _held[key]
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunLogFile(logging.FileHandler):
    """The job's log file (``<run dir>/<job name>.log``), opened once this process holds the run dir.

    Hydra builds it when it configures the job's logging, after making the run dir and before writing
    ``.hydra/*.yaml`` there, so a second job on a dir in use refuses (one ``error:`` line, exit status
    2, as :func:`nlvideo.engine.cli.run_job` does) or waits (``wait``: ``trainer.wait_for_run_dir``)
    before it writes anything. Only rank 0 locks (ranks > 0 of a torchrun job have no log file; those
    of a submitit job share rank 0's dir). The hold ends when Hydra configures the next job of a sweep
    (which closes this handler) or when the process exits.
    """

    def __init__(self, filename: str, wait: bool = False, **kwargs):
        from nlvideo.engine import run_start
        from nlvideo.engine.distributed import env_rank

        self.run_dir_lock: RunDirLock | None = None
        run_dir = Path(os.path.abspath(filename)).parent
        try:
            if env_rank() == 0:
                lock = RunDirLock(run_dir, wait=wait is True)
                old_lock = lock.path.read_bytes() if lock.path.is_file() else None
                lock.acquire()
                self.run_dir_lock = lock
                # a start refused before any work leaves the dir as this finds it
                run_start.begin(run_start.RunDirStart(run_dir, Path(os.path.abspath(filename)), old_lock))
            super().__init__(filename, **kwargs)
        except RunDirBusy as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except OSError as exc:  # read-only or foreign run dir: Hydra would say "Unable to configure handler"
            print(f"error: cannot write in run dir {run_dir} ({exc.strerror or exc}): choose a writable "
                  "hydra.run.dir", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    def close(self) -> None:
        super().close()
        if self.run_dir_lock is not None:
            self.run_dir_lock.release()
            self.run_dir_lock = None


def held_by(run_dir: str | os.PathLike) -> str:
    """Who holds ``run_dir``'s lock ("host H pid P since T"), or "" when no process does: readers such as
    ``nlvideo.compare`` flag a run that is still being written. Tests the lock for an instant (shared,
    non-blocking) and never waits."""
    lock = RunDirLock(run_dir)
    try:
        fd = os.open(lock.path, os.O_RDONLY)
    except OSError:  # no lock file: never run under a lock, or not a run dir
        return ""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return lock.holder() or "another process"
    finally:
        os.close(fd)  # also drops the shared lock, if it was granted
    return ""
