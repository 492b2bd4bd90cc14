"""The plan's indicators (contract §8), computed by InfluxDB aggregates.

Every number comes from an InfluxQL aggregate (``sum``, ``count``, ``last`` with
``GROUP BY`` tags), so the cost of a computation grows with the number of sites,
not with the number of stored points.

Rules, decided here and documented in the API:

- A year is a calendar year in ``settings.tz`` (Asia/Shanghai by default).
- "As of" is the end of that year, or now for the current year. Events count
  when ``start <= time < as_of``. For a year that has not begun, nothing has
  happened yet: every numerator is 0 (the manure denominators still come from
  the registry).
- Film and straw masses are attributed by the ``county`` tag written at ingest;
  only counties of the registry are reported. The manure indicators count
  registry sites (large-scale manure sites), attributed to their registry county.
- The city row adds the counties' numerators and denominators (it never
  averages rates), so it always agrees with the county rows.
- ``compute(year, county=NAME)`` returns only that county's four rows (no city row).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from farm_contract import schema
from farm_contract.indicators import IndicatorId, IndicatorValue, Scope
from farm_contract.payloads import EventType
from farm_contract.registry import Registry
from farm_contract.settings import Settings
from ingest_service.model import FieldValue, Point
from ingest_service.outputs.influx import QueryError, Series, Writer, quote_ident, quote_literal
from ingest_service.outputs.lineprotocol import encode

log = logging.getLogger(__name__)


class Querier(Protocol):
    """What the engine needs from :class:`~ingest_service.outputs.influx.InfluxQL`."""

    def query(self, q: str) -> list[Series]: ...


class UnknownCountyError(LookupError):
    """A county that has no site in the registry."""

    def __init__(self, county: str, known: list[str]) -> None:
        super().__init__(f"unknown county {county!r}; known counties: {', '.join(known) or 'none'}")
        self.county = county
        self.known = known


@dataclass(frozen=True, slots=True)
class Window:
    """The events that count for a year: ``start <= time < as_of``."""

    start: datetime
    as_of: datetime

    @property
    def empty(self) -> bool:
        """True for a year that has not begun yet."""
        return self.as_of <= self.start


def year_window(year: int, tz: ZoneInfo, now: datetime) -> Window:
    """Calendar ``year`` in ``tz``, cut at ``now`` for the current (or a future) year."""
    start = datetime(year, 1, 1, tzinfo=tz)
    end = datetime(year + 1, 1, 1, tzinfo=tz)
    return Window(start=start, as_of=min(end, now))


def time_literal(moment: datetime) -> str:
    """An InfluxQL RFC 3339 time literal in UTC."""
    return quote_literal(moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def _types_clause(types: Iterable[EventType]) -> str:
    return "(" + " OR ".join(f"{quote_ident('type')} = {quote_literal(t)}" for t in types) + ")"


def _events_in(window: Window) -> str:
    return f"time >= {time_literal(window.start)} AND time < {time_literal(window.as_of)}"


def _number(value: object) -> float:
    """An aggregate's value; InfluxDB answers null for a sum over nothing."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


@dataclass(slots=True)
class Totals:
    """Numerators and denominators of one scope, added up before any division."""

    film_applied_t: float = 0.0
    film_recovered_t: float = 0.0
    straw_produced_t: float = 0.0
    straw_utilized_t: float = 0.0
    manure_sites: int = 0
    ledger_sites: int = 0
    working_sites: int = 0

    def add(self, other: Totals) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def values(self, year: int, county: str | None) -> list[IndicatorValue]:
        """The four indicators, in contract order; ``county`` None means the city."""
        scope: Scope = "city" if county is None else "county"
        pairs = {
            IndicatorId.MANURE_FACILITY_RATE: (self.working_sites, self.manure_sites),
            IndicatorId.MANURE_LEDGER_COVERAGE: (self.ledger_sites, self.manure_sites),
            IndicatorId.FILM_RECOVERY_RATE: (self.film_recovered_t, self.film_applied_t),
            IndicatorId.STRAW_UTILIZATION_RATE: (self.straw_utilized_t, self.straw_produced_t),
        }
        return [
            IndicatorValue.of(indicator, scope, county, year, float(num), float(den))
            for indicator, (num, den) in pairs.items()
        ]


