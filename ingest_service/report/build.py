"""The annual report's numbers: the indicators and the ledgers they are made of.

Counties report to the city once a year (plan, section 九), in writing, with the
figures behind each indicator. The report takes the indicators from
:meth:`IndicatorEngine.compute` — the very rows ``GET /api/v1/indicators``
returns — and adds the ledgers underneath them, per site
(:meth:`IndicatorEngine.ledger`, read and attributed exactly as the figures are, so each
county's ledger adds up to its indicator's numerator and denominator):

- film: tonnes applied and recovered (``film_recovery_rate``), recoveries by season;
- straw: grain harvested per crop × collectable-straw factor = straw counted, and
  straw used per use (``straw_utilization_rate``);
- manure: tonnes treated and used per use, and the number of ledger entries
  (``manure_ledger_coverage``), for every manure site of the year's farm set.

A closed year's report shows the ledgers frozen with its figures (issue 12).
:mod:`ingest_service.report.excel` lays this out as a workbook; :func:`summary_csv`
and :func:`ledger_csv` as CSV, text cells defused and numbers rounded for display
(:mod:`ingest_service.report.spreadsheet`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from farm_contract.indicators import IndicatorId, IndicatorValue, Member
from farm_contract.payloads import EventType
from farm_contract.registry import Registry
from ingest_service.indicators.closing import ClosedYears
from ingest_service.indicators.engine import IndicatorEngine, year_window
from ingest_service.indicators.ledger import LedgerEntry, manure_sites
from ingest_service.indicators.reading import set_day
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
SUMMARY_COLUMNS = ("indicator", "indicator_zh", "scope", "county", "year", "value", "numerator",
                   "denominator", "target", "met")
LEDGER_COLUMNS = ("county", "site_id", "site_name", "type", "item", "mass_t", "grain_t",
                  "straw_ratio", "entries")


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
    if frozen is not None and frozen.ledger is not None:  # closed with its ledgers
        ledger, sites = frozen.ledger, frozen.manure_sites
    else:
        ledger = engine.ledger(year, now=moment)
        sites = manure_sites(current.at(set_day(window)))
    listed = [row.county for row in indicators if row.scope == "county" and row.county]
    present = set(current.counties) | {e.county for e in ledger} | set(sites)
    return Report(year=year, as_of=window.as_of, generated=moment,
                  counties=[c for c in dict.fromkeys(listed) if c in present],
                  indicators=indicators, ledger=ledger, manure_sites=sites,
                  closed=frozen.note if frozen is not None else "",
                  members=members, registry_digest=registry_digest)


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
