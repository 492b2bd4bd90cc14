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
- With ``FARM_ROLLUPS`` (default on), complete months are read from their monthly
  roll-ups (:mod:`ingest_service.indicators.rollups`) where valid, and raw events only for the
  rest; both go through the same aggregates (:mod:`ingest_service.indicators.aggregates`).
  Each county, type and crop's tonnes are rounded to the gram (6 decimals) before
  use, so the order in which InfluxDB or the roll-ups add them never shows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from farm_contract import schema
from farm_contract.indicators import IndicatorId, IndicatorValue, Scope
from farm_contract.payloads import EventType
from farm_contract.registry import Registry
from ingest_service.indicators import aggregates
from ingest_service.indicators.aggregates import Aggregates, MassKey, Querier, run
from ingest_service.indicators.months import Span, gaps
from ingest_service.indicators.rollups import RollupReader
from ingest_service.influxql import QueryError, Series, quote_ident, quote_literal, time_literal
from ingest_service.settings import Settings

log = logging.getLogger(__name__)


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


MAX_TOTAL_T = 1e12
"""No scope's yearly total comes near this: the world grows ~10¹⁰ t of crops a year,
and ingest refuses any event over 10⁵ t (farm_contract/catalog.py)."""

MASS_DECIMALS = 6
"""Tonnes are rounded to the gram: sums in another order differ only far below that."""


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
        """The four indicators, in contract order; ``county`` None means the city.

        Raises :class:`QueryError` if a total is not finite or above
        :data:`MAX_TOTAL_T`: only events stored before the catalog's maxima (or
        written around ingest) add up to that, and a rate of 8e307 ("met") or
        Inf/Inf must not be reported as a figure.
        """
        for name in self.__slots__:
            total = getattr(self, name)
            if not math.isfinite(total) or abs(total) > MAX_TOTAL_T:
                raise QueryError(
                    f"{name} of {county or 'the city'} is not finite: stored events hold "
                    "absurd values (delete them; see docs/contract.md §4)"
                )
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
        self._rollups = RollupReader(query, settings.tz)

    def compute(
        self, year: int, county: str | None = None, now: datetime | None = None
    ) -> list[IndicatorValue]:
        """City then counties (sorted), four rows each; only ``county``'s rows if given.

        Raises :class:`UnknownCountyError` for a county without sites and
        :class:`~ingest_service.influxql.QueryError` when InfluxDB fails.
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
            found = self.aggregates(window, county)
            self._add_masses(found.masses, totals)
            self._add_manure(window, registry, totals, found)
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
        return run(self._query, q)

    def aggregates(self, window: Window, county: str | None) -> Aggregates:
        """The year's event aggregates: valid roll-ups, raw events for everything else.

        Masses and ledger cover ``start <= time < as_of``; facility events every
        time up to and including ``as_of``.
        """
        found, months, facility_months = Aggregates(), set(), set()
        if self._settings.rollups:
            rolled = self._rollups.read(window.start, window.as_of, county)
            found, months, facility_months = rolled.found, rolled.months, rolled.facility_months
        tz = self._settings.tz
        for span in gaps(Span(window.start, window.as_of), months, tz):
            found.add(Aggregates(
                masses=aggregates.mass_sums(self._query, span, county),
                ledger=aggregates.ledger_sites(self._query, span),
            ))
        for span in gaps(Span(None, window.as_of, inclusive=True), facility_months, tz):
            found.add(Aggregates(latest=aggregates.latest_facility_events(self._query, span)))
        return found

    def _add_masses(
        self, masses: dict[MassKey, tuple[float, float]], totals: dict[str, Totals]
    ) -> None:
        """Film and straw tonnes per county tag, in a fixed order, rounded to the gram."""
        ratios = self._settings.straw_ratios
        for (county, kind, crop), (mass, grain) in sorted(masses.items()):
            target = totals.get(county)
            if target is None:
                continue
            mass, grain = round(mass, MASS_DECIMALS), round(grain, MASS_DECIMALS)
            if kind == EventType.FILM_APPLIED:
                target.film_applied_t += mass
            elif kind == EventType.FILM_RECOVERED:
                target.film_recovered_t += mass
            elif kind == EventType.STRAW_UTILIZED:
                target.straw_utilized_t += mass
            elif kind == EventType.HARVEST:
                target.straw_produced_t += grain * ratios.get(crop or "other", ratios["other"])

    def _add_manure(
        self, window: Window, registry: Registry, totals: dict[str, Totals], found: Aggregates
    ) -> None:
        """Ledger and facility numerators: large-scale manure sites of the registry."""
        county_of = {
            site.site_id: site.county
            for name in totals
            for site in registry.large_scale_manure_sites(name)
        }
        if not county_of:
            return
        for site_id in found.ledger & county_of.keys():
            totals[county_of[site_id]].ledger_sites += 1
        working = self._sites_reporting(window) - aggregates.open_fault_sites(found.latest)
        for site_id in working & county_of.keys():
            totals[county_of[site_id]].working_sites += 1

    def _sites_reporting(self, window: Window) -> set[str]:
        """Manure sites with telemetry in ``(as_of - stale_hours, as_of]``.

        Always raw: it reads only the last hours, which no roll-up would shorten.
        """
        since = window.as_of - timedelta(hours=self._settings.stale_hours)
        q = (
            f"SELECT count({quote_ident('seq')}) FROM {quote_ident(schema.TELEMETRY)} "
            f"WHERE {quote_ident('site_type')} = {quote_literal('manure')} "
            f"AND time > {time_literal(since)} AND time <= {time_literal(window.as_of)} "
            f"GROUP BY {quote_ident('site_id')}"
        )
        return {s.tags["site_id"] for s in self.query(q) if s.tags.get("site_id") and s.values}
