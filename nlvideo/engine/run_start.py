"""A start refused before any work leaves the run directory as it found it.

Hydra makes the run dir, opens the job's log file and writes ``.hydra/*.yaml`` before the job runs, so
a job that then refuses its config (a missing ``data.root``, a bad value, a checkpoint that does not
fit: one ``error:`` line, exit status 2) used to leave a directory holding only those. Now:

* a run dir the start created is removed, with the parents Hydra made for it (``outputs/train/<model>``)
  that did not exist before the command ran;
* an existing run dir gets its ``.hydra/`` files and its log back as they were (a refused resume must
  not replace the config of the run it refused to continue);
* a run dir that cannot be written (read-only) is one line, exit status 2, before Hydra starts, and
  so is one whose files cannot be opened.

Nothing is undone once the job has written anything else into the run dir (checkpoints, TensorBoard
events, metrics): the refusal then comes after work, and its files stay.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from nlvideo.engine.run_lock import LOCK_NAME

_dirs_before: set[Path] = set()  # directories that existed before Hydra ran, below the _bounds
_bounds: set[Path] = set()  # directories below which Hydra may make the run dir's parents
_start: RunDirStart | None = None  # the run dir of this process's current job, as its start found it


def note_dirs_before_hydra(argv: list[str]) -> None:
    """Remember which directories Hydra may create exist now: the ancestors of an explicit
    ``hydra.run.dir``/``hydra.sweep.dir``, and ``outputs``/``multirun`` two levels deep (the default
    ``outputs/<job>/<model>/<time>``). Only a directory below one of these bounds that is not
    remembered here is one this command made."""
    _dirs_before.clear()
    _bounds.clear()
    for arg in argv:
        if arg.startswith(("hydra.run.dir=", "hydra.sweep.dir=")):
            path = Path(arg.split("=", 1)[1]).absolute()
            existing = [p for p in path.parents if p.is_dir()]
            _dirs_before.update(existing)
            _bounds.add(existing[0])
    for top in (Path("outputs").absolute(), Path("multirun").absolute()):
        _bounds.add(top.parent)
        level = [top] if top.is_dir() else []
        _dirs_before.update(level)
        for _ in range(2):
            level = [p for d in level for p in _subdirs(d)]
            _dirs_before.update(level)


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:  # unreadable: its subdirectories stay unknown
        return []


def _made_by_this_command(path: Path) -> bool:
    return path not in _dirs_before and any(bound in path.parents for bound in _bounds)


def unwritable_run_dir(argv: list[str]) -> str | None:
    """Why the run dir named on the command line (or the default ``outputs``) cannot be written, or
    None: Hydra's own error is a traceback (``OSError`` making the dir, or ``Unable to configure handler
    'file'`` on an existing read-only one)."""
    named = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    target = Path(named[-1] if named else "outputs").absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    why = "read-only file system" if _read_only_fs(existing) else "no write permission"
    made = f"run dir {target}" if named else f"the run dir under {target}"
    what = f"run dir {target}" if existing == target else f"{existing} (to make {made})"
    return f"cannot write in {what}: {why}; choose a writable hydra.run.dir"


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class RunDirStart:
    """What the start of a job found in its run dir, before Hydra wrote ``.hydra/`` there."""

    def __init__(self, run_dir: Path, log_file: Path, old_lock: bytes | None):
        """``old_lock``: the lock file's contents before this process took the lock (None: no file)."""
        self.run_dir, self.log_file, self.old_lock = run_dir, log_file, old_lock
        self.fresh = old_lock is None and all(p.name == LOCK_NAME for p in run_dir.iterdir())
        hydra_dir = run_dir / ".hydra"
        self.hydra_files = {p: p.read_bytes() for p in hydra_dir.glob("*") if p.is_file()}
        self.had_hydra_dir = hydra_dir.is_dir()
        self.log_size = log_file.stat().st_size if log_file.is_file() else None
        self.others = self._others()

    def _others(self) -> dict[str, int]:
        """Every other entry of the run dir with its modification time: what the job's work changes."""
        ours = {".hydra", LOCK_NAME, self.log_file.name}
        return {p.name: p.stat().st_mtime_ns for p in self.run_dir.iterdir() if p.name not in ours}

    def undo(self) -> None:
        """Leave the run dir as the start found it, unless the job wrote anything else there."""
        if not self.run_dir.is_dir() or self._others() != self.others:
            return
        if self.fresh:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            for parent in self.run_dir.parents:
                if not _made_by_this_command(parent) or any(parent.iterdir()):
                    break
                parent.rmdir()
            return
        hydra_dir = self.run_dir / ".hydra"
        for path in hydra_dir.glob("*"):
            if path not in self.hydra_files:
                path.unlink()
        for path, data in self.hydra_files.items():
            path.write_bytes(data)
        if not self.had_hydra_dir and hydra_dir.is_dir():
            hydra_dir.rmdir()
        if self.log_size is None:
            self.log_file.unlink(missing_ok=True)
        else:
            os.truncate(self.log_file, self.log_size)
        if self.old_lock is None:
            (self.run_dir / LOCK_NAME).unlink(missing_ok=True)
        else:
            (self.run_dir / LOCK_NAME).write_bytes(self.old_lock)


def begin(start: RunDirStart) -> None:
    """Called by the job's log file (:class:`~nlvideo.engine.run_lock.RunLogFile`) once it holds the
    run dir, with what it found there (before Hydra wrote there)."""
    global _start
    _start = start


def undo_refused_start() -> None:
    """The job refused to start (exit status 2): close the job's log file (which drops the run dir's
    lock) and leave the run dir as the start found it."""
    global _start
    start, _start = _start, None
    if start is None:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == start.log_file:
            root.removeHandler(handler)
            handler.close()
    try:
        start.undo()
    except OSError as exc:  # the refusal is the message; a leftover file is not worth a second error
        print(f"warning: could not clean up run dir {start.run_dir}: {exc}", file=sys.stderr)
