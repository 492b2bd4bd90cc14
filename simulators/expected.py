"""The indicators ingest must compute from what the fleet sends (contract §8, docs/indicators.md).

Computed in plain Python from the same plan the fleet publishes, as of the end of the
year (a closed year), so an end-to-end test can compare them with what comes out of
InfluxDB. It follows the written definitions, not the engine's code: it shares only the
published parameters (the straw file, the list of divisions) and the settings' defaults.
Duplicates and bad payloads are ignored here, as ingest must.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from edge.drivers.simulated import LOCAL
from farm_contract.catalog import SiteType
from farm_contract.indicator_params import StrawParams, load_divisions, load_straw
from farm_contract.indicators import IndicatorId, IndicatorValue
from farm_contract.payloads import EventType
from ingest_service.settings import Settings
from simulators.plan import DevicePlan, Plan, PlannedEvent, build_plan
from simulators.scenario import Scenario

FACILITY_MIN_DAYS = int(Settings.model_fields["facility_min_days"].default)
"""``FARM_FACILITY_MIN_DAYS`` default: days of the year a farm's telemetry must report on."""
FAULT_GRACE_DAYS = float(Settings.model_fields["fault_grace_days"].default)
"""``FARM_FAULT_GRACE_DAYS`` default: longest a facility fault may stay open (days)."""
FILM_RECOVERY_UNTIL = str(Settings.model_fields["film_recovery_until"].default)
"""``FARM_FILM_RECOVERY_UNTIL`` default: a recovery without a season up to this day
(``MM-DD``) counts for the year before."""

_Sums = dict[IndicatorId, tuple[float, float]]


@dataclass(frozen=True, slots=True)
class Timed:
    """A planned event at the time it is stamped with (plan time plus the device's skew)."""

    ts: datetime
    event: PlannedEvent


def _local_day(moment: datetime) -> date:
    return (moment + LOCAL).date()


def days_reported(plan: Plan, devices: Iterable[DevicePlan]) -> int:
    """Local (Datong) days of the year on which any of ``devices`` sent telemetry."""
    days = {
        _local_day(tick + device.skew)
        for device in devices for tick in plan.ticks()
        if device.sends_telemetry(tick) and plan.start <= tick + device.skew < plan.end
    }
    return len(days)


def longest_open_fault_days(events: Iterable[Timed], end: datetime) -> float:
    """Longest stretch (days) one facility's fault stayed open in the year: from its first
    fault to the next ok of the same facility (a repeated fault does not restart it), or to
    ``end`` when never repaired."""
    open_since: dict[str, datetime] = {}
    longest = timedelta(0)
    for timed in sorted(events, key=lambda t: t.ts):
        kind, facility = timed.event.type, str(timed.event.fields.get("facility"))
        if kind is EventType.FACILITY_FAULT:
            open_since.setdefault(facility, timed.ts)
        elif kind is EventType.FACILITY_OK and facility in open_since:
            longest = max(longest, timed.ts - open_since.pop(facility))
    for since in open_since.values():
        longest = max(longest, end - since)
    return longest / timedelta(days=1)


def film_season(timed: Timed) -> int:
    """The year whose film a ``film_recovered`` event recovers (docs/indicators.md §4)."""
    season = timed.event.fields.get("season")
    if season:
        return int(season)
    day = _local_day(timed.ts)
    return day.year - 1 if f"{day:%m-%d}" <= FILM_RECOVERY_UNTIL else day.year


def _farm_sums(plan: Plan, devices: list[DevicePlan], events: list[Timed]
               ) -> tuple[bool, bool, bool]:
    """(equipped, has a ledger, reported anything) for one large-scale manure farm."""
    days = days_reported(plan, devices)
    fault = longest_open_fault_days(
        [t for t in events if t.event.type in (EventType.FACILITY_FAULT, EventType.FACILITY_OK)],
        plan.end)
    ledger = any(t.event.type in (EventType.MANURE_TREATED, EventType.MANURE_UTILIZED)
                 for t in events)
    facility_events = any(t.event.type in (EventType.FACILITY_FAULT, EventType.FACILITY_OK)
                          for t in events)
    equipped = days >= FACILITY_MIN_DAYS and fault <= FAULT_GRACE_DAYS
    return equipped, ledger, days > 0 or ledger or facility_events


