"""Atomic checkpoints of one run, keep-last-K rotation of that run's own files, newest-valid lookup
and RNG capture.

Layout: ``<run_dir>/checkpoints/checkpoint_<iteration:09d>.pt``. A write goes to a temporary file in
the same directory (named after its writer's host and pid), is fsync'ed and then renamed over the
final name (``os.replace`` is atomic on POSIX), so a crash or SIGKILL leaves either the previous set of
checkpoints or the new one, never a truncated ``.pt``.

Every checkpoint carries its run's ``run_id``. Rotation deletes only older files of the same run, and
never the one just written; a file that cannot be read (e.g. copied in half by hand) is reported and
moved to ``checkpoints/unreadable/``, so it is neither ranked as "newest" nor deleted; the files of a
branch a run left (resumed explicitly from an older checkpoint) move to ``checkpoints/abandoned-<time>/``.
:func:`load_latest_valid` walks the checkpoints newest first and skips (and moves aside) such files.

A checkpoint is a plain dict; the trainer decides its content (model, optimizer, scheduler, scaler,
epoch, iteration, sampler position, per-rank RNG states, config). It holds only tensors, numbers,
strings and containers of them (the RNG states too: :func:`rng_state`), so every file, the run's own
included, is read with ``weights_only=True`` (:func:`~nlvideo.models.pretrained.read_weights_file`):
reading a checkpoint someone shared cannot run code. Older files hold NumPy RNG arrays, which that
reader allows; a file that needs full unpickling is refused in one line, unless
``NLVIDEO_TRUST_CHECKPOINT`` names it.
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nlvideo.models.pretrained import UntrustedFile, read_weights_file

log = logging.getLogger(__name__)

_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")
_TMP_WRITER = re.compile(r"^\.checkpoint_\d+\.pt\.(?P<host>.+)-(?P<pid>\d+)\.[^.]+\.tmp$")
UNREADABLE_DIR = "unreadable"
ABANDONED_PREFIX = "abandoned-"


def checkpoint_path(directory: str | os.PathLike, iteration: int) -> Path:
    return Path(directory) / f"checkpoint_{iteration:09d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files in ``directory``, oldest (lowest iteration) first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict[str, Any], directory: str | os.PathLike, iteration: int,
                    keep_last: int | None = None, _while_writing: Callable[[], None] | None = None) -> Path:
    """Atomically write ``state`` as ``checkpoint_<iteration>.pt``; then keep the newest ``keep_last``
    checkpoints of ``state["run_id"]``'s run (this one always among them).

    ``_while_writing`` (fault injection, ``trainer.debug.kill_during_checkpoint``) is called after
    ``torch.save`` returned and before the file is flushed, synced and renamed."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(d, iteration)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{_writer_tag()}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            if _while_writing is not None:
                _while_writing()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(d)
    remove_stale_temp_files(d)
    if keep_last is not None and keep_last > 0:
        prune(d, state.get("run_id"), keep=final, keep_last=keep_last)
    return final


def _writer_tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def remove_stale_temp_files(directory: Path) -> None:
    """Remove the temporary files of writers that are gone: on this host, a pid that no longer runs.

    A temporary file of another host (or of an older naming without one) is removed too: only the
    holder of the run-dir lock (:mod:`nlvideo.engine.run_lock`) writes checkpoints, so its writer
    cannot be alive."""
    host = socket.gethostname()
    for tmp in directory.glob(".checkpoint_*.tmp"):
        m = _TMP_WRITER.match(tmp.name)
        if m and m["host"] == host and _pid_alive(int(m["pid"])):
            continue
        tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_id_of(path: Path) -> str | None:
    """The ``run_id`` a checkpoint records ("" for checkpoints written before run ids); None if the
    file cannot be read; :class:`UntrustedFile` if it needs full unpickling. Memory-maps the file, so
    tensors are not read."""
    try:
        state = read_weights_file(Path(path), str(path), mmap=True)
    except UntrustedFile:
        raise
    except Exception:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        return None
    if not isinstance(state, dict) or "model" not in state:
        return None
    return str(state.get("run_id") or "")


