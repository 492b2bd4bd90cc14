"""Publishes the indicators to InfluxDB as ``indicator`` points for Grafana (contract §9).

Every year with data is published, keyed by a ``period`` tag (the year in
``FARM_TIMEZONE``), so a panel picks a year with ``"period" = '$year'`` whatever the
viewer's time zone. The current year is written every cycle (its figure moves with
"as of"); a past year is recomputed when it may have changed — its months or the next
year's (film recovered then may be its film) received late events (``late_event``
marks), the registry was replaced, the year just ended,
or every ``refresh_every`` cycles in case of writes that bypass ingest — and written
only when its figures differ from what this process wrote last. At most
``past_per_cycle`` past years are computed per cycle, so a cycle stays bounded
however many years there are.

When the engine can list a figure's members (``engine.members(year)``, issue 13),
each published year also gets ``indicator_member`` points, one per indicator and
site, for Grafana's drill-down; a site that stopped being a member gets a point with
``member=false``, so "the latest point per site" never shows a former member.

Every cycle also writes the facilities' live state (``facility_live``, contract §10):
an operational figure for the dashboards, not the plan's indicator
(:mod:`ingest_service.indicators.live`).
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from farm_contract import schema
from farm_contract.indicators import IndicatorValue, Member
from farm_contract.registry import Registry
from ingest_service.daemon import DaemonLoop
from ingest_service.indicators.closing import ClosedYears, frozen_members, frozen_rows
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.indicators.live import live_points
from ingest_service.indicators.rollups import RollupMaintainer
from ingest_service.influxql import QueryError, Series, quote_ident, quote_literal
from ingest_service.model import FieldValue, Point
from ingest_service.outputs.influx import WriteError, Writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.settings import Settings

log = logging.getLogger(__name__)

PERIOD = "period"
"""Tag of ``indicator`` and ``indicator_member`` points: the indicator year, ``YYYY``.
Not ``year``: that is a field of ``indicator`` points, and a tag and a field of one
name make InfluxQL read the field (contract §9)."""
INDICATOR_MEMBER = "indicator_member"
"""One site's part in a published figure (contract §9)."""


def indicator_points(values: Iterable[IndicatorValue], time_ns: int) -> list[Point]:
    """Indicator rows as ``indicator`` points (contract §9).

    n/a stays empty: a null value leaves out ``value`` and ``met``, never writes 0.
    """
    points = []
    for item in values:
        fields: dict[str, FieldValue] = {}
        if item.value is not None:
            fields["value"] = float(item.value)
            if item.met is not None:
                fields["met"] = bool(item.met)
        fields["numerator"] = float(item.numerator)
        fields["denominator"] = float(item.denominator)
        fields["target"] = float(item.target)
        fields["year"] = int(item.year)
        if item.coverage is not None:
            fields["coverage"] = float(item.coverage)
        if item.flags:
            fields["flags"] = ",".join(item.flags)
        tags = {
            "indicator": str(item.indicator),
            "scope": item.scope,
            "county": item.county if item.county is not None else schema.CITY_COUNTY_TAG,
            PERIOD: str(item.year),
        }
        points.append(Point(schema.INDICATOR, tags, fields, time_ns))
    return points


MemberKey = tuple[str, str, str]
"""``indicator``, ``county``, ``site_id`` of an ``indicator_member`` series (one year)."""


def member_points(
    year: int, members: Sequence[Member], gone: Iterable[MemberKey], time_ns: int,
) -> list[Point]:
    """``indicator_member`` points of one year: each member, then each former one."""
    points = []
    for item in members:
        fields: dict[str, FieldValue] = {
            "member": True,
            "name": item.name,
            "numerator": float(item.numerator),
            "denominator": float(item.denominator),
        }
        if item.status is not None:
            fields["status"] = item.status
        tags = {"indicator": str(item.indicator), "county": item.county,
                PERIOD: str(year), "site_id": item.site_id}
        points.append(Point(INDICATOR_MEMBER, tags, fields, time_ns))
    for indicator, county, site_id in sorted(gone):
        tags = {"indicator": indicator, "county": county, PERIOD: str(year), "site_id": site_id}
        fields = {"member": False, "numerator": 0.0, "denominator": 0.0}
        points.append(Point(INDICATOR_MEMBER, tags, fields, time_ns))
    return points


