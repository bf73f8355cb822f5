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
    """Records the first stop signal; SIGINT (Ctrl-C) is always handled: the first one stops at the
    next iteration boundary after a checkpoint (exit status 130), a second one interrupts at once."""

    def __init__(self, signals: Iterable[str] = ("SIGTERM", "SIGUSR1"), interactive: bool = True):
        self.received: int | None = None
        self.previous: dict[int, object] = {}
        names = list(dict.fromkeys([*signals, *(["SIGINT"] if interactive else [])]))
        for name in names:
            sig = getattr(signal, name)
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            log.warning("received %s: will checkpoint and stop at the next iteration boundary%s", self.name,
                        " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "none"

    def exit_code(self, preempt_exit_code: int) -> int:
        """130 after Ctrl-C (as shells report an interrupted command), else ``trainer.preempt_exit_code``."""
        return 130 if self.received == signal.SIGINT else preempt_exit_code

    def chain(self) -> None:
        """Run the handler that was installed before ours (e.g. submitit's requeue), if any. Not for
        SIGINT, whose default handler would raise KeyboardInterrupt after the clean stop."""
        if self.received is None or self.received == signal.SIGINT:
            return
        prev = self.previous.get(self.received)
        if callable(prev):
            prev(self.received, None)

    def restore(self) -> None:
        for sig, prev in self.previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self.previous.clear()
