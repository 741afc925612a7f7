"""The wrapper's signals: SIGTERM, SIGINT and SIGHUP ask it to stop (eviction), and every signal,
SIGCHLD included, wakes its one sleep at once (a self-pipe, so the wrapper uses no CPU between
checkpoints)."""

import os
import select
import signal
from typing import Any, Dict, Optional


class StopSignals:
    def __init__(self) -> None:
        self.reason: Optional[str] = None
        self._wake_r = self._wake_w = -1
        self._old_handlers: Dict[int, Any] = {}
        self._old_wakeup = -1

    def _on_stop(self, signum: int, frame: Any) -> None:
        if self.reason is None:
            self.reason = "evicted (%s)" % signal.Signals(signum).name

    def install(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_stop)
        self._old_handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda s, f: None)

    def restore(self) -> None:
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        self._old_handlers = {}
        if self._wake_w >= 0:
            signal.set_wakeup_fd(self._old_wakeup)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds; a signal (a stop, a child's exit) wakes us at once."""
        if timeout > 0:
            try:
                select.select([self._wake_r], [], [], timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                pass
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
