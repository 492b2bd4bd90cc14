"""Scenarios, registry generation and the year plan: deterministic and as declared."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.drivers.simulated import LOCAL
from farm_contract.catalog import SiteType
from farm_contract.indicator_params import load_divisions
from farm_contract.indicators import IndicatorId
from farm_contract.payloads import EventRecord, EventType
from farm_contract.registry import Registry
from farm_contract.topics import is_valid_id
from simulators.expected import (
    FACILITY_MIN_DAYS,
    FAULT_GRACE_DAYS,
    Timed,
    by_key,
    days_reported,
    expected_indicators,
    film_season,
    longest_open_fault_days,
)
from simulators.fleet import build_registry
from simulators.plan import DevicePlan, Outcome, PlannedEvent, build_plan
from simulators.scenario import COUNTIES, ScenarioError, load_scenario, scenario_names


def test_shipped_scenarios_load() -> None:
    assert {"demo", "test-small"} <= set(scenario_names())
    demo = load_scenario("demo")
    assert sum(c.drip + c.manure_large + c.manure_small + c.straw for c in demo.counties) == 36
    assert len(demo.counties) == 5
    small = load_scenario(Path(__file__).parents[1] / "simulators/scenarios/test-small.toml")
    assert small.name == "test-small"


def test_scenario_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no scenario 'nope'"):
        load_scenario("nope")
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\nseed = 1\nyear = 2025\n[[counties]]\nname = "北京"\n',
                    encoding="utf-8")
    with pytest.raises(ScenarioError, match="北京"):
        load_scenario(path)
    path.write_text('name = "x"\nseed = 1\nyear = 2025\n[[counties]]\nname = "平城区"\n'
                    "manure_large = 1\nnot_equipped_fault = 2\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match="exceeds manure_large"):
        load_scenario(path)


def csv_text(registry: Registry, folder: Path) -> tuple[str, str]:
    registry.write_dir(folder)
    return (folder / "sites.csv").read_text(), (folder / "devices.csv").read_text()


def test_registry_is_deterministic_and_valid(tmp_path: Path) -> None:
    scenario = load_scenario("demo")
    first = csv_text(build_registry(scenario), tmp_path / "a")
    assert first == csv_text(build_registry(scenario), tmp_path / "b")
    reseeded = scenario.model_copy(update={"seed": scenario.seed + 1})
    assert first != csv_text(build_registry(reseeded), tmp_path / "c")

    registry = Registry.from_dir(tmp_path / "a")  # what operators would import
    assert len(registry.sites) == 36
    assert set(registry.counties) == {c.name for c in scenario.counties}
    for site in registry.sites.values():
        assert is_valid_id(site.site_id)
        geo = COUNTIES[site.county]
        assert abs(site.lat - geo.lat) < 0.2 and abs(site.lon - geo.lon) < 0.2
        assert 39.0 < site.lat < 41.0 and 112.0 < site.lon < 115.0
        assert any("\u4e00" <= ch <= "\u9fff" for ch in site.name)
        if site.site_type is SiteType.DRIP:
            assert site.area_mu and site.water_quota_m3_per_mu
        if site.site_type is SiteType.STRAW:
            assert site.area_mu
    per_site = {site_id: 0 for site_id in registry.sites}
    for device in registry.devices.values():
        assert device.device_id.startswith(f"d-{device.site_id}-")
        per_site[device.site_id] += 1
    assert set(per_site.values()) <= {1, 2}
    large = registry.large_scale_manure_sites()
    assert len(large) == sum(c.manure_large for c in scenario.counties)


def test_plan_is_deterministic() -> None:
    scenario = load_scenario("test-small")
    one, two = build_plan(scenario), build_plan(scenario)
    assert [(d.device.device_id, d.events, d.injections, d.silence, d.skew, d.silent_from)
            for d in one.devices] == [
        (d.device.device_id, d.events, d.injections, d.silence, d.skew, d.silent_from)
        for d in two.devices]


def test_plan_events_are_valid_and_well_inside_the_year() -> None:
    plan = build_plan(load_scenario("demo"))
    margin = timedelta(days=2)
    seqs = 0
    for device, planned in plan.events():
        record = EventRecord(seq=seqs, ts=planned.ts, type=planned.type, **planned.fields)
        seqs += 1
        assert record.site_type is device.site.site_type
        assert plan.start + margin < planned.ts < plan.end - margin
        assert device.unit_no == 1  # events come from the first device of a site
    assert seqs > 500
    for device in plan.devices:
        assert [e.ts for e in device.events] == sorted(e.ts for e in device.events)


def test_masses_do_not_depend_on_the_year() -> None:
    scenario = load_scenario("test-small")
    def masses(year: int) -> list[object]:
        return [(e.type, e.fields) for _, e in build_plan(scenario, year).events()]
    assert masses(2025) == masses(2026)
    later = build_plan(scenario, 2026)
    assert all((e.ts + LOCAL).year == 2026 for _, e in later.events())


def test_film_follows_the_seasons() -> None:
    plan = build_plan(load_scenario("test-small"))
    for _, event in plan.events():
        month = (event.ts + LOCAL).month
        if event.type is EventType.FILM_APPLIED:
            assert month in (4, 5)
        elif event.type is EventType.FILM_RECOVERED:
            assert month in (9, 10, 11)
        elif event.type is EventType.HARVEST:
            assert month in (9, 10)
        elif event.type is EventType.STRAW_UTILIZED:
            assert month in (9, 10, 11, 12)


@pytest.mark.parametrize("name", ["test-small", "demo"])
def test_expected_indicators_match_the_declared_outcomes(name: str) -> None:
    scenario = load_scenario(name)
    expected = by_key(expected_indicators(scenario, scenario.year))
    declared = scenario.declared()
    # the city and every county of the divisions file (Datong's ten), with sites or not
    assert len(expected) == 4 * (1 + len(load_divisions().counties)) == 44
    for indicator in IndicatorId:
        for county in set(load_divisions().counties) - {c.name for c in scenario.counties}:
            empty = expected[indicator.value, county]
            assert (empty.numerator, empty.denominator, empty.value, empty.met) == (
                0, 0, None, None)
    for (indicator, county), fraction in declared.items():
        value = expected[indicator.value, county]
        assert value.year == scenario.year
        assert value.scope == ("county" if county else "city")
        if fraction is None:
            continue
        assert value.value == pytest.approx(float(fraction), rel=1e-12), (indicator, county)
    # manure indicators are counts: numerator and denominator exactly as declared
    large = sum(c.manure_large for c in scenario.counties)
    equipped = large - sum(c.not_equipped_fault + c.not_equipped_silent
                           for c in scenario.counties)
    city = expected[IndicatorId.MANURE_FACILITY_RATE.value, None]
    assert (city.numerator, city.denominator) == (equipped, large)


def test_test_small_declares_what_the_lead_relies_on() -> None:
    scenario = load_scenario("test-small")
    declared = scenario.declared()
    expected = by_key(expected_indicators(scenario, scenario.year))
    assert declared[IndicatorId.FILM_RECOVERY_RATE, None] == pytest.approx(0.8)
    assert expected["film_recovery_rate", None].value == pytest.approx(0.8, rel=1e-12)
    assert expected["manure_facility_rate", None].value == pytest.approx(5 / 7, rel=1e-12)
    assert expected["manure_ledger_coverage", None].value == pytest.approx(6 / 7, rel=1e-12)
    assert not expected["manure_facility_rate", None].met


@pytest.mark.parametrize("name", ["test-small", "demo"])
def test_outcomes_come_from_the_events_not_from_labels(name: str) -> None:
    """The official definition (docs/indicators.md §2): a silent farm reported on fewer
    than 30 days of the year; an open-fault farm's fault has no ok after it and stayed open
    more than 30 days; an equipped farm has both right."""
    plan = build_plan(load_scenario(name))
    devices: dict[str, list[DevicePlan]] = {}
    for device in plan.devices:
        devices.setdefault(device.site.site_id, []).append(device)
    seen = set()
    for spec in plan.sites:
        if spec.outcome is None:
            continue
        seen.add(spec.outcome)
        own = devices[spec.site.site_id]
        events = [Timed(e.ts + d.skew, e) for d in own for e in d.events]
        days = days_reported(plan, own)
        fault = longest_open_fault_days(events, plan.end)
        if spec.outcome is Outcome.SILENT:
            assert 0 < days < FACILITY_MIN_DAYS and fault <= FAULT_GRACE_DAYS
            assert all(d.silent_from is not None and d.silent_from - plan.start
                       < timedelta(days=FACILITY_MIN_DAYS) for d in own)
        elif spec.outcome is Outcome.OPEN_FAULT:
            assert days >= FACILITY_MIN_DAYS and fault > FAULT_GRACE_DAYS
            first = own[0]
            last_fault = [e for e in first.events if e.type is EventType.FACILITY_FAULT][-1]
            closing = [e for e in first.events if e.type is EventType.FACILITY_OK
                       and e.fields == last_fault.fields and e.ts > last_fault.ts]
            assert not closing
        else:
            assert days >= FACILITY_MIN_DAYS and fault <= FAULT_GRACE_DAYS
    assert seen == set(Outcome)


def test_a_fault_counts_by_how_long_it_stayed_open() -> None:
    """Per facility, from its first fault to its ok; a repeat does not restart the clock;
    an ok of another facility closes nothing; one never repaired runs to the end."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    def at(day: float, kind: EventType, facility: str) -> Timed:
        return Timed(start + timedelta(days=day), PlannedEvent(
            start + timedelta(days=day), kind, {"facility": facility}))
    fault, ok = EventType.FACILITY_FAULT, EventType.FACILITY_OK
    end = start + timedelta(days=365)
    assert longest_open_fault_days([], end) == 0
    assert longest_open_fault_days(
        [at(10, fault, "storage"), at(25, fault, "storage"), at(41, ok, "storage")], end) == 31
    assert longest_open_fault_days(
        [at(10, fault, "storage"), at(20, ok, "separator"), at(30, ok, "storage")], end) == 20
    assert longest_open_fault_days([at(340, fault, "storage")], end) == 25
    assert longest_open_fault_days(
        [at(100, fault, "storage"), at(101, ok, "storage"), at(300, fault, "pump")], end) == 65


