"""The annual report's numbers: the indicators and the ledgers they are made of.

Counties report to the city once a year (plan, section 九), in writing, with the
figures behind each indicator. The report takes the indicators from
:meth:`IndicatorEngine.compute` — the very rows ``GET /api/v1/indicators``
returns — and adds the ledgers underneath them, per site, from InfluxQL sums over
the same year window (calendar year in ``FARM_TIMEZONE``, as of its end or now):

- film: tonnes applied and recovered (``film_recovery_rate``);
- straw: grain harvested per crop × straw-to-grain ratio = straw produced, and
  straw used per use (``straw_utilization_rate``);
- manure: tonnes treated and used per use, and the number of ledger entries
  (``manure_ledger_coverage``), for every manure site of the registry.

Masses are attributed exactly as the engine does, so each county's ledger adds up
to its indicator's numerator and denominator: film and straw by the event's
``county`` tag, manure by the farm's county in the registry (the engine counts a
farm's ledger by ``site_id``).
:mod:`ingest_service.report.excel` lays this out as a workbook; :func:`summary_csv`
and :func:`ledger_csv` as CSV, text cells defused and numbers rounded for display
(:mod:`ingest_service.report.spreadsheet`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from farm_contract import schema
from farm_contract.indicators import IndicatorId, IndicatorValue, Member
from farm_contract.payloads import EventType
from farm_contract.registry import Registry
from ingest_service.indicators.aggregates import number, types_clause
from ingest_service.indicators.closing import ClosedYears
from ingest_service.indicators.engine import IndicatorEngine, year_window
from ingest_service.influxql import quote_ident, time_literal
from ingest_service.report.spreadsheet import csv_text, round_mass, rounded_indicator
from ingest_service.settings import Settings

INDICATOR_LABELS: dict[IndicatorId, tuple[str, str, str]] = {
    IndicatorId.MANURE_FACILITY_RATE: ("粪污处理设施装备配套率", "Manure facility rate", "farms"),
    IndicatorId.MANURE_LEDGER_COVERAGE: ("粪污资源化利用台账覆盖率", "Manure ledger coverage",
                                         "farms"),
    IndicatorId.FILM_RECOVERY_RATE: ("农膜回收率", "Film recovery rate", "t"),
    IndicatorId.STRAW_UTILIZATION_RATE: ("秸秆综合利用率", "Straw utilization rate", "t"),
}
"""Chinese name, English name and the unit of numerator and denominator."""

CITY_LABEL = "全市 City"
LEDGER_TYPES = (EventType.FILM_APPLIED, EventType.FILM_RECOVERED, EventType.HARVEST,
                EventType.STRAW_UTILIZED, EventType.MANURE_TREATED, EventType.MANURE_UTILIZED)
MANURE_TYPES = (EventType.MANURE_TREATED, EventType.MANURE_UTILIZED)
SUMMARY_COLUMNS = ("indicator", "indicator_zh", "scope", "county", "year", "value", "numerator",
                   "denominator", "target", "met")
LEDGER_COLUMNS = ("county", "site_id", "site_name", "type", "item", "mass_t", "grain_t",
                  "straw_ratio", "entries")


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One site's total of one event type (and use or crop) in the year."""

    county: str
    site_id: str
    site_name: str
    type: EventType
    item: str
    """The ``use`` (straw, manure) or ``crop`` (harvest); empty for film and treatment."""
    mass_t: float
    grain_t: float
    entries: int
    straw_ratio: float | None = None
    """For a harvest: the straw-to-grain ratio the indicator used."""

    @property
    def straw_t(self) -> float:
        """Straw produced by a harvest (grain × ratio); 0 for other entries."""
        return self.grain_t * self.straw_ratio if self.straw_ratio is not None else 0.0


@dataclass(slots=True)
class Report:
    """Everything the annual report shows, for one year."""

    year: int
    as_of: datetime
    generated: datetime
    counties: list[str]
    indicators: list[IndicatorValue]
    ledger: list[LedgerEntry]
    manure_sites: dict[str, list[tuple[str, str, bool]]] = field(default_factory=dict)
    """County → its manure sites as (site_id, name, large_scale), so a farm with no
    ledger entry still appears in the manure sheet."""
    closed: str = ""
    """For a closed year, "closed on …, digest …" (its indicators are the frozen ones)."""
    members: list[Member] = field(default_factory=list)
    """The sites behind every figure (:meth:`IndicatorEngine.members`): the members sheets."""
    registry_digest: str = ""
    """:meth:`Registry.digest` of the registry the figures used: the parameters sheet."""

    def entries(self, *types: EventType) -> list[LedgerEntry]:
        return [e for e in self.ledger if e.type in types]

    def total(self, county: str | None, event_type: EventType, straw: bool = False) -> float:
        """Σ tonnes (or straw produced, with ``straw``) of a type, in a county or the city."""
        return sum(e.straw_t if straw else e.mass_t for e in self.ledger
                   if e.type == event_type and (county is None or e.county == county))


