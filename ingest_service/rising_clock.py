"""A nanosecond clock made strictly rising, for the late-data marks.

Two marks written by one worker in the same nanosecond would be one point in
InfluxDB (same series and time) and one count would be lost; each reading of this
clock is later than the one before, whatever the wall clock does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RisingClock:
    """``clock()`` in ns, but always greater than its previous answer (thread-safe)."""

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ns = 0

    def __call__(self) -> int:
        with self._lock:
            self._last_ns = max(self._clock(), self._last_ns + 1)
            return self._last_ns