def test_film_recovered_counts_for_its_season() -> None:
    """A recovery up to 31 May (local) without a season is last year's film (§4)."""
    def recovered(ts: datetime, **fields: object) -> int:
        return film_season(Timed(ts, PlannedEvent(ts, EventType.FILM_RECOVERED,
                                                  {"mass_t": 1.0, **fields})))
    may_31_late = datetime(2025, 5, 31, 15, 59, tzinfo=UTC)  # 23:59 in Datong
    assert recovered(may_31_late) == 2024
    assert recovered(may_31_late + timedelta(minutes=1)) == 2025
    assert recovered(datetime(2025, 10, 1, tzinfo=UTC)) == 2025
    assert recovered(datetime(2025, 3, 1, tzinfo=UTC), season=2025) == 2025


def test_other_straw_ratios_change_the_straw_rate_only() -> None:
    scenario = load_scenario("test-small")
    default = by_key(expected_indicators(scenario, 2025))
    custom = by_key(expected_indicators(scenario, 2025, {"corn": 2.0, "potato": 0.4}))
    for key, value in default.items():
        if key[0] == "straw_utilization_rate":
            assert custom[key].denominator != value.denominator or value.denominator == 0
        else:
            assert custom[key] == value


def test_fault_injection_counts_are_planned_exactly() -> None:
    scenario = load_scenario("test-small")
    plan = build_plan(scenario)
    injections = [i for d in plan.devices for i in d.injections]
    faults = scenario.faults
    assert len(injections) == faults.bad_json + faults.out_of_range + faults.duplicate_telemetry
    assert sum(e.duplicate for _, e in plan.events()) == faults.duplicate_events
    assert sum(bool(d.skew) for d in plan.devices) == faults.skewed_devices
    assert sum(len(d.silence) for d in plan.devices) == faults.silence_windows
    assert all(d.silent_from is None for d in plan.devices if d.injections)
