"""The indicators ingest must compute from what the fleet sends (contract §8).

Computed in plain Python from the same plan the fleet publishes, evaluated as
of the end of the year, so an end-to-end test can compare them with what comes
out of InfluxDB. Duplicates and bad payloads are ignored here, as ingest must.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from farm_contract.catalog import SiteType
from farm_contract.indicators import DEFAULT_STRAW_RATIOS, IndicatorId, IndicatorValue
from farm_contract.payloads import EventType
from simulators.plan import DevicePlan, Plan, PlannedEvent, build_plan
from simulators.scenario import Scenario

STALE_HOURS = 24.0
"""``FARM_STALE_HOURS`` default: a farm is current if it reported within this long."""


def _last_telemetry(plan: Plan, device: DevicePlan) -> datetime | None:
    sending = [tick for tick in plan.ticks() if device.sends_telemetry(tick)]
    return sending[-1] + device.skew if sending else None


def _open_fault(events: Iterable[PlannedEvent]) -> bool:
    """True when some facility's latest fault is not followed by an ok."""
    state: dict[str, bool] = {}
    for event in sorted(events, key=lambda e: e.ts):
        if event.type is EventType.FACILITY_FAULT:
            state[str(event.fields["facility"])] = True
        elif event.type is EventType.FACILITY_OK:
            state[str(event.fields["facility"])] = False
    return any(state.values())


def _sums(plan: Plan, counties: set[str], ratios: dict[str, float], stale_hours: float
          ) -> dict[IndicatorId, tuple[float, float]]:
    as_of = plan.end
    large = equipped = ledger = 0
    film_applied = film_recovered = straw_produced = straw_used = 0.0
    by_site: dict[str, list[DevicePlan]] = {}
    for device in plan.devices:
        if device.site.county in counties:
            by_site.setdefault(device.site.site_id, []).append(device)
    for devices in by_site.values():
        site = devices[0].site
        events = [e for d in devices for e in d.events if plan.start <= e.ts + d.skew < plan.end]
        if site.site_type is SiteType.MANURE and site.large_scale:
            large += 1
            fresh = any(
                (last := _last_telemetry(plan, d)) is not None
                and as_of - timedelta(hours=stale_hours) <= last <= as_of
                for d in devices
            )
            equipped += fresh and not _open_fault(events)
            ledger += any(e.type in (EventType.MANURE_TREATED, EventType.MANURE_UTILIZED)
                          for e in events)
        for event in events:
            if event.type is EventType.FILM_APPLIED:
                film_applied += float(event.fields["mass_t"])
            elif event.type is EventType.FILM_RECOVERED:
                film_recovered += float(event.fields["mass_t"])
            elif event.type is EventType.HARVEST:
                straw_produced += float(event.fields["grain_t"]) * ratios[event.fields["crop"]]
            elif event.type is EventType.STRAW_UTILIZED:
                straw_used += float(event.fields["mass_t"])
    return {
        IndicatorId.MANURE_FACILITY_RATE: (equipped, large),
        IndicatorId.MANURE_LEDGER_COVERAGE: (ledger, large),
        IndicatorId.FILM_RECOVERY_RATE: (film_recovered, film_applied),
        IndicatorId.STRAW_UTILIZATION_RATE: (straw_used, straw_produced),
    }


def indicators_from_plan(
    plan: Plan, straw_ratios: dict[str, float] | None = None, stale_hours: float = STALE_HOURS,
) -> list[IndicatorValue]:
    """All four indicators for every county of the plan, then for the city."""
    ratios = {**DEFAULT_STRAW_RATIOS, **(straw_ratios or {})}
    counties = [county.name for county in plan.scenario.counties]
    values: list[IndicatorValue] = []
    scopes: list[tuple[str | None, set[str]]] = [(name, {name}) for name in counties]
    scopes.append((None, set(counties)))
    for county, members in scopes:
        for indicator, (numerator, denominator) in _sums(
            plan, members, ratios, stale_hours
        ).items():
            values.append(IndicatorValue.of(
                indicator, "county" if county else "city", county, plan.year,
                numerator, denominator,
            ))
    return values


def expected_indicators(
    scenario: Scenario, year: int, straw_ratios: dict[str, float] | None = None,
) -> list[IndicatorValue]:
    """What ingest should report for ``year`` after a full backfill or live run."""
    return indicators_from_plan(build_plan(scenario, year), straw_ratios)


def by_key(values: Iterable[IndicatorValue]) -> dict[tuple[str, str | None], IndicatorValue]:
    """Index results by (indicator id, county or None for the city)."""
    return {(value.indicator.value, value.county): value for value in values}
