"""Report every unreadable video once per run, whichever rank or loader worker met it.

The dataset does not log failures itself inside train.py/eval.py (``report_failures = False``): worker
processes and ranks would each repeat them. Instead every batch carries ``failures`` (``(path,
reason)`` per failed read) to the main process of its rank, and :class:`BadVideoReport` sends the paths
that no rank has reported yet to rank 0, which logs one warning per path::

    unreadable video /data/k400/train/abc.mp4 (zero-byte file): replaced by another training video

:meth:`BadVideoReport.update` is collective in a process group (call it on every rank with the same
``any_new`` decision, see :meth:`new_count`); per-epoch totals are reduced by the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from nlvideo.engine import distributed as du

log = logging.getLogger("nlvideo.data")


class BadVideoReport:
    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}  # every path reported so far (same on every rank)

    def new(self, failures: Iterable[tuple[str, str]]) -> dict[str, str]:
        """The failures of this rank whose paths have not been reported yet."""
        out: dict[str, str] = {}
        for path, reason in failures:
            if path not in self.reasons:
                out.setdefault(path, reason)
        return out

    def update(self, new: dict[str, str], what: str) -> list[str]:
        """Collective: gather every rank's ``new`` failures; rank 0 logs each path once. Returns the
        newly reported paths."""
        gathered = du.all_gather_object(new)
        reported = []
        for part in gathered:
            for path, reason in part.items():
                if path in self.reasons:
                    continue
                self.reasons[path] = reason
                reported.append(path)
                if du.is_main_process():
                    shown = path if path.isprintable() else repr(path)  # e.g. a NUL byte in a list
                    log.warning("unreadable video %s (%s): %s", shown, reason, what)
        return reported

    @property
    def count(self) -> int:
        return len(self.reasons)
