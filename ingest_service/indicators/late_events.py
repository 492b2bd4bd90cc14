"""Late-event marks: which past months just received events, written after the events.

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

The pipeline tells the marker the times of the event points it just stored
(:data:`~ingest_service.pipeline.batcher.StoredEvents`): enrich made those points,
so nothing is read back from the encoded body. The marks are a second write, on
purpose: one body's points are not made visible all at once (a past month's
event and this month's mark land in different shards), and a mark seen before its
event would let a roll-up miss the event for good.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from zoneinfo import ZoneInfo

from farm_contract import schema
from ingest_service.indicators.months import Month
from ingest_service.model import Point
from ingest_service.outputs.influx import WriteError, Writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.rising_clock import RisingClock


def late_months(event_times_ns: Iterable[int], before_ns: int, tz: ZoneInfo) -> Counter[str]:
    """How many of the events fall in each month before ``before_ns`` (``YYYY-MM`` keys)."""
    months: Counter[str] = Counter()
    for time_ns in event_times_ns:
        if time_ns < before_ns:
            months[Month.of_ns(time_ns, tz).key] += 1
    return months


class LateEventMarker:
    """Marks, through ``writer``, the past months a write just stored events for."""

    def __init__(
        self,
        writer: Writer,
        tz: ZoneInfo,
        writer_id: str,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._writer = writer
        self._tz = tz
        self._writer_id = writer_id
        self._now_ns = RisingClock(clock)  # two marks never land on one point
        self.marks = 0

    def stored(self, event_times_ns: list[int]) -> None:
        """Mark the past months of events just stored (a :data:`StoredEvents`)."""
        now_ns = self._now_ns()
        current = Month.of_ns(now_ns, self._tz).start(self._tz)
        late = late_months(event_times_ns, int(current.timestamp()) * 1_000_000_000, self._tz)
        if not late:
            return
        points = [
            Point(schema.LATE_EVENT, dict(zip(schema.LATE_EVENT_TAGS, (month, self._writer_id),
                                              strict=True)), {"events": count}, now_ns)
            for month, count in sorted(late.items())
        ]
        try:
            self._writer.write(encode(points))
        except WriteError as exc:
            # Stored but not marked: make the pipeline write (and mark) again.
            raise WriteError(f"late-event mark failed: {exc}", transient=True) from exc
        self.marks += len(points)
