"""Simulated drivers: deterministic, inside the catalog's ranges, counters never decreasing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.drivers.base import Driver
from edge.drivers.simulated import SimulatedDriver, default_schedule
from farm_contract.catalog import CATALOG, SiteType, metrics_for
from farm_contract.payloads import EventRecord

YEAR_START = datetime(2025, 1, 1, tzinfo=UTC)


def year_of_readings(driver: SimulatedDriver, step_h: float) -> list[dict[str, float | bool]]:
    out = []
    at = YEAR_START
    while at.year == 2025:
        out.append(driver.read(at))
        at += timedelta(hours=step_h)
    return out


@pytest.mark.parametrize("site_type", list(SiteType))
@pytest.mark.parametrize("seed", [1, 42])
def test_a_simulated_year_stays_inside_the_catalog(site_type: SiteType, seed: int) -> None:
    driver = SimulatedDriver(site_type, seed)
    assert isinstance(driver, Driver)
    readings = year_of_readings(driver, step_h=5)
    expected = {metric.name for metric in metrics_for(site_type)}
    for reading in readings:
        assert set(reading) == expected
        for name, value in reading.items():
            assert CATALOG[name].check(value) is None, (name, value)


def test_drip_site_behaves_like_a_field() -> None:
    readings = year_of_readings(SimulatedDriver(SiteType.DRIP, 3, area_mu=400), step_h=1)
    flows = [r["flow_lpm"] for r in readings]
    assert any(r["valve_open"] for r in readings), "no irrigation run all year"
    assert all((r["flow_lpm"] > 0) == r["valve_open"] for r in readings)
    assert max(flows) <= 400 * 5.5 * 1.1 * 1.03
    winter = [r["soil_temp_c"] for r in readings[: 24 * 31]]
    summer = [r["soil_temp_c"] for r in readings[24 * 181: 24 * 212]]
    assert max(winter) < min(summer)
    assert any(r["rain_mm"] > 0 for r in readings)


def test_manure_lagoon_fills_and_is_pumped_out() -> None:
    readings = year_of_readings(SimulatedDriver(SiteType.MANURE, 5), step_h=1)
    levels = [r["lagoon_level_pct"] for r in readings]
    assert min(levels) < 20 and max(levels) > 80
    pumping = [r for r in readings if r["pump_on"]]
    assert pumping and all(r["h2s_ppm"] > 10 for r in pumping)


def test_cumulative_counters_never_decrease_over_a_year() -> None:
    previous: dict[str, float | bool] = {}
    for reading in year_of_readings(SimulatedDriver(SiteType.DRIP, 9), step_h=1):
        for name in ("volume_m3", "fertilizer_l"):
            if name in previous:
                assert reading[name] >= previous[name]
        previous = reading


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    first=st.datetimes(min_value=datetime(2019, 6, 1), max_value=datetime(2030, 1, 1),
                       timezones=st.just(UTC)),
    gap=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400)),
)
def test_counters_depend_on_time_not_on_polling(
    seed: int, first: datetime, gap: timedelta
) -> None:
    """However a driver is polled (backwards, restarted), later instants read higher."""
    later = SimulatedDriver(SiteType.DRIP, seed).read(first + gap)
    fresh = SimulatedDriver(SiteType.DRIP, seed)
    fresh.read(first + gap + timedelta(days=30))  # polled out of order first
    earlier = fresh.read(first)
    assert earlier["volume_m3"] <= later["volume_m3"]
    assert earlier["fertilizer_l"] <= later["fertilizer_l"]


def test_same_seed_same_readings_other_seed_other_readings() -> None:
    at = datetime(2025, 7, 3, 1, 30, tzinfo=UTC)
    assert SimulatedDriver("drip", 11).read(at) == SimulatedDriver("drip", 11).read(at)
    assert SimulatedDriver("drip", 11).read(at) != SimulatedDriver("drip", 12).read(at)


def test_metric_subset_and_unknown_metric() -> None:
    driver = SimulatedDriver("drip", 1, metrics=["soil_moisture_vwc", "battery_v"])
    assert set(driver.read(YEAR_START)) == {"soil_moisture_vwc", "battery_v"}
    with pytest.raises(ValueError, match="lagoon_level_pct"):
        SimulatedDriver("drip", 1, metrics=["lagoon_level_pct"])


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        SimulatedDriver("straw", 1).read(datetime(2025, 1, 1))


def test_scheduled_events_come_once_each_between_calls() -> None:
    schedule = [
        {"ts": YEAR_START + timedelta(days=d), "type": "manure_treated", "mass_t": 1.0}
        for d in (1, 2, 3)
    ]
    driver = SimulatedDriver("manure", 1, schedule=schedule)
    assert [e["ts"].day for e in driver.events(YEAR_START + timedelta(days=2))] == [2, 3]
    assert driver.events(YEAR_START + timedelta(days=2)) == []
    assert [e["ts"].day for e in driver.events(YEAR_START + timedelta(days=9))] == [4]


@pytest.mark.parametrize("site_type", list(SiteType))
def test_own_schedule_is_valid_and_does_not_replay_the_past(site_type: SiteType) -> None:
    events = default_schedule(site_type, 4, 2025)
    for seq, event in enumerate(events):
        record = EventRecord(seq=seq, **event)
        assert record.site_type is site_type
        assert record.ts.year == 2025
    driver = SimulatedDriver(site_type, 4)
    assert driver.events(datetime(2025, 12, 1, tzinfo=UTC)) == []  # first call: from now on
    later = driver.events(datetime(2026, 12, 31, tzinfo=UTC))
    assert later and all(e["ts"] > datetime(2025, 12, 1, tzinfo=UTC) for e in later)
