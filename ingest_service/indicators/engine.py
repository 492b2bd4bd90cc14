"""The plan's indicators (contract §8, docs/indicators.md), computed from InfluxDB aggregates.

Every number comes from InfluxQL aggregates grouped by ``site_id`` (sums, counts, days
counted per site), so the cost grows with the number of sites, not of stored points.
A figure is built from its *members*, one row per site (and county, for a site that moved
during the year): a county's numerator and denominator are the exact sums (``math.fsum``)
of its members', the city's the sums of all members'. :meth:`IndicatorEngine.members` lists
them and :meth:`IndicatorEngine.events` the events behind one site's part.

Rules, decided here and documented in docs/indicators.md:

- A year is a calendar year in ``settings.tz`` (Asia/Shanghai). "As of" is the end of that
  year, or now for the current year; events count when ``start <= time < as_of``.
- Film and straw tonnes count for the site's registry row in effect at the data's own time
  (:mod:`ingest_service.indicators.reading`): a move or a dated change applies from its day
  on, an undated correction to all time; the stored ``county`` tag is never read.
- The year's farm set (manure denominators; registered sites for coverage) is the registry
  in effect on the year's last day (on "as of" for the current year), each in its county of
  that day.
- Manure facility rate: a farm of the set is equipped when its manure telemetry reported on
  at least ``facility_min_days`` days of the year (pro rata while the year runs) and no
  facility fault stayed open longer than ``fault_grace_days`` consecutive days in it.
  Ledger coverage: farms of the set with a ``manure_treated``/``manure_utilized`` event.
- Straw: collectable straw = grain × straw-to-grain ratio × collectable coefficient, per
  crop and county (``farm_contract/params/straw.toml``).
- n/a: a zero denominator, or a year in which no farm of the set reported anything for the
  manure indicators, gives ``value`` and ``met`` null. A rate above 100 % is flagged
  ``above_100_percent``; in the city sum each county's numerator is capped at its
  denominator (flag ``county_capped``; ``quality.uncapped_numerator`` keeps the plain sum).
- Every county of the divisions file (Datong's ten) is listed, then any other county the
  registry names; ``compute(year, county=NAME)`` returns only that county's four rows.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from farm_contract import schema
from farm_contract.catalog import SiteType
from farm_contract.indicators import FORMULAS, IndicatorId, IndicatorValue, Member, Scope
from farm_contract.payloads import EventType
from farm_contract.registry import Registry, Site, day_of
from ingest_service.indicators import aggregates
from ingest_service.indicators.aggregates import LEDGER_TYPES, THIN_FILM_MM, Querier, run
from ingest_service.indicators.ledger import LedgerEntry, read_ledger
from ingest_service.indicators.live import FarmLive, LiveState, OpenFault
from ingest_service.indicators.months import Span
from ingest_service.indicators.reading import (
    Window,
    YearData,
    YearReader,
    counts,
    year_window,
)
from ingest_service.influxql import QueryError, Series, quote_ident, quote_literal, time_literal
from ingest_service.settings import Settings
from ingest_service.telemetry.rollups import LAST_SEEN

__all__ = ["IndicatorEngine", "UnknownCountyError", "Window", "year_window"]

log = logging.getLogger(__name__)

MAX_TOTAL_T = 1e12
"""No scope's yearly total comes near this: the world grows ~10¹⁰ t of crops a year,
and ingest refuses any event over 10⁵ t (farm_contract/catalog.py)."""

MASS_DECIMALS = 6
"""Tonnes are rounded to the gram: sums in another order differ only far below that."""
DAY_MS = 86_400_000


class UnknownCountyError(LookupError):
    """A county that is neither a listed division nor named by the registry."""

    def __init__(self, county: str, known: list[str]) -> None:
        super().__init__(f"unknown county {county!r}; known counties: {', '.join(known) or 'none'}")
        self.county = county
        self.known = known


@dataclass(slots=True)
class Figures:
    """One year's members, rows and the counties listed."""

    counties: list[str]
    members: dict[IndicatorId, list[Member]] = field(default_factory=dict)
    rows: list[IndicatorValue] = field(default_factory=list)
    errors: dict[str | None, QueryError] = field(default_factory=dict)
    """Scopes (None: the city) whose totals are absurd: asking for them raises."""

    def check(self, county: str | None) -> None:
        """Raise the error of ``county``'s figures (of any scope when None)."""
        error = self.errors.get(county) if county is not None else next(
            iter(self.errors.values()), None)
        if error is not None:
            raise error