def set_aside(path: Path, reason: str) -> Path:
    """Move an unreadable checkpoint to ``unreadable/`` beside it (never deleted), reporting it."""
    dest_dir = path.parent / UNREADABLE_DIR
    dest_dir.mkdir(exist_ok=True)
    dest = dest_dir / path.name
    n = 1
    while dest.exists():
        dest = dest_dir / f"{path.name}.{n}"
        n += 1
    os.replace(path, dest)
    log.warning("checkpoint %s is unreadable (%s); moved to %s", path, reason, dest)
    return dest


def iteration_of(path: str | os.PathLike) -> int | None:
    """The iteration in a checkpoint's file name, None for another name."""
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def set_aside_newer(directory: str | os.PathLike, iteration: int, reason: str) -> list[Path]:
    """Move the checkpoints numbered above ``iteration`` to ``abandoned-<time>/`` beside them (never
    deleted), reporting them: the run goes on from ``iteration`` (a roll-back, or a position counted in
    steps of another batch), and :func:`load_latest_valid` must not later prefer one of them to the
    files the run now writes. Returns the new paths."""
    newer = [p for p in list_checkpoints(directory) if iteration_of(p) > iteration]
    if not newer:
        return []
    dest_dir = Path(directory) / time.strftime(f"{ABANDONED_PREFIX}%Y%m%d-%H%M%S")
    dest_dir.mkdir(exist_ok=True)
    moved = []
    for path in newer:
        moved.append(dest_dir / path.name)
        os.replace(path, moved[-1])
    _fsync_dir(Path(directory))
    log.warning("%d checkpoint(s) numbered above iteration %d (%s) moved to %s (%s)", len(moved), iteration,
                ", ".join(p.name for p in moved), dest_dir, reason)
    return moved


def prune(directory: Path, run_id: str | None, keep: Path, keep_last: int) -> list[Path]:
    """Delete the oldest checkpoints of run ``run_id`` beyond the newest ``keep_last``; ``keep`` (the
    file just written) is never deleted, other runs' files are never touched, unreadable ones are
    set aside. Returns the deleted paths."""
    own = []
    for path in list_checkpoints(directory):
        if path == keep:
            continue
        try:
            found = run_id_of(path)
        except UntrustedFile:  # intact, but not known to be this run's: left alone
            continue
        if found is None:
            set_aside(path, "found while pruning")
        elif found == (run_id or ""):
            own.append(path)
    deleted = own[: max(len(own) - (keep_last - 1), 0)]
    for old in deleted:
        old.unlink(missing_ok=True)
    return deleted


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, named: str | None = None) -> Any:
    """The contents of checkpoint ``path`` on the CPU, read without running code; a one-line
    :class:`ConfigError` naming the file (as ``named``, e.g. ``checkpoint=PATH``) when it is cut short,
    damaged or needs full unpickling."""
    return read_weights_file(Path(path), named or str(path), mmap=False)


def load_latest_valid(directory: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``directory`` that loads; unreadable ones are reported and moved to
    ``unreadable/`` (so they are neither resumed from nor ranked by later rotations). One that needs full
    unpickling is refused (:class:`UntrustedFile`), not set aside: it is intact, just not trusted."""
    for path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path)
        except UntrustedFile:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means "not a usable checkpoint"
            set_aside(path, f"{type(exc).__name__}: {exc}; trying the previous one")
            continue
        if not isinstance(state, dict) or "model" not in state:
            set_aside(path, "no model state; trying the previous one")
            continue
        return path, state
    return None


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and, if present, CUDA) generator states of this process, as tensors,
    numbers and strings (``weights_only=True`` reads them back): Python's is a tuple of ints, NumPy's
    Mersenne Twister key a tensor."""
    numpy = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"bit_generator": numpy["bit_generator"],
                  "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)),
                  "pos": int(numpy["state"]["pos"]), "has_gauss": int(numpy["has_gauss"]),
                  "gauss": float(numpy["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states (also the NumPy tuple that older checkpoints hold)."""
    random.setstate(tuple(state["python"]))
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        numpy = {"bit_generator": numpy["bit_generator"], "has_gauss": numpy["has_gauss"],
                 "gauss": numpy["gauss"],
                 "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]}}
    np.random.set_state(numpy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
