"""One function over many videos in worker processes, with a progress bar, an ETA and a watchdog.

Shared by ``nlvideo.data.prepare`` and ``nlvideo.data.check``: both spend hours on a full dataset, so
they show progress, count failures as they come and can be interrupted cleanly (Ctrl-C stops the
workers, which ignore SIGINT themselves, instead of printing one traceback per worker).

One video never stalls or ends the run. Each worker process is given one item at a time, so the item
it was working on is known when it dies (the OOM killer's SIGKILL on a 4K file: ``worker killed by
signal 9``) or exceeds the per-item time limit (a decoder stuck on one file: ``timed out after N s``,
the worker is killed); that item becomes a failed result and a new worker takes the worker's place.
(``multiprocessing.Pool.imap_unordered`` waits forever for the item of a dead worker.)

``NLVIDEO_FAULT_WORKER=kill:<text>`` or ``hang:<text>`` makes the worker given an item whose ``str``
contains ``<text>`` SIGKILL itself or sleep forever before running it: the tests' way of killing or
stalling a real worker on a chosen video.

:class:`ArgumentParser` and :func:`add_worker_options` are the command-line side both tools share:
``--workers``, ``--video-timeout``, and bad options refused in one line (exit status 2) before any
work.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import Pipe, Process
from multiprocessing.connection import Connection, wait
from typing import Generic, NoReturn, TypeVar

from tqdm import tqdm

from nlvideo.data.config import available_cpus

T = TypeVar("T")
R = TypeVar("R")
FAULT_ENV = "NLVIDEO_FAULT_WORKER"
VIDEO_TIMEOUT_S = 600.0


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors as one ``error: ...`` line on stderr (exit status 2), no usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {low}")
        return value
    return parse


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0 (``nan``, ``inf``, 0 and negatives are refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number > 0")
    return value


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--video-timeout``, as :func:`run_parallel` takes them."""
    parser.add_argument("--workers", type=int_at_least(1), default=available_cpus(),
                        help="videos at once, each in a worker process (default: the CPUs available)")
    parser.add_argument("--video-timeout", type=positive_number, default=VIDEO_TIMEOUT_S, metavar="S",
                        help="seconds one video may take; a worker past it is killed and its video "
                        f"counted as failed (default {VIDEO_TIMEOUT_S:g})")


def _inject_fault(item: object) -> None:
    action, _, text = os.environ.get(FAULT_ENV, "").partition(":")
    if text and text in str(item):
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "hang":
            while True:
                time.sleep(3600)