def _latest_times(series: list[Series]) -> dict[str, int]:
    """``site_id`` → the time (epoch ms) of a ``last()`` row grouped by site."""
    out: dict[str, int] = {}
    for one in series:
        site_id = one.tags.get("site_id")
        for row in one.rows():
            if site_id and isinstance(row.get("time"), int | float):
                out[site_id] = int(row["time"])
    return out


def _tonnes(value: float) -> float:
    return round(value, MASS_DECIMALS)


def _check_total(name: str, total: float, county: str | None) -> None:
    """A total that is not finite or absurdly large comes from events written around
    ingest's maxima: report it as an error, never as a figure (contract §4)."""
    if not math.isfinite(total) or abs(total) > MAX_TOTAL_T:
        raise QueryError(
            f"{name} of {county or 'the city'} is not finite: stored events hold "
            "absurd values (delete them; see docs/contract.md §4)"
        )


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector while a year is computed (restored after, if this
    call paused it). At 10,000 sites the computation builds ~100,000 short-lived containers
    (per-site keys, members), which set off one or two full collections of the whole heap
    per year: ~0.2 s of ~0.7 s (docs/performance.md). Nothing made here is cyclic garbage;
    reference counting frees it as usual."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


class IndicatorEngine:
    """Computes the indicators of a year from InfluxDB and the registry's history."""

    def __init__(
        self, query: Querier, registry: Callable[[], Registry], settings: Settings
    ) -> None:
        self._query = query
        self._registry = registry
        self._settings = settings
        self._reader = YearReader(query, settings.tz, settings.rollups,
                                  settings.film_recovery_until)

    # --- public -------------------------------------------------------------------------

    def compute(
        self, year: int, county: str | None = None, now: datetime | None = None
    ) -> list[IndicatorValue]:
        """City then counties (listed order), four rows each; only ``county``'s if given.

        Raises :class:`UnknownCountyError` for a county not listed and
        :class:`~ingest_service.influxql.QueryError` when InfluxDB fails.
        """
        figures = self._figures(year, self._now(now), county)
        figures.check(county)
        if county is None:
            return figures.rows
        return [row for row in figures.rows if row.county == county]

    def members(
        self, year: int, county: str | None = None, indicator: IndicatorId | None = None,
        now: datetime | None = None,
    ) -> list[Member]:
        """The sites behind the figures: one row per site (and county) and indicator, whose
        numerators and denominators add up (``math.fsum``) to the county's figure, and over
        all counties to the city's (before the city's 100 % cap, see the module docstring)."""
        figures = self._figures(year, self._now(now), county)
        figures.check(county)
        wanted = [indicator] if indicator is not None else list(IndicatorId)
        return [m for i in wanted for m in figures.members[IndicatorId(i)]
                if county is None or m.county == county]

    def events(
        self, indicator: IndicatorId, year: int, site_id: str, now: datetime | None = None
    ) -> list[dict[str, object]]:
        """The events that make up a site's part in a year's figure, oldest first: each with
        ``device_id``, ``seq``, ``ts``, ``type``, ``role`` (numerator, denominator or, for
        the facility rate, fault) and ``values`` (its fields and tags)."""
        moment = self._now(now)
        window = year_window(year, self._settings.tz, moment)
        if window.empty:
            return []
        indicator = IndicatorId(indicator)
        main = Span(window.start, window.as_of)
        found: list[dict[str, object]] = []
        if indicator is IndicatorId.FILM_RECOVERY_RATE:
            found += self._site_events(site_id, main, (EventType.FILM_APPLIED,), "denominator")
            for piece in self._reader.pieces(year, window, moment):
                for item in self._site_events(site_id, piece.span, (EventType.FILM_RECOVERED,),
                                              "numerator"):
                    values = item["values"]
                    season = values.get("season", "") if isinstance(values, dict) else ""
                    if counts(piece, EventType.FILM_RECOVERED, str(season or ""), year):
                        found.append(item)
        elif indicator is IndicatorId.STRAW_UTILIZATION_RATE:
            found += self._site_events(site_id, main, (EventType.HARVEST,), "denominator")
            found += self._site_events(site_id, main, (EventType.STRAW_UTILIZED,), "numerator")
        elif indicator is IndicatorId.MANURE_LEDGER_COVERAGE:
            found += self._site_events(site_id, main, LEDGER_TYPES, "numerator")
        else:
            span = Span(window.start, window.as_of, inclusive=True)
            found += self._site_events(site_id, span, aggregates.FACILITY_TYPES, "fault")
        found.sort(key=lambda item: (str(item["ts"]), float(str(item["seq"]))))
        return found

    def facility_live(self, now: datetime | None = None) -> dict[str, bool]:
        """The operational state, not the plan's indicator: per large-scale manure farm in
        effect today, whether its telemetry reported in the last ``stale_hours`` and no
        facility fault is open now (:meth:`facility_live_state` says why not)."""
        return self.facility_live_state(now).live()

    def facility_live_state(self, now: datetime | None = None) -> LiveState:
        """Each large-scale manure farm in effect at ``now``: reporting, open faults and
        last reading. Two queries whatever the number of farms (the readings of the last
        ``stale_hours``, each facility's latest event), and a third on the
        ``device_last_seen`` roll-up for the last reading of silent farms."""
        moment = self._now(now)
        registry = self._registry()
        farms = sorted(registry.on(moment).large_scale_manure_sites(), key=lambda s: s.site_id)
        since = moment - timedelta(hours=self._settings.stale_hours)
        manure = f"{quote_ident('site_type')} = {quote_literal('manure')}"
        q = (
            f"SELECT last({quote_ident('seq')}) FROM {quote_ident(schema.TELEMETRY)} "
            f"WHERE {manure} AND time > {time_literal(since)} AND time <= {time_literal(moment)} "
            f"GROUP BY {quote_ident('site_id')}"
        )
        seen = _latest_times(self.query(q))
        latest = aggregates.latest_facility_events(self._query, Span(None, moment, True))
        faults: dict[str, list[OpenFault]] = {}
        for (site_id, facility), (at_ms, _, kind) in sorted(latest.items()):
            if kind == EventType.FACILITY_FAULT:
                faults.setdefault(site_id, []).append(OpenFault(facility, int(at_ms)))
        silent = [s.site_id for s in farms if s.site_id not in seen]
        before = self._last_seen(moment) if silent and self._settings.telemetry_rollups else {}
        states = [
            FarmLive(site_id=s.site_id, name=s.name, county=s.county,
                     reporting=s.site_id in seen,
                     last_seen_ms=seen.get(s.site_id, before.get(s.site_id)),
                     open_faults=tuple(faults.get(s.site_id, ())))
            for s in farms
        ]
        counties = self._settings.divisions.listed(registry.counties_ever)
        return LiveState(moment, self._settings.stale_hours, states, counties)

    def _last_seen(self, moment: datetime) -> dict[str, int]:
        """Each manure site's latest reading per the ``device_last_seen`` roll-up (one point
        per device and month, kept by the telemetry roll-ups), over its 400 days."""
        q = (
            f"SELECT max({quote_ident('seen_ms')}) FROM {quote_ident(LAST_SEEN)} "
            f"WHERE {quote_ident('site_type')} = {quote_literal('manure')} "
            f"AND time > {time_literal(moment - timedelta(days=400))} "
            f"AND time <= {time_literal(moment)} GROUP BY {quote_ident('site_id')}"
        )
        moment_ms = moment.timestamp() * 1000
        out: dict[str, int] = {}
        for series in self.query(q):
            for row in series.rows():
                value = row.get("max")  # a month's point after a past "now" is not known then
                if (isinstance(value, int | float) and value <= moment_ms
                        and series.tags.get("site_id")):
                    out[series.tags["site_id"]] = int(value)
        return out

    def ledger(self, year: int, now: datetime | None = None) -> list[LedgerEntry]:
        """The ledgers behind the year's figures, read and attributed as the figures are
        (:mod:`ingest_service.indicators.ledger`): they add up to the numerators and
        denominators."""
        return read_ledger(self._query, self._reader, self._registry(), year, self._now(now),
                           self.straw_factor)

    def straw_factor(self, county: str | None, crop: str) -> float:
        """Collectable straw per tonne of grain of ``crop`` in ``county``."""
        return self._settings.straw.of(county, crop).factor

    def query(self, q: str) -> list[Series]:
        """Run a query; a database nothing was written to yet simply has no data."""
        return run(self._query, q)

    # --- the year -----------------------------------------------------------------------

    @staticmethod
    def _now(now: datetime | None) -> datetime:
        moment = now or datetime.now(UTC)
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

    def _figures(self, year: int, now: datetime, county: str | None) -> Figures:
        with _no_cycle_collection():
            return self._figures_of(year, now, county)

    def _figures_of(self, year: int, now: datetime, county: str | None) -> Figures:
        registry = self._registry()
        named = registry.counties_ever
        listed = self._settings.divisions.listed(named)
        if county is not None and county not in listed:
            raise UnknownCountyError(county, listed)
        computed_at = datetime.now(UTC)
        data = self._reader.read(registry, year, now)
        farm_set = registry.at(data.set_day)
        members = {
            IndicatorId.MANURE_FACILITY_RATE: self._facility_members(year, data, farm_set),
            IndicatorId.MANURE_LEDGER_COVERAGE: self._ledger_members(year, data, farm_set),
            IndicatorId.FILM_RECOVERY_RATE: self._film_members(year, data, farm_set),
            IndicatorId.STRAW_UTILIZATION_RATE: self._straw_members(year, data, farm_set),
        }
        counties = self._settings.divisions.listed(
            sorted(set(named) | {m.county for ms in members.values() for m in ms}))
        order = {name: index for index, name in enumerate(counties)}
        for rows in members.values():
            rows.sort(key=lambda m: (order[m.county], m.site_id))
        figures = Figures(counties, members)
        by_scope: dict[str | None, list[IndicatorValue]] = {None: []}
        for name in counties:
            by_scope[name] = []
        for indicator, rows in members.items():
            for value in self._rows(indicator, year, rows, counties, data, farm_set,
                                    figures.errors):
                value.computed_at = computed_at
                by_scope[value.county].append(value)
        figures.rows = [row for scope in by_scope.values() for row in scope]
        return figures

    def _rows(
        self, indicator: IndicatorId, year: int, members: list[Member], counties: list[str],
        data: YearData, farm_set: Registry, errors: dict[str | None, QueryError],
    ) -> list[IndicatorValue]:
        """The city row then one per county, from the members; a scope whose totals are
        absurd (events written around ingest's maxima) gets its error in ``errors``, not a
        row, so other counties' figures still answer."""
        manure = indicator in (IndicatorId.MANURE_FACILITY_RATE,
                               IndicatorId.MANURE_LEDGER_COVERAGE)
        no_data = manure and not any(m.detail.get("reported") for m in members)
        out: list[IndicatorValue] = []
        capped_sum: list[float] = []
        capped: list[str] = []
        county_rows: list[IndicatorValue] = []
        by_county: dict[str, list[Member]] = {}
        for member in members:
            by_county.setdefault(member.county, []).append(member)
        for name in counties:
            own = by_county.get(name, [])
            try:
                row = self._row(indicator, "county", name, year, own, data, farm_set, no_data)
            except QueryError as exc:
                errors.setdefault(name, exc)
                continue
            county_rows.append(row)
            if row.value is not None and row.value > 1.0 + 1e-12:
                row.flags.append("above_100_percent")
                capped.append(name)
                capped_sum.append(row.denominator)
            else:
                capped_sum.append(row.numerator)
        try:
            city = self._row(indicator, "city", None, year, members, data, farm_set, no_data)
        except QueryError as exc:
            errors.setdefault(None, exc)
            return county_rows
        if capped:
            uncapped = city.numerator
            city = self._row(indicator, "city", None, year, members, data, farm_set, no_data,
                             numerator=math.fsum(capped_sum))
            city.flags.append("county_capped")
            city.quality["uncapped_numerator"] = uncapped
            city.quality["capped_counties"] = ",".join(capped)
        out.append(city)
        out += county_rows
        return out

    def _row(
        self, indicator: IndicatorId, scope: Scope, county: str | None, year: int,
        members: list[Member], data: YearData, farm_set: Registry, no_data: bool,
        numerator: float | None = None,
    ) -> IndicatorValue:
        try:
            num = math.fsum(m.numerator for m in members) if numerator is None else numerator
            den = math.fsum(m.denominator for m in members)
        except OverflowError:  # fsum refuses sums beyond the float range
            num = den = math.inf
        _check_total(f"{indicator} numerator", num, county)
        _check_total(f"{indicator} denominator", den, county)
        row = IndicatorValue.of(indicator, scope, county, year, num, den)
        if no_data:
            row.value, row.met = None, None
            row.flags.append("no_data")
        row.formula = FORMULAS[indicator]
        row.source = data.source
        row.parameters = self._parameters(indicator, county, data)
        registered = [m for m in members if m.detail.get("registered")]
        row.coverage = (sum(1 for m in registered if m.detail.get("reported")) / len(registered)
                        if registered else None)
        if indicator is IndicatorId.FILM_RECOVERY_RATE:
            thin = math.fsum(float(m.detail.get("thin_applied_t") or 0.0) for m in members)
            row.quality["thin_applied_t"] = thin
            row.quality["thin_film_share"] = thin / den if den > 0 else None
        return row

    def _parameters(
        self, indicator: IndicatorId, county: str | None, data: YearData
    ) -> dict[str, float | str]:
        settings = self._settings
        common: dict[str, float | str] = {
            "timezone": settings.timezone, "as_of": data.window.as_of.isoformat(),
            "farm_set_day": data.set_day.isoformat(),
        }
        if indicator is IndicatorId.MANURE_FACILITY_RATE:
            return {**common, "facility_min_days": float(settings.facility_min_days),
                    "days_required": float(self._days_required(data.window)),
                    "fault_grace_days": settings.fault_grace_days}
        if indicator is IndicatorId.MANURE_LEDGER_COVERAGE:
            return common
        if indicator is IndicatorId.FILM_RECOVERY_RATE:
            return {**common, "film_recovery_until": settings.film_recovery_until,
                    "thin_film_mm": THIN_FILM_MM}
        return {**common, **settings.straw.parameters(county)}

    def _days_required(self, window: Window) -> int:
        """``facility_min_days``, pro rata to the part of the year that has passed."""
        full = self._settings.facility_min_days
        year_ms = (window.start.replace(year=window.start.year + 1) - window.start)
        passed = max(window.as_of - window.start, timedelta(0))
        return max(1, math.ceil(full * passed / year_ms - 1e-9))

    # --- members --------------------------------------------------------------------------

    @staticmethod
    def _member(
        indicator: IndicatorId, year: int, site: Site, registered: bool, numerator: float,
        denominator: float, detail: dict[str, float | int | str | None],
        status: str | None = None,
    ) -> Member:
        """A site's member, built once with its values (a pydantic model validates each
        assignment: at 10,000 sites, setting fields afterwards cost more than building)."""
        return Member(indicator=indicator, year=year, county=site.county, site_id=site.site_id,
                      name=site.name, numerator=numerator, denominator=denominator,
                      status=status, detail={"registered": int(registered), **detail})

    def _manure_farms(self, farm_set: Registry) -> list[Site]:
        return sorted(farm_set.large_scale_manure_sites(), key=lambda s: s.site_id)

    def _reported(self, data: YearData, site_id: str) -> bool:
        return (data.days.get(site_id, 0) > 0 or site_id in data.ledger
                or site_id in data.facility_sites)

    def _facility_members(self, year: int, data: YearData, farm_set: Registry) -> list[Member]:
        required = self._days_required(data.window)
        grace = self._settings.fault_grace_days
        out = []
        for site in self._manure_farms(farm_set):
            days = data.days.get(site.site_id, 0)
            fault = round(data.faults.get(site.site_id, 0.0), 3)
            equipped = days >= required and fault <= grace
            last = data.last_day.get(site.site_id)
            out.append(self._member(
                IndicatorId.MANURE_FACILITY_RATE, year, site, True,
                numerator=1.0 if equipped else 0.0, denominator=1.0,
                status="equipped" if equipped else "not_equipped",
                detail={
                    "reported": int(self._reported(data, site.site_id)),
                    "days_reported": days, "days_required": required,
                    "longest_open_fault_days": fault,
                    "last_reading": (day_of(datetime.fromtimestamp(last / 1000, UTC)).isoformat()
                                     if last is not None else None),
                }))
        return out

    def _ledger_members(self, year: int, data: YearData, farm_set: Registry) -> list[Member]:
        return [
            self._member(IndicatorId.MANURE_LEDGER_COVERAGE, year, site, True,
                         numerator=1.0 if site.site_id in data.ledger else 0.0, denominator=1.0,
                         detail={"reported": int(self._reported(data, site.site_id))})
            for site in self._manure_farms(farm_set)
        ]

    @staticmethod
    def _mass_sums(
        site_type: SiteType, year: int, data: YearData, farm_set: Registry,
    ) -> dict[tuple[str, str], tuple[Site, bool, dict[tuple[str, str], float]]]:
        """Sites keyed by (site, county), each with whether it is registered and its tonnes
        per (type, crop)."""
        found: dict[tuple[str, str], tuple[Site, bool, dict[tuple[str, str], float]]] = {}
        for site in farm_set.sites.values():
            if site.site_type == site_type:
                found[site.site_id, site.county] = (site, True, {})
        types = ({EventType.FILM_APPLIED, EventType.FILM_RECOVERED}
                 if site_type == SiteType.DRIP
                 else {EventType.HARVEST, EventType.STRAW_UTILIZED})
        for item in data.masses:
            site_id, kind, crop, season = item.key
            if kind not in types or not counts(item.piece, kind, season, year):
                continue
            key = (site_id, item.site.county)
            if key not in found:
                found[key] = (item.site, False, {})
            sums = found[key][2]
            mass, grain, thin = item.mass
            if kind == EventType.HARVEST:
                sums[kind, crop or "other"] = sums.get((kind, crop or "other"), 0.0) + grain
            else:
                sums[kind, ""] = sums.get((kind, ""), 0.0) + mass
            if thin:
                sums["thin", ""] = sums.get(("thin", ""), 0.0) + thin
        return found

    def _film_members(self, year: int, data: YearData, farm_set: Registry) -> list[Member]:
        return [
            self._member(
                IndicatorId.FILM_RECOVERY_RATE, year, site, registered,
                numerator=_tonnes(sums.get((EventType.FILM_RECOVERED, ""), 0.0)),
                denominator=_tonnes(sums.get((EventType.FILM_APPLIED, ""), 0.0)),
                detail={"reported": int(bool(sums)),
                        "thin_applied_t": _tonnes(sums.get(("thin", ""), 0.0))})
            for site, registered, sums in self._mass_sums(SiteType.DRIP, year, data,
                                                          farm_set).values()
        ]

    def _straw_members(self, year: int, data: YearData, farm_set: Registry) -> list[Member]:
        out = []
        straw = self._settings.straw
        for site, registered, sums in self._mass_sums(SiteType.STRAW, year, data,
                                                      farm_set).values():
            detail: dict[str, float | int | str | None] = {"reported": int(bool(sums))}
            parts = []
            for (kind, crop), grain in sorted(sums.items()):
                if kind != EventType.HARVEST:
                    continue
                grain = _tonnes(grain)
                detail[f"grain_t.{crop}"] = grain
                parts.append(grain * straw.of(site.county, crop).factor)
            out.append(self._member(
                IndicatorId.STRAW_UTILIZATION_RATE, year, site, registered,
                numerator=_tonnes(sums.get((EventType.STRAW_UTILIZED, ""), 0.0)),
                denominator=math.fsum(parts), detail=detail))
        return out

    def _site_events(
        self, site_id: str, span: Span, types: tuple[EventType, ...], role: str
    ) -> list[dict[str, object]]:
        q = (
            f"SELECT * FROM {quote_ident(schema.EVENT)} WHERE {aggregates.types_clause(types)} "
            f"AND {span.condition()}{aggregates.site_clause(site_id)}"
        )
        out: list[dict[str, object]] = []
        skip = {"time", "seq", "device_id", "site_id", "county", "site_type"}
        for series in self.query(q):
            for row in series.rows():
                values = {k: v for k, v in row.items() if k not in skip and v is not None}
                ts = datetime.fromtimestamp(aggregates.number(row.get("time")) / 1000, UTC)
                out.append({
                    "device_id": row.get("device_id"), "seq": row.get("seq"),
                    "ts": ts.isoformat().replace("+00:00", "Z"), "type": row.get("type"),
                    "role": role, "values": values,
                })
        return out


