"""RSS and CPU of a process, read from /proc (no psutil dependency).

``VmHWM`` is the kernel's own peak-RSS mark, so a short spike between two
samples is not missed; the periodic samples give the curve (is RSS flat while a
backlog drains?). CPU time is ``utime + stime`` from ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process has used so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            text = handle.read()
    except OSError:
        return 0.0
    # The command name may hold spaces; the fields we need follow its closing paren.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def memory_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) in KiB, (0, 0) if the process is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


@dataclass
class Sampler:
    """Samples one process's RSS every ``interval_s`` on a thread, between start and stop."""

    pid: int
    interval_s: float = 0.25
    samples: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since start, RSS MiB)."""
    peak_rss_mib: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    _cpu0: float = 0.0
    _t0: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._t0 = time.monotonic()
        self._cpu0 = cpu_seconds(self.pid)
        self._sample()
        self._thread = threading.Thread(target=self._loop, name=f"sample-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        rss, hwm = memory_kib(self.pid)
        if rss:
            self.samples.append((round(time.monotonic() - self._t0, 3), round(rss / 1024, 1)))
        self.peak_rss_mib = max(self.peak_rss_mib, hwm / 1024, rss / 1024)
        cpu = cpu_seconds(self.pid)
        if cpu:
            self.cpu_s = cpu - self._cpu0

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> Sampler:
        """Take a last sample and stop; call before the process exits to keep its figures."""
        self._sample()
        self.wall_s = time.monotonic() - self._t0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self

    @property
    def cpu_percent(self) -> float:
        """CPU use over the sampled period, 100 = one core busy."""
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "start_rss_mib": self.samples[0][1] if self.samples else 0.0,
            "peak_rss_mib": round(self.peak_rss_mib, 1),
            "cpu_s": round(self.cpu_s, 2),
            "cpu_percent": round(self.cpu_percent, 1),
        }