def _die_with_parent() -> None:
    """SIGKILL this worker when its parent dies (Linux ``PR_SET_PDEATHSIG``): a killed prepare or check
    leaves no worker decoding on."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def _serve(conn: Connection, fn: Callable[[T], R]) -> None:
    """A worker's loop: ``(index, item)`` in, ``(index, result, "")`` or ``(index, None, error)`` out,
    until ``None`` comes in (or the parent is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    while (task := _next_task(conn)) is not None:
        index, item = task
        _inject_fault(item)
        try:
            result = fn(item)
        except Exception as e:  # noqa: BLE001 - the caller turns it into one failed item
            conn.send((index, None, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"))
        else:
            conn.send((index, result, ""))


def _next_task(conn: Connection) -> tuple[int, T] | None:
    try:
        return conn.recv()
    except EOFError:
        return None


@dataclass
class _Worker(Generic[T, R]):
    """A worker process, our end of its pipe, and the item it works on (None: idle) since when."""

    process: Process
    conn: Connection
    index: int | None = None
    since: float = 0.0

    @classmethod
    def start(cls, fn: Callable[[T], R]) -> _Worker:
        ours, theirs = Pipe()
        process = Process(target=_serve, args=(theirs, fn), daemon=True)
        process.start()
        theirs.close()
        return cls(process, ours)

    def give(self, index: int, item: T) -> None:
        self.conn.send((index, item))
        self.index, self.since = index, time.monotonic()

    def stop(self, kill: bool) -> None:
        """End the process: asked to (``kill`` False, idle workers) or SIGKILLed."""
        if not kill:
            with contextlib.suppress(OSError):  # it died meanwhile
                self.conn.send(None)
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


def _death(process: Process) -> str:
    code = process.exitcode
    return f"worker killed by signal {-code}" if code is not None and code < 0 else \
        f"worker exited with status {code}"


def _results(fn: Callable[[T], R], items: Sequence[T], workers: int, timeout: float | None
             ) -> Iterator[tuple[int, R | None, str]]:
    """``(index, result, "")`` or ``(index, None, reason)`` for every item, as they finish."""
    pending = deque(range(len(items)))
    pool: list[_Worker] = []
    try:
        while pending or pool:
            for w in [w for w in pool if w.index is None]:
                if not pending:  # nothing left to give: an idle worker ends
                    w.stop(kill=False)
                    pool.remove(w)
                elif not _give_next(w, pending, items):  # it died while idle
                    pool.remove(w)
            while pending and len(pool) < workers:  # at start, and in place of dead or killed ones
                pool.append(_Worker.start(fn))
                if not _give_next(pool[-1], pending, items):
                    pool.pop()
            if pool:
                yield from _collect(pool, timeout)
    finally:
        for w in pool:
            w.stop(kill=True)  # also on Ctrl-C or an error in the caller: no worker outlives this


def _give_next(worker: _Worker, pending: deque[int], items: Sequence[T]) -> bool:
    """Give ``worker`` the next pending item; False (the item stays pending, the worker is ended) when
    the worker is dead."""
    index = pending.popleft()
    try:
        worker.give(index, items[index])
    except OSError:
        pending.appendleft(index)
        worker.stop(kill=True)
        return False
    return True


def _collect(pool: list[_Worker], timeout: float | None) -> Iterator[tuple[int, R | None, str]]:
    """Wait for a busy worker to answer, die or pass its deadline; the dead and the killed leave
    ``pool``."""
    busy = [w for w in pool if w.index is not None]
    wait_s = None
    if timeout is not None:
        wait_s = max(0.0, min(w.since for w in busy) + timeout - time.monotonic())
    ready = wait([r for w in busy for r in (w.conn, w.process.sentinel)], wait_s)
    for w in busy:
        index = w.index
        if w.conn in ready or w.process.sentinel in ready:
            try:
                if w.conn.poll():
                    _, result, error = w.conn.recv()
                    w.index = None
                    yield index, result, error
                    continue
            except (EOFError, OSError):  # died while answering
                pass
            w.process.join()
            reason = _death(w.process)
        elif timeout is not None and time.monotonic() - w.since >= timeout:
            reason = f"timed out after {timeout:g} s"
        else:
            continue
        w.stop(kill=True)
        pool.remove(w)
        yield index, None, reason


def run_parallel(fn: Callable[[T], R], items: Sequence[T], workers: int, desc: str,
                 failed: Callable[[R], bool], lost: Callable[[T, str], R],
                 timeout: float | None = None) -> Iterator[R]:
    """Yield ``fn(item)`` for every item as it finishes (in any order), in ``workers`` processes. An
    item whose worker died, passed ``timeout`` seconds or raised gives ``lost(item, reason)`` instead.
    ``fn`` must be a module-level function. The bar (stderr) shows done/total, rate, ETA and the number
    of results for which ``failed`` is true; it is redrawn at most every 30 s when stderr is not a
    terminal, so a log file gets lines, not a wall of carriage returns."""
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout={timeout} must be a finite number > 0")
    bar = tqdm(total=len(items), desc=desc, unit="video", file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    failures = 0
    try:
        for index, result, error in _results(fn, items, max(1, workers), timeout):
            result = lost(items[index], error) if error else result
            if failed(result):
                failures += 1
                bar.set_postfix(failed=failures, refresh=False)
            bar.update()
            yield result
    finally:
        bar.close()