class IndicatorEngine:
    """Computes the indicators for a year from InfluxDB and the current registry."""

    def __init__(
        self, query: Querier, registry: Callable[[], Registry], settings: Settings
    ) -> None:
        self._query = query
        self._registry = registry
        self._settings = settings

    def compute(
        self, year: int, county: str | None = None, now: datetime | None = None
    ) -> list[IndicatorValue]:
        """City then counties (sorted), four rows each; only ``county``'s rows if given.

        Raises :class:`UnknownCountyError` for a county without sites and
        :class:`~ingest_service.outputs.influx.QueryError` when InfluxDB fails.
        """
        registry = self._registry()
        known = registry.counties
        if county is not None and county not in known:
            raise UnknownCountyError(county, known)
        counties = [county] if county is not None else known
        moment = now or datetime.now(UTC)
        if moment.tzinfo is None:  # a naive "now" is taken as UTC
            moment = moment.replace(tzinfo=UTC)
        window = year_window(year, self._settings.tz, moment)
        totals = {name: Totals() for name in counties}
        for name in counties:
            totals[name].manure_sites = len(registry.large_scale_manure_sites(name))
        if not window.empty:
            self._add_masses(window, county, totals)
            self._add_manure(window, registry, totals)
        rows: list[IndicatorValue] = []
        if county is None:
            city = Totals()
            for part in totals.values():
                city.add(part)
            rows += city.values(year, None)
        for name in counties:
            rows += totals[name].values(year, name)
        return rows

    def query(self, q: str) -> list[Series]:
        """Run a query; a database nothing was written to yet simply has no data."""
        try:
            return self._query.query(q)
        except QueryError as exc:
            if "database not found" in str(exc):
                return []
            raise

    def _add_masses(self, window: Window, county: str | None, totals: dict[str, Totals]) -> None:
        """Film and straw tonnes per county tag, one query for all four event types."""
        types = (
            EventType.FILM_APPLIED,
            EventType.FILM_RECOVERED,
            EventType.HARVEST,
            EventType.STRAW_UTILIZED,
        )
        where = f"{_types_clause(types)} AND {_events_in(window)}"
        if county is not None:
            where += f" AND {quote_ident('county')} = {quote_literal(county)}"
        q = (
            f"SELECT sum({quote_ident('mass_t')}) AS mass_t, "
            f"sum({quote_ident('grain_t')}) AS grain_t "
            f"FROM {quote_ident(schema.EVENT)} WHERE {where} "
            f"GROUP BY {quote_ident('county')}, {quote_ident('type')}, {quote_ident('crop')}"
        )
        ratios = self._settings.straw_ratios
        for series in self.query(q):
            target = totals.get(series.tags.get("county", ""))
            if target is None:
                continue
            for row in series.rows():
                mass, grain = _number(row.get("mass_t")), _number(row.get("grain_t"))
                kind = series.tags.get("type")
                if kind == EventType.FILM_APPLIED:
                    target.film_applied_t += mass
                elif kind == EventType.FILM_RECOVERED:
                    target.film_recovered_t += mass
                elif kind == EventType.STRAW_UTILIZED:
                    target.straw_utilized_t += mass
                elif kind == EventType.HARVEST:
                    crop = series.tags.get("crop") or "other"
                    target.straw_produced_t += grain * ratios.get(crop, ratios["other"])

    def _add_manure(self, window: Window, registry: Registry, totals: dict[str, Totals]) -> None:
        """Ledger and facility numerators: large-scale manure sites of the registry."""
        county_of = {
            site.site_id: site.county
            for name in totals
            for site in registry.large_scale_manure_sites(name)
        }
        if not county_of:
            return
        for site_id in self._sites_with_ledger(window) & county_of.keys():
            totals[county_of[site_id]].ledger_sites += 1
        working = self._sites_reporting(window) - self._sites_with_open_fault(window)
        for site_id in working & county_of.keys():
            totals[county_of[site_id]].working_sites += 1

    def _sites_with_ledger(self, window: Window) -> set[str]:
        types = (EventType.MANURE_TREATED, EventType.MANURE_UTILIZED)
        q = (
            f"SELECT count({quote_ident('seq')}) FROM {quote_ident(schema.EVENT)} "
            f"WHERE {_types_clause(types)} AND {_events_in(window)} "
            f"GROUP BY {quote_ident('site_id')}"
        )
        return {s.tags["site_id"] for s in self.query(q) if s.tags.get("site_id") and s.values}

    def _sites_reporting(self, window: Window) -> set[str]:
        """Manure sites with telemetry in ``(as_of - stale_hours, as_of]``."""
        since = window.as_of - timedelta(hours=self._settings.stale_hours)
        q = (
            f"SELECT count({quote_ident('seq')}) FROM {quote_ident(schema.TELEMETRY)} "
            f"WHERE {quote_ident('site_type')} = {quote_literal('manure')} "
            f"AND time > {time_literal(since)} AND time <= {time_literal(window.as_of)} "
            f"GROUP BY {quote_ident('site_id')}"
        )
        return {s.tags["site_id"] for s in self.query(q) if s.tags.get("site_id") and s.values}

    def _sites_with_open_fault(self, window: Window) -> set[str]:
        """Sites where some facility's latest fault (≤ as of) has no later ``facility_ok``.

        Ties within a millisecond (the query's time resolution) are broken by
        ``seq``, the device's rising counter.
        """
        types = (EventType.FACILITY_FAULT, EventType.FACILITY_OK)
        q = (
            f"SELECT last({quote_ident('seq')}) FROM {quote_ident(schema.EVENT)} "
            f"WHERE {_types_clause(types)} AND time <= {time_literal(window.as_of)} "
            f"GROUP BY {quote_ident('site_id')}, {quote_ident('facility')}, {quote_ident('type')}"
        )
        latest: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
        for series in self.query(q):
            if not series.values:
                continue
            row = series.rows()[0]
            key = (series.tags.get("site_id", ""), series.tags.get("facility", ""))
            latest.setdefault(key, {})[series.tags.get("type", "")] = (
                _number(row.get("time")),
                _number(row.get("last")),
            )
        open_sites: set[str] = set()
        for (site_id, _facility), kinds in latest.items():
            fault = kinds.get(EventType.FACILITY_FAULT)
            ok = kinds.get(EventType.FACILITY_OK)
            if fault is not None and (ok is None or ok < fault):
                open_sites.add(site_id)
        return open_sites