def ledger_query(start: datetime, as_of: datetime) -> str:
    """One InfluxQL aggregation for every ledger: sums per county, site, type, use and crop."""
    return (
        f"SELECT sum({quote_ident('mass_t')}) AS {quote_ident('mass_t')}, "
        f"sum({quote_ident('grain_t')}) AS {quote_ident('grain_t')}, "
        f"count({quote_ident('seq')}) AS {quote_ident('entries')} "
        f"FROM {quote_ident(schema.EVENT)} WHERE {types_clause(LEDGER_TYPES)} "
        f"AND time >= {time_literal(start)} AND time < {time_literal(as_of)} "
        f"GROUP BY {quote_ident('county')}, {quote_ident('site_id')}, {quote_ident('type')}, "
        f"{quote_ident('use')}, {quote_ident('crop')}"
    )


def build_report(
    engine: IndicatorEngine, registry: Callable[[], Registry], settings: Settings, year: int,
    now: datetime | None = None,
) -> Report:
    """The report for ``year``: the engine's indicators and the ledgers, at one instant."""
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    current = registry()
    frozen = ClosedYears(engine.query).figures(engine, year)  # a closed year's, as frozen
    if frozen is not None:  # the figures, their members and the registry version signed
        indicators = frozen.rows
        members = frozen.members
        registry_digest = frozen.registry_digest
    else:
        indicators = engine.compute(year, now=moment)
        members = engine.members(year, now=moment)
        registry_digest = current.digest()
    window = year_window(year, settings.tz, moment)
    ledger: list[LedgerEntry] = []
    if not window.empty:
        ledger = _ledger(engine, current, settings, window.start, window.as_of)
    manure_sites = {
        county: [(s.site_id, s.name, s.large_scale) for s in current.sites_in(county)
                 if s.site_type == "manure"]
        for county in current.counties
    }
    return Report(year=year, as_of=window.as_of, generated=moment, counties=current.counties,
                  indicators=indicators, ledger=ledger, manure_sites=manure_sites,
                  closed=frozen.note if frozen is not None else "",
                  members=members, registry_digest=registry_digest)


def _ledger(engine: IndicatorEngine, registry: Registry, settings: Settings, start: datetime,
            as_of: datetime) -> list[LedgerEntry]:
    known = set(registry.counties)
    out = []
    for series in engine.query(ledger_query(start, as_of)):
        tags = series.tags
        county, site_id = tags.get("county", ""), tags.get("site_id", "")
        kind = EventType(tags.get("type", ""))
        site = registry.sites.get(site_id)
        if kind in MANURE_TYPES and site is not None:
            # The engine counts a farm's ledger by its site_id in the registry, not by the
            # event's county tag: so does the manure sheet (issue 12: a farm whose county
            # changed showed "no ledger" under its new county while the summary counted it).
            county = site.county
        if county not in known or not series.values:
            continue  # the engine reports only the registry's counties; so does the report
        row = series.rows()[0]
        crop = tags.get("crop") or ("other" if kind == EventType.HARVEST else "")
        out.append(LedgerEntry(
            county=county, site_id=site_id, site_name=site.name if site else "",
            type=kind, item=tags.get("use") or crop,
            mass_t=number(row.get("mass_t")), grain_t=number(row.get("grain_t")),
            entries=int(number(row.get("entries"))),
            straw_ratio=(engine.straw_factor(county, crop) if kind == EventType.HARVEST
                         else None),  # collectable straw per tonne of grain (issue 13)
        ))
    out.sort(key=lambda e: (e.county, e.site_id, e.type, e.item))
    return out


def summary_csv(report: Report) -> str:
    """The indicators as the API's CSV has them, plus the Chinese indicator name; numbers
    rounded for display (:func:`rounded_indicator`), ``met`` as the engine decided it."""
    rows = []
    for item in report.indicators:
        data = rounded_indicator(item)
        rows.append([data["indicator"], INDICATOR_LABELS[item.indicator][0], data["scope"],
                     data["county"], data["year"], data["value"], data["numerator"],
                     data["denominator"], data["target"], data["met"]])
    return csv_text(SUMMARY_COLUMNS, rows)


def ledger_csv(report: Report) -> str:
    """Every ledger entry, one row per site, type and use/crop; tonnes to 3 decimals."""
    return csv_text(LEDGER_COLUMNS, (
        [e.county, e.site_id, e.site_name, str(e.type), e.item, round_mass(e.mass_t),
         round_mass(e.grain_t), e.straw_ratio, e.entries] for e in report.ledger))


def county_totals(report: Report) -> dict[str, dict[str, float]]:
    """Per county: tonnes of each ledger type, and straw produced (``straw_produced``)."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in report.ledger:
        totals[e.county][str(e.type)] += e.mass_t
        if e.type == EventType.HARVEST:
            totals[e.county]["grain"] += e.grain_t
            totals[e.county]["straw_produced"] += e.straw_t
    return {county: dict(totals[county]) for county in report.counties}
