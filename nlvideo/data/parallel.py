"""One function over many videos in worker processes, with a progress bar and an ETA.

Shared by ``nlvideo.data.prepare`` and ``nlvideo.data.check``: both spend hours on a full dataset, so
they show progress, count failures as they come and can be interrupted cleanly (Ctrl-C stops the
workers, which ignore SIGINT themselves, instead of printing one traceback per worker).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import Pool
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_parallel(fn: Callable[[T], R], items: Sequence[T], workers: int, desc: str,
                 failed: Callable[[R], bool]) -> Iterator[R]:
    """Yield ``fn(item)`` for every item as it finishes (in any order), ``workers`` at a time (in this
    process when ``workers <= 1``). ``fn`` must be a module-level function (it is sent to the workers).
    The bar (stderr) shows done/total, rate, ETA and the number of results for which ``failed`` is
    true; it is redrawn at most every 30 s when stderr is not a terminal, so a log file gets lines, not
    a wall of carriage returns."""
    bar = tqdm(total=len(items), desc=desc, unit="video", file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    failures, pool = 0, None
    try:
        if workers <= 1:
            results: Iterator[R] = map(fn, items)
        else:
            pool = Pool(workers, initializer=_ignore_sigint)
            results = pool.imap_unordered(fn, items)
        for result in results:
            if failed(result):
                failures += 1
                bar.set_postfix(failed=failures, refresh=False)
            bar.update()
            yield result
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()  # also on Ctrl-C or an error in the caller: no worker outlives this
            pool.join()
