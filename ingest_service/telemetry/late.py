"""Late-telemetry marks: which past days just received readings the roll-ups already passed.

The roll-up maintainer (:mod:`ingest_service.telemetry.rollups`) re-reads a trailing
window of raw readings every cycle; a reading older than that (store-and-forward,
back-fills) would never reach the roll-ups. So, as for late events
(:mod:`ingest_service.indicators.late_events`), every ingest worker leaves a mark after
a write that stored such readings: one ``late_telemetry`` point per local day (tags
``day``, ``writer``; field ``points``). A day whose mark count differs from what its
roll-up's manifest recorded is rebuilt on the next cycle. The mark is written after
the data, so a builder that saw the mark also sees the readings.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from operator import itemgetter
from zoneinfo import ZoneInfo

from farm_contract import schema
from ingest_service.model import Point
from ingest_service.outputs.influx import WriteError, Writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.rising_clock import RisingClock

LATE_TELEMETRY = "late_telemetry"
_TELEMETRY_LINE = schema.TELEMETRY.encode() + b","


def line_times(body: bytes, prefix: bytes = _TELEMETRY_LINE) -> Iterator[int]:
    """The timestamps (ns) of the lines of ``body`` that start with ``prefix``."""
    marker = b"\n" + prefix
    start = 0 if body.startswith(prefix) else _after(body.find(marker))
    while start >= 0:
        end = body.find(b"\n", start)
        line = body[start:] if end < 0 else body[start:end]
        stamp = line.rpartition(b" ")[2]
        if stamp.isdigit():
            yield int(stamp)
        start = -1 if end < 0 else _after(body.find(marker, end))


def _after(found: int) -> int:
    return found + 1 if found >= 0 else -1


_STAMP_WIDTH = 19
"""Digits of every ns timestamp from 2001-09-09 to 2286: equal widths compare as text."""
_TAIL = itemgetter(slice(-(_STAMP_WIDTH + 1), None))


def all_fresh(body: bytes, before_ns: int) -> bool:
    """True if every line of ``body`` ends in a timestamp at or after ``before_ns``.

    The writer's common path, for every batch: only C-level passes over the body (no
    Python code per line), ~10× cheaper than :func:`late_days`. Each line's last 20
    bytes must be one space and 19 digits (the timestamp, which is the line's last
    token), so their text order is their numeric order. False means "maybe late":
    the exact, per-line :func:`late_days` decides.
    """
    threshold = str(before_ns).encode()
    if len(threshold) != _STAMP_WIDTH:
        return False
    tails = list(map(_TAIL, body.split(b"\n")))
    joined = b"".join(tails)
    width = _STAMP_WIDTH + 1
    return (
        len(joined) == width * len(tails)
        and joined[::width] == b" " * len(tails)
        and joined.replace(b" ", b"").isdigit()
        and len(joined) - joined.count(b" ") == _STAMP_WIDTH * len(tails)
        and min(tails) >= b" " + threshold
    )


def day_of(time_ns: int, tz: ZoneInfo) -> date:
    """The local calendar day of an instant."""
    return datetime.fromtimestamp(time_ns / 1e9, UTC).astimezone(tz).date()


def late_days(body: bytes, before_ns: int, tz: ZoneInfo) -> Counter[str]:
    """How many telemetry lines of ``body`` dated before ``before_ns`` each local day got."""
    days: Counter[str] = Counter()
    for time_ns in line_times(body):
        if time_ns < before_ns:
            days[day_of(time_ns, tz).isoformat()] += 1
    return days


class LateTelemetryMarker:
    """A :class:`Writer` that marks the days its writes stored late readings for.

    ``late_after_s`` must be shorter than the maintainer's trailing window, so every
    reading is either re-read by the window or marked.
    """

    def __init__(
        self, inner: Writer, tz: ZoneInfo, writer_id: str, late_after_s: float,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._inner = inner
        self._tz = tz
        self._writer_id = writer_id
        self._late_after_ns = int(late_after_s * 1e9)
        self._now_ns = RisingClock(clock)  # two marks never land on one point
        self.marks = 0

    def write(self, body: bytes) -> None:
        self._inner.write(body)
        now_ns = self._now_ns()
        before_ns = now_ns - self._late_after_ns
        if all_fresh(body, before_ns):
            return
        late = late_days(body, before_ns, self._tz)
        if not late:
            return
        points = [Point(LATE_TELEMETRY, {"day": day, "writer": self._writer_id},
                        {"points": count}, now_ns) for day, count in sorted(late.items())]
        try:
            self._inner.write(encode(points))
        except WriteError as exc:
            raise WriteError(f"late-telemetry mark failed: {exc}", transient=True) from exc
        self.marks += len(points)

    def ping(self) -> bool:
        return self._inner.ping()

    def close(self) -> None:
        self._inner.close()
