"""Why a run stops early: the scheduler's cancel and walltime-warning signals, and (where the
scheduler sends no warning) our own walltime clock."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from hpcray.state import RunState

log = logging.getLogger("hpcray.up")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)
HEAD_LOST_PREFIX = "head node"


class Stop:
    """Why the run is being stopped early (first reason wins)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.event.set()

    def head_lost(self, node: str) -> None:
        self.set(f"{HEAD_LOST_PREFIX} {node} lost")

    @property
    def is_head_lost(self) -> bool:
        """Losing the head loses the cluster: the run failed, whatever the driver says."""
        return bool(self.reason and self.reason.startswith(HEAD_LOST_PREFIX))

    @property
    def end_state(self) -> RunState | None:
        """The state a stopped run ends in: the signal's (cancelled, walltime), else failed."""
        if self.reason is None:
            return None
        if self.reason in (RunState.CANCELLED, RunState.WALLTIME):
            return RunState(self.reason)
        return RunState.FAILED


def install_handlers(stop: Stop) -> None:
    """SIGUSR2 is the walltime warning (sites with `walltime_signal`); the rest cancel."""
    def handler(signum: int, _frame: FrameType | None) -> None:
        reason = RunState.WALLTIME if signum == signal.SIGUSR2 else RunState.CANCELLED
        log.warning("received %s: stopping (%s)", signal.Signals(signum).name, reason)
        stop.set(reason)
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


def start_walltime_timer(stop: Stop, walltime: float, warning: float) -> threading.Timer:
    """PBS Pro sends no warning: keep our own clock, `warning` seconds before the end."""
    timer = threading.Timer(max(walltime - warning, 0), stop.set, args=(RunState.WALLTIME,))
    timer.daemon = True
    timer.start()
    return timer