def indicator_points(values: Iterable[IndicatorValue], time_ns: int) -> list[Point]:
    """Indicator rows as ``indicator`` points (contract §9); a null value is left out."""
    points = []
    for item in values:
        fields: dict[str, FieldValue] = {}
        if item.value is not None:
            fields["value"] = float(item.value)
        fields["numerator"] = float(item.numerator)
        fields["denominator"] = float(item.denominator)
        fields["target"] = float(item.target)
        fields["year"] = int(item.year)
        tags = {
            "indicator": str(item.indicator),
            "scope": item.scope,
            "county": item.county if item.county is not None else schema.CITY_COUNTY_TAG,
        }
        points.append(Point(schema.INDICATOR, tags, fields, time_ns))
    return points


def _current_year(settings: Settings) -> Callable[[], list[int]]:
    return lambda: [datetime.now(settings.tz).year]


@dataclass
class IndicatorPublisher:
    """Writes the indicators to InfluxDB every ``indicator_interval_s`` for Grafana.

    Runs in a daemon thread; an error is logged and retried after ``retry_s``
    (or the interval, if shorter), so a down InfluxDB never stops it.
    """

    engine: IndicatorEngine
    writer: Writer
    settings: Settings
    years: Callable[[], list[int]] | None = None
    retry_s: float = 5.0
    published: int = 0
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def publish_once(self, now: datetime | None = None) -> int:
        """Compute every year's indicators and write them; return how many points."""
        moment = now or datetime.now(UTC)
        years = (self.years or _current_year(self.settings))()
        points: list[Point] = []
        time_ns = int(moment.timestamp() * 1_000_000) * 1000
        for year in years:
            points += indicator_points(self.engine.compute(year, now=moment), time_ns)
        if points:
            self.writer.write(encode(points))
        self.published += len(points)
        return len(points)

    def _loop(self) -> None:
        interval = self.settings.indicator_interval_s
        while not self._stop.is_set():
            try:
                self.publish_once()
            except Exception:
                self.errors += 1
                log.exception("publishing indicators failed; retrying")
                self._stop.wait(min(self.retry_s, interval))
                continue
            self._stop.wait(interval)

    def start(self) -> None:
        """Start the background thread (once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="indicator-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
