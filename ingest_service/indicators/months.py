"""Calendar months in the indicators' zone, and time spans as InfluxQL conditions.

Roll-ups are kept per calendar month in ``settings.tz`` (Asia/Shanghai), the zone
indicator years are counted in. Month boundaries are computed here with
:mod:`zoneinfo` and sent to InfluxDB as UTC instants, rather than relying on
InfluxQL's ``GROUP BY time(…)`` (fixed-length buckets, UTC unless ``tz()``, and
no month unit at all).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from ingest_service.influxql import time_literal


@dataclass(frozen=True, order=True, slots=True)
class Month:
    """One calendar month; its instants depend on the zone it is taken in."""

    year: int
    month: int

    @classmethod
    def of(cls, moment: datetime, tz: ZoneInfo) -> Month:
        """The month ``moment`` falls in, in ``tz``."""
        local = moment.astimezone(tz)
        return cls(local.year, local.month)

    @classmethod
    def of_ns(cls, time_ns: int, tz: ZoneInfo) -> Month:
        """The month of a nanosecond UNIX time."""
        return cls.of(datetime.fromtimestamp(time_ns // 1_000_000_000, tz), tz)

    @classmethod
    def parse(cls, key: str) -> Month:
        """The inverse of :attr:`key`."""
        year, month = key.split("-")
        return cls(int(year), int(month))

    @property
    def key(self) -> str:
        """``YYYY-MM``, the ``month`` tag value."""
        return f"{self.year:04d}-{self.month:02d}"

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    def prev(self) -> Month:
        return Month(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    def start(self, tz: ZoneInfo) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=tz)

    def end(self, tz: ZoneInfo) -> datetime:
        """The first instant of the next month (exclusive)."""
        return self.next().start(tz)


def months_between(first: Month, last: Month) -> list[Month]:
    """``first`` to ``last`` inclusive, oldest first."""
    out: list[Month] = []
    month = first
    while month <= last:
        out.append(month)
        month = month.next()
    return out


@dataclass(frozen=True, slots=True)
class Span:
    """``start <= time < end`` (``<= end`` when ``inclusive``); no ``start``: since ever."""

    start: datetime | None
    end: datetime
    inclusive: bool = False

    @property
    def empty(self) -> bool:
        return self.start is not None and (
            self.end < self.start or (self.end == self.start and not self.inclusive)
        )

    def condition(self) -> str:
        """The InfluxQL ``time`` condition of the span."""
        upper = f"time {'<=' if self.inclusive else '<'} {time_literal(self.end)}"
        if self.start is None:
            return upper
        return f"time >= {time_literal(self.start)} AND {upper}"


def gaps(outer: Span, covered: Iterable[Month], tz: ZoneInfo) -> list[Span]:
    """The parts of ``outer`` that no month of ``covered`` covers, in time order.

    ``covered`` months must lie inside ``outer``; the result is what must still be
    read from raw points.
    """
    spans: list[Span] = []
    cursor = outer.start
    for month in sorted(set(covered)):
        start, end = month.start(tz), month.end(tz)
        if cursor is None or start > cursor:
            spans.append(Span(cursor, start))
        cursor = end
    last = Span(cursor, outer.end, outer.inclusive)
    if not last.empty:
        spans.append(last)
    return spans
