"""Late-event marks: a writer that records which past months just received events.

A month's roll-up is only valid while no event has been stored for that month
since it was built (contract §10, "Indicator roll-ups"). Devices store and
forward, and the simulators back-fill whole years, so events for an already
rolled-up month do arrive. Re-counting a month's raw events on every
computation would read all of them (as slow as not rolling up at all), so
instead every ingest worker leaves a mark: after a write that stored events
dated before the current month, one ``late_event`` point per such month
(tags ``month``, ``writer``). A roll-up records how many marks its month had
when it was built; a different count now means it may be stale.

Why *after* the write: the builder reads the marks first and the raw events
second. A mark it did not see makes the roll-up invalid; a mark it did see was
written after the event was stored, so the builder's later read included the
event. If the process dies between the write and its mark, the message was not
acknowledged yet (ingest acknowledges after ``write`` returns), so the broker
delivers it again and the mark follows that time. A failed mark raises a
transient :class:`~ingest_service.outputs.influx.WriteError`: the pipeline
retries the whole (idempotent) write.

It wraps the :class:`~ingest_service.outputs.influx.Writer` the service hands
to the pipeline, so the pipeline itself needs no hook. Scanning a body for
``event`` lines is a few ``bytes.find`` calls; events are few.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from zoneinfo import ZoneInfo

from farm_contract import schema
from ingest_service.indicators.months import Month
from ingest_service.model import Point
from ingest_service.outputs.influx import WriteError, Writer
from ingest_service.outputs.lineprotocol import encode

_EVENT_LINE = schema.EVENT.encode() + b","


def event_times(body: bytes) -> Iterator[int]:
    """The timestamps (ns) of the ``event`` lines of a line-protocol body."""
    marker = b"\n" + _EVENT_LINE
    start = 0 if body.startswith(_EVENT_LINE) else _after(body.find(marker))
    while start >= 0:
        end = body.find(b"\n", start)
        line = body[start:] if end < 0 else body[start:end]
        stamp = line.rpartition(b" ")[2]
        if stamp.isdigit():
            yield int(stamp)
        start = -1 if end < 0 else _after(body.find(marker, end))


def _after(found: int) -> int:
    """The start of the line whose preceding newline is at ``found`` (-1: none)."""
    return found + 1 if found >= 0 else -1


def late_months(body: bytes, before_ns: int, tz: ZoneInfo) -> Counter[str]:
    """How many events of ``body`` each month before ``before_ns`` got (``YYYY-MM`` keys)."""
    months: Counter[str] = Counter()
    for time_ns in event_times(body):
        if time_ns < before_ns:
            months[Month.of_ns(time_ns, tz).key] += 1
    return months


class LateEventMarker:
    """A :class:`Writer` that marks the past months its writes stored events for."""

    def __init__(
        self,
        inner: Writer,
        tz: ZoneInfo,
        writer_id: str,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._inner = inner
        self._tz = tz
        self._writer_id = writer_id
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ns = 0
        self.marks = 0

    def _now_ns(self) -> int:
        """The clock, made strictly rising so two marks never land on one point."""
        with self._lock:
            self._last_ns = max(self._clock(), self._last_ns + 1)
            return self._last_ns

    def write(self, body: bytes) -> None:
        self._inner.write(body)
        now_ns = self._now_ns()
        current = Month.of_ns(now_ns, self._tz).start(self._tz)
        late = late_months(body, int(current.timestamp()) * 1_000_000_000, self._tz)
        if not late:
            return
        points = [
            Point(schema.LATE_EVENT, {"month": month, "writer": self._writer_id},
                  {"events": count}, now_ns)
            for month, count in sorted(late.items())
        ]
        try:
            self._inner.write(encode(points))
        except WriteError as exc:
            # Stored but not marked: make the pipeline write (and mark) again.
            raise WriteError(f"late-event mark failed: {exc}", transient=True) from exc
        self.marks += len(points)

    def ping(self) -> bool:
        return self._inner.ping()

    def close(self) -> None:
        self._inner.close()