class MembersOf(Protocol):
    """``IndicatorEngine.members`` (issue 13), when the engine has it."""

    def __call__(self, year: int, /, *args: Any, **kwargs: Any) -> list[Member]: ...


def _members_method(engine: object) -> MembersOf | None:
    method = getattr(engine, "members", None)
    return method if callable(method) else None


def _call_members(method: MembersOf, year: int, moment: datetime) -> list[Member]:
    """``members(year, now=moment)`` when it takes ``now``, else ``members(year)``."""
    try:
        takes_now = "now" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        takes_now = False
    return list(method(year, now=moment) if takes_now else method(year))


def _aware(now: datetime | None) -> datetime:
    moment = now or datetime.now(UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _figures(rows: Iterable[IndicatorValue]) -> tuple[tuple[object, ...], ...]:
    """What Grafana shows of a year's rows: a past year is rewritten only when it changes."""
    return tuple(sorted(
        (str(r.indicator), r.county or "", r.value, r.numerator, r.denominator, r.met,
         r.coverage, tuple(r.flags))
        for r in rows
    ))


def _member_figures(members: Iterable[Member]) -> tuple[tuple[object, ...], ...]:
    return tuple(sorted(
        (str(m.indicator), m.county, m.site_id, m.name, m.numerator, m.denominator, m.status)
        for m in members
    ))


@dataclass
class YearSchedule:
    """Which years a cycle computes: the current one always, a past one when it may have changed.

    ``first_year`` and ``late_marks`` are read from InfluxDB by the publisher; this
    class only decides, so the rules are testable without a database.
    """

    refresh_every: int = 60
    """Every this many cycles every past year is recomputed (and the first year re-read)."""
    past_per_cycle: int = 2
    """At most this many past years are computed in one cycle (newest first)."""
    cycles: int = 0
    first_year: int | None = None
    dirty: set[int] = field(default_factory=set)
    """Past years to recompute: late events, a registry change, the year just ended."""
    done: set[int] = field(default_factory=set)
    """Past years computed (and written if they changed) since this process started."""
    _marks: dict[str, int] | None = None
    _registry: object | None = None
    _current: int | None = None

    def needs_first_year(self) -> bool:
        """Whether this cycle re-reads the first year with data."""
        return self.first_year is None or self.cycles % self.refresh_every == 0

    def plan(
        self, current: int, first_year: int | None, marks: dict[str, int],
        registry: object | None = None,
    ) -> list[int]:
        """The years to compute this cycle: ``current``, then due past years, newest first.

        ``marks`` counts ``late_event`` marks per month (``YYYY-MM``); a month whose count
        changed since the last cycle makes its year due again, and the year before it: a
        film recovery of year Y+1 may be Y's film (a ``season`` of Y, or none up to
        ``FARM_FILM_RECOVERY_UNTIL``, contract §8).
        """
        if first_year is not None:
            self.first_year = first_year
        first = min(self.first_year if self.first_year is not None else current, current)
        if self.cycles > 0 and self.cycles % self.refresh_every == 0:
            self.dirty.update(range(first, current))
        if self._marks is not None:
            for month in set(marks) | set(self._marks):
                if marks.get(month, 0) != self._marks.get(month, 0) and month[:4].isdigit():
                    self.dirty.update((int(month[:4]), int(month[:4]) - 1))
        self._marks = dict(marks)
        if registry is not None:
            if self._registry is not None and registry is not self._registry:
                self.dirty.update(range(first, current))
            self._registry = registry
        if self._current is not None and self._current != current:
            self.dirty.add(self._current)  # the year that just ended: as of its end now
        self._current = current
        self.cycles += 1
        due = [y for y in range(current - 1, first - 1, -1)
               if y in self.dirty or y not in self.done]
        return [current, *due[: self.past_per_cycle]]

    def computed(self, year: int) -> None:
        """``year`` was computed and published (or found unchanged)."""
        self.done.add(year)
        self.dirty.discard(year)


class Query(Protocol):
    def __call__(self, q: str) -> list[Series]: ...


def first_year_with_data(query: Query, settings: Settings) -> int | None:
    """The year (in ``settings.tz``) of the earliest event or telemetry point, or None.

    ``first()`` per measurement reads the first block of each series, not every point.
    """
    earliest: datetime | None = None
    for measurement in (schema.EVENT, schema.TELEMETRY):
        q = f"SELECT first({quote_ident('seq')}) FROM {quote_ident(measurement)}"
        for series in query(q):
            for row in series.rows():
                if isinstance(row.get("time"), int | float):  # epoch ms (InfluxQL's client)
                    moment = datetime.fromtimestamp(row["time"] / 1000, UTC)
                    earliest = moment if earliest is None else min(earliest, moment)
    return None if earliest is None else earliest.astimezone(settings.tz).year


def late_marks(query: Query) -> dict[str, int]:
    """How many ``late_event`` marks each month has (the roll-ups read the same counts)."""
    q = (f"SELECT count({quote_ident('events')}) FROM {quote_ident(schema.LATE_EVENT)} "
         f"GROUP BY {quote_ident('month')}")
    marks: dict[str, int] = {}
    for series in query(q):
        for row in series.rows():
            marks[series.tags.get("month", "")] = int(row.get("count") or 0)
    return marks


def stored_members(query: Query, year: int) -> set[MemberKey]:
    """The member series of ``year`` whose latest point says ``member=true``."""
    q = (f"SELECT last({quote_ident('member')}) FROM {quote_ident(INDICATOR_MEMBER)} "
         f"WHERE {quote_ident(PERIOD)} = {quote_literal(str(year))} "
         f"GROUP BY {quote_ident('indicator')}, {quote_ident('county')}, {quote_ident('site_id')}")
    return {
        (s.tags.get("indicator", ""), s.tags.get("county", ""), s.tags.get("site_id", ""))
        for s in query(q) if any(row.get("last") is True for row in s.rows())
    }


@dataclass
class IndicatorPublisher(DaemonLoop):
    """Writes the indicators to InfluxDB every ``indicator_interval_s`` for Grafana.

    Runs in a daemon thread; an error is logged and retried after ``retry_s``
    (or the interval, if shorter), so a down InfluxDB never stops it. With a
    :class:`~ingest_service.indicators.rollups.RollupMaintainer`, each cycle then brings the
    roll-ups up to date for the next one (in this thread, never the pipeline's); a
    roll-up failure is logged, and the indicators are computed from raw events
    wherever no valid roll-up exists.

    ``years`` fixes the years to write every cycle (tools, tests); by default every
    year with data is published, as :class:`YearSchedule` decides. ``registry`` (the
    service's current registry) lets a registry change refresh the past years.
    """

    thread_name = "indicator-publisher"

    engine: IndicatorEngine
    writer: Writer
    settings: Settings
    years: Callable[[], list[int]] | None = None
    rollups: RollupMaintainer | None = None
    registry: Callable[[], Registry] | None = None
    schedule: YearSchedule = field(default_factory=YearSchedule)
    retry_s: float = 5.0
    published: int = 0
    live_published: int = 0
    """``facility_live`` points written (not counted in :attr:`published`)."""
    errors: int = 0
    _written: dict[int, tuple[tuple[object, ...], ...]] = field(default_factory=dict, repr=False)
    """Per past year, the figures written last: unchanged ones are not written again."""
    _members: dict[int, tuple[tuple[object, ...], ...]] = field(default_factory=dict, repr=False)
    _member_keys: dict[int, set[MemberKey]] = field(default_factory=dict, repr=False)
    _failing: str | None = field(default=None, repr=False)
    """The InfluxDB problem logged last: logged once in one line, not every retry."""
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def due_years(self, moment: datetime) -> list[int]:
        """The years this cycle computes (the current one first)."""
        if self.years is not None:
            return self.years()
        current = moment.astimezone(self.settings.tz).year
        first = (first_year_with_data(self.engine.query, self.settings)
                 if self.schedule.needs_first_year() else None)
        registry = self.registry() if self.registry is not None else None
        return self.schedule.plan(current, first, late_marks(self.engine.query), registry)

    def publish_live(self, now: datetime | None = None) -> int:
        """Write the large-scale farms' live state as of ``now``; return how many points."""
        moment = _aware(now)
        state = self.engine.facility_live_state(moment)
        points = live_points(state, int(moment.timestamp() * 1_000_000) * 1000, self.settings.tz)
        if points:
            self.writer.write(encode(points))
        self.live_published += len(points)
        return len(points)

    def publish_once(self, now: datetime | None = None) -> int:
        """Compute the due years' indicators and write them, then the live state
        (:meth:`publish_live`); return how many indicator and member points."""
        moment = _aware(now)
        current = moment.astimezone(self.settings.tz).year
        time_ns = int(moment.timestamp() * 1_000_000) * 1000
        members_of = _members_method(self.engine)
        written = 0
        closed = ClosedYears(self.engine.query)
        for year in self.due_years(moment):
            signed = closed.frozen_document(year)  # a closed year publishes what was signed
            rows = (frozen_rows(signed) if signed is not None
                    else self.engine.compute(year, now=moment))
            points: list[Point] = []
            figures = _figures(rows)
            if year == current or self.years is not None or self._written.get(year) != figures:
                points += indicator_points(rows, time_ns)
            member_figures: tuple[tuple[object, ...], ...] | None = None
            members: list[Member] = []
            if members_of is not None:
                members = (frozen_members(signed) if signed is not None
                           else _call_members(members_of, year, moment))
                member_figures = _member_figures(members)
                if self._members.get(year) != member_figures:
                    points += self._member_points(year, members, time_ns)
            if points:
                self.writer.write(encode(points))
            written += len(points)
            if year != current:
                self._written[year] = figures
                self.schedule.computed(year)
            if member_figures is not None:
                self._members[year] = member_figures
                self._member_keys[year] = {(str(m.indicator), m.county, m.site_id)
                                           for m in members}
        self.published += written
        self.publish_live(moment)
        return written

    def _member_points(self, year: int, members: list[Member], time_ns: int) -> list[Point]:
        """The year's member points, with ``member=false`` for sites no longer among them."""
        before = self._member_keys.get(year)
        if before is None:  # first time since start: what an earlier run left
            before = stored_members(self.engine.query, year)
        now = {(str(m.indicator), m.county, m.site_id) for m in members}
        return member_points(year, members, before - now, time_ns)

    def maintain_rollups(self) -> None:
        """One roll-up maintenance cycle; its failure only means more raw reads."""
        if self.rollups is None:
            return
        try:
            self.rollups.maintain_once()
        except Exception:
            self.errors += 1
            log.exception("maintaining the indicator roll-ups failed; retrying next cycle")

    def _loop(self) -> None:
        interval = self.settings.indicator_interval_s
        while not self._stop.is_set():
            try:
                self.publish_once()
            except (QueryError, WriteError) as exc:  # InfluxDB's trouble: one line, once
                self.errors += 1
                problem = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                if problem != self._failing:
                    log.warning("publishing indicators: %s; retrying every %gs",
                                problem, min(self.retry_s, interval))
                    self._failing = problem
                self._stop.wait(min(self.retry_s, interval))
                continue
            except Exception:
                self.errors += 1
                log.exception("publishing indicators failed; retrying")
                self._stop.wait(min(self.retry_s, interval))
                continue
            if self._failing is not None:
                log.warning("publishing indicators again (InfluxDB answers)")
                self._failing = None
            self.maintain_rollups()  # after publishing, so a first build never delays it
            self._stop.wait(interval)