def _county_sums(plan: Plan, county: str, straw: StrawParams) -> tuple[_Sums, bool]:
    """One county's numerators and denominators, and whether any of its farms reported."""
    farms = equipped = ledgers = 0
    reported = False
    film_applied, film_recovered, collectable, straw_used = [], [], [], []
    by_site: dict[str, list[DevicePlan]] = {}
    for device in plan.devices:
        if device.site.county == county:
            by_site.setdefault(device.site.site_id, []).append(device)
    for devices in by_site.values():
        site = devices[0].site
        events = [Timed(e.ts + d.skew, e) for d in devices for e in d.events
                  if plan.start <= e.ts + d.skew < plan.end]
        if site.site_type is SiteType.MANURE and site.large_scale:
            is_equipped, has_ledger, has_reported = _farm_sums(plan, devices, events)
            farms += 1
            equipped += is_equipped
            ledgers += has_ledger
            reported |= has_reported
        for timed in events:
            fields = timed.event.fields
            if timed.event.type is EventType.FILM_APPLIED:
                film_applied.append(float(fields["mass_t"]))
            elif timed.event.type is EventType.FILM_RECOVERED and film_season(timed) == plan.year:
                film_recovered.append(float(fields["mass_t"]))
            elif timed.event.type is EventType.HARVEST:
                factor = straw.of(county, str(fields["crop"])).factor
                collectable.append(float(fields["grain_t"]) * factor)
            elif timed.event.type is EventType.STRAW_UTILIZED:
                straw_used.append(float(fields["mass_t"]))
    return {
        IndicatorId.MANURE_FACILITY_RATE: (equipped, farms),
        IndicatorId.MANURE_LEDGER_COVERAGE: (ledgers, farms),
        IndicatorId.FILM_RECOVERY_RATE: (math.fsum(film_recovered), math.fsum(film_applied)),
        IndicatorId.STRAW_UTILIZATION_RATE: (math.fsum(straw_used), math.fsum(collectable)),
    }, reported


def indicators_from_plan(
    plan: Plan, straw_ratios: dict[str, float] | None = None,
) -> list[IndicatorValue]:
    """All four indicators for the city, then for each county listed (Datong's ten
    divisions, then any other county of the plan), as of the end of the plan's year.

    The city sums the counties' numerators and denominators; a county above 100 % counts
    at most its denominator there. A zero denominator, or (for the two manure indicators)
    no large-scale farm that reported anything, gives ``value`` and ``met`` null."""
    straw = load_straw(ratios=straw_ratios)
    counties = load_divisions().listed([county.name for county in plan.scenario.counties])
    sums: dict[str, _Sums] = {}
    anything_reported = False
    for county in counties:
        sums[county], reported = _county_sums(plan, county, straw)
        anything_reported |= reported
    manure = (IndicatorId.MANURE_FACILITY_RATE, IndicatorId.MANURE_LEDGER_COVERAGE)
    city: list[IndicatorValue] = []
    by_county: list[IndicatorValue] = []
    for indicator in IndicatorId:
        capped = math.fsum(min(sums[c][indicator]) if sums[c][indicator][1] > 0
                           else sums[c][indicator][0] for c in counties)
        denominator = math.fsum(sums[c][indicator][1] for c in counties)
        city.append(IndicatorValue.of(indicator, "city", None, plan.year, capped, denominator))
        by_county += [IndicatorValue.of(indicator, "county", c, plan.year, *sums[c][indicator])
                      for c in counties]
    values = city + sorted(by_county, key=lambda v: counties.index(v.county or ""))
    for value in values:
        if value.indicator in manure and not anything_reported:
            value.value = value.met = None
    return values


def expected_indicators(
    scenario: Scenario, year: int, straw_ratios: dict[str, float] | None = None,
) -> list[IndicatorValue]:
    """What ingest should report for ``year`` after a full backfill or live run."""
    return indicators_from_plan(build_plan(scenario, year), straw_ratios)


def by_key(values: Iterable[IndicatorValue]) -> dict[tuple[str, str | None], IndicatorValue]:
    """Index results by (indicator id, county or None for the city)."""
    return {(value.indicator.value, value.county): value for value in values}
