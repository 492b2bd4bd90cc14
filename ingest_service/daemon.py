"""A loop in a daemon thread: started once, stopped by an event, joined on stop.

The indicator publisher and the telemetry roll-ups each run one; the loop itself
(``_loop``) waits on ``_stop`` between cycles, so ``stop`` returns within a cycle.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod


class DaemonLoop(ABC):
    """Mixin: ``start``/``stop`` for a class that has ``_loop``, ``_stop`` and ``_thread``."""

    thread_name = "daemon-loop"
    _stop: threading.Event
    _thread: threading.Thread | None

    @abstractmethod
    def _loop(self) -> None:
        """One thread's whole life: cycles until ``_stop`` is set."""

    def start(self) -> None:
        """Start the background thread (once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
