"""Graceful stop on SIGTERM / SIGUSR1 (SLURM preemption, ``scancel --signal``, time limits).

The handler only records the signal (:attr:`PreemptionHandler.received`); each training step sends
that flag through its one all-reduce, so every rank agrees at the same iteration boundary even when
the signal reached only some of them; the loop then saves a checkpoint and returns. The process exits
with ``trainer.preempt_exit_code`` (0 by default) and a requeued job auto-resumes from it.

If a Python handler was already installed for the signal (submitit installs one for its timeout
signal, which requeues the job), it is called after our checkpoint is written, so submitit's requeue
still happens.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterable

log = logging.getLogger(__name__)


class PreemptionHandler:
    def __init__(self, signals: Iterable[str] = ("SIGTERM", "SIGUSR1")):
        self.received: int | None = None
        self.previous: dict[int, object] = {}
        for name in signals:
            sig = getattr(signal, name)
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            log.warning("received %s: will checkpoint and stop at the next iteration boundary",
                        signal.Signals(signum).name)

    def chain(self) -> None:
        """Run the handler that was installed before ours (e.g. submitit's requeue), if any."""
        if self.received is None:
            return
        prev = self.previous.get(self.received)
        if callable(prev):
            prev(self.received, None)

    def restore(self) -> None:
        for sig, prev in self.previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self.previous.clear()
