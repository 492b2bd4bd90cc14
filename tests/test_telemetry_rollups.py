"""The telemetry roll-up maintainer on a small data set in a real InfluxDB.

The expected numbers are computed here, in Python, from the readings the test
writes — not by InfluxDB — so a roll-up that drifts from its raw readings fails:
min / mean / max per device-hour and device-day, the daily counter use per device
and site, the devices' last-seen state. Then late readings for a day already rolled
up: unmarked they stay invisible (the maintainer does not re-read closed days),
marked by :class:`LateTelemetryMarker` they rebuild that day. And last-seen never
moves backwards.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.servers import Influxd
from farm_contract import schema
from ingest_service.influxql import InfluxQL
from ingest_service.outputs.influx import WriteError, Writer, make_writer
from ingest_service.settings import Settings
from ingest_service.telemetry.late import LateTelemetryMarker, all_fresh, late_days
from ingest_service.telemetry.rollups import (
    DAILY,
    HOURLY,
    LAST_SEEN,
    SITE_USE,
    OrderedWrites,
    TelemetryRollups,
    TelemetryRollupSettings,
    day_groups,
)

COUNTY = "test-county"
DEVICES = (("s1", "d1"), ("s1", "d2"), ("s2", "d3"))
GAUGES = ("soil_moisture_vwc", "battery_v")


@dataclass(frozen=True)
class Reading:
    site: str
    device: str
    time_ns: int
    soil: float
    battery: float
    volume: float

    def line(self) -> str:
        return (f"{schema.TELEMETRY},site_id={self.site},device_id={self.device},"
                f"site_type=drip,county={COUNTY} soil_moisture_vwc={self.soil!r},"
                f"battery_v={self.battery!r},volume_m3={self.volume!r},seq=1i {self.time_ns}")

    def value(self, metric: str) -> float:
        return self.soil if metric == "soil_moisture_vwc" else self.battery


def readings(days: list[date], tz: ZoneInfo) -> list[Reading]:
    """Every 15 minutes of ``days`` for each device; a counter that only rises."""
    rng = random.Random(15)
    out = []
    for site, device in DEVICES:
        volume = rng.uniform(0, 100)
        for day in days:
            start = datetime(day.year, day.month, day.day, tzinfo=tz)
            for k in range(96):
                moment = start + timedelta(minutes=7.5 + 15 * k)
                volume = round(volume + rng.uniform(0, 2), 3)
                out.append(Reading(site, device, int(moment.timestamp()) * 10**9,
                                   round(rng.uniform(0.1, 0.4), 4),
                                   round(rng.uniform(11.5, 13.0), 3), volume))
    return out


def local(time_ns: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(time_ns / 1e9, UTC).astimezone(tz)


def expected_gauges(data: list[Reading], bucket: Any) -> dict[tuple[str, int], dict[str, float]]:
    """(device, bucket start ms) → ``<m>_min/_mean/_max/_n``, from the readings."""
    groups: dict[tuple[str, int], list[Reading]] = defaultdict(list)
    for r in data:
        groups[(r.device, bucket(r.time_ns))].append(r)
    out = {}
    for key, group in groups.items():
        fields: dict[str, float] = {}
        for m in GAUGES:
            values = [r.value(m) for r in group]
            fields |= {f"{m}_min": min(values), f"{m}_mean": sum(values) / len(values),
                       f"{m}_max": max(values), f"{m}_n": len(values)}
        out[key] = fields
    return out


def expected_use(data: list[Reading], tz: ZoneInfo) -> dict[tuple[str, date], float]:
    """(device, local day) → the counter's rise that day, from the previous day's last value."""
    by_device: dict[str, list[Reading]] = defaultdict(list)
    for r in sorted(data, key=lambda r: r.time_ns):
        by_device[r.device].append(r)
    out: dict[tuple[str, date], float] = {}
    for device, series in by_device.items():
        previous: float | None = None
        for day in sorted({local(r.time_ns, tz).date() for r in series}):
            values = [r.volume for r in series if local(r.time_ns, tz).date() == day]
            out[(device, day)] = values[-1] - (values[0] if previous is None else previous)
            previous = values[-1]
    return out


class Store:
    """Reads the roll-ups back as (device, time ms) → fields."""

    def __init__(self, influxd: Influxd) -> None:
        self.influxd = influxd

    def rows(self, measurement: str, by: str = "device_id") -> dict[tuple[str, int], Any]:
        response = httpx.get(f"{self.influxd.url}/query", timeout=30, params={
            "db": "farm", "epoch": "ms",
            "q": f'SELECT * FROM "{measurement}" GROUP BY "{by}"'})
        response.raise_for_status()
        result: Any = response.json()
        out = {}
        for series in result["results"][0].get("series", []):
            columns = series["columns"]
            for values in series["values"]:
                row = dict(zip(columns, values, strict=True))
                out[(series["tags"][by], int(row["time"]))] = row
        return out


def assert_gauges(stored: dict[tuple[str, int], Any],
                  expected: dict[tuple[str, int], dict[str, float]]) -> None:
    assert set(stored) == set(expected)
    for key, fields in expected.items():
        for name, value in fields.items():
            assert stored[key][name] == pytest.approx(value, rel=1e-9), (key, name)


@pytest.fixture
def rig(influxd: Influxd) -> Any:
    settings = Settings(influx_url=influxd.url, influx_api="v1")
    query, inner = InfluxQL(settings), make_writer(settings)
    rollup_settings = TelemetryRollupSettings(days_per_cycle=100, budget_s=1e9)
    marker = LateTelemetryMarker(inner, settings.tz, "test", rollup_settings.late_after_s)
    rollups = TelemetryRollups(query, marker, settings.tz, rollup_settings)
    yield settings.tz, inner, marker, rollups
    query.close()
    inner.close()


def write(writer: Writer, data: list[Reading]) -> None:
    writer.write("\n".join(r.line() for r in data).encode())


@pytest.mark.integration
@pytest.mark.slow
def test_rollups_equal_raw_late_days_rebuild_last_seen_only_rises(influxd: Influxd,
                                                                   rig: Any) -> None:
    tz, inner, marker, rollups = rig
    now = datetime.now(UTC)
    today = now.astimezone(tz).date()
    days = [today - timedelta(days=4), today - timedelta(days=3)]
    data = readings(days, tz)
    write(marker, data)  # back-filled through ingest: marked late
    store = Store(influxd)

    def day_ms(time_ns: int) -> int:
        d = local(time_ns, tz).date()
        return int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()) * 1000

    def check(data: list[Reading]) -> None:
        assert_gauges(store.rows(HOURLY), expected_gauges(data, lambda ns: ns // 3_600_000_000_000
                                                          * 3_600_000))
        daily = store.rows(DAILY)
        assert_gauges(daily, expected_gauges(data, day_ms))
        use = expected_use(data, tz)
        for (device, day), used in use.items():
            start_ms = int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()) * 1000
            assert daily[(device, start_ms)]["volume_m3_used"] == pytest.approx(used), (device, day)
        sites = store.rows(SITE_USE, by="site_id")
        for site in {s for s, _ in DEVICES}:
            for day in days:
                start_ms = int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()) * 1000
                want = sum(used for (device, d), used in use.items()
                           if d == day and (site, device) in DEVICES)
                assert sites[(site, start_ms)]["water_m3"] == pytest.approx(want), (site, day)

    def last_seen() -> dict[str, int]:
        seen: dict[str, int] = {}
        for (device, _), row in store.rows(LAST_SEEN).items():
            seen[device] = max(seen.get(device, 0), int(row["seen_ms"]))
        return seen

    cycle = rollups.maintain_once(now)
    assert set(days) <= set(cycle.days_built) and cycle.pending_days == 0, cycle
    check(data)
    latest = {d: max(r.time_ns for r in data if r.device == d) // 1_000_000 for _, d in DEVICES}
    assert last_seen() == latest

    # A late reading that bypasses the marker: the closed day is not re-read. (Its
    # counter value fits between its neighbours', so the day's use stays defined.)
    noon_ns = int(datetime(days[1].year, days[1].month, days[1].day, 12, 1,
                           tzinfo=tz).timestamp()) * 10**9
    volume = max(r.volume for r in data if r.device == "d1" and r.time_ns < noon_ns)
    unmarked = Reading("s1", "d1", noon_ns, 0.01, 99.0, volume)
    write(inner, [unmarked])
    cycle = rollups.maintain_once(now + timedelta(minutes=1))
    assert days[1] not in cycle.days_built
    check(data)

    # Through the marker (as ingest writes): the day is rebuilt from raw, with both.
    marked = Reading("s1", "d1", noon_ns + 60 * 10**9, 0.02, 98.0, volume)
    write(marker, [marked])
    assert marker.marks >= 1
    cycle = rollups.maintain_once(now + timedelta(minutes=2))
    assert cycle.days_built == [days[1]], cycle
    data += [unmarked, marked]
    check(data)

    # Last seen: older readings never pull it back; a fresh one moves it on.
    assert last_seen() == latest
    rollups.update_last_seen(datetime.combine(days[0], datetime.min.time(), tz),
                             datetime.combine(today, datetime.min.time(), tz))
    assert last_seen() == latest
    fresh = Reading("s2", "d3", int(now.timestamp()) * 10**9, 0.3, 12.5, 500.0)
    write(marker, [fresh])
    rollups.maintain_once(now + timedelta(minutes=3))
    assert last_seen() == latest | {"d3": fresh.time_ns // 1_000_000}


WIDE = st.integers(min_value=-(10**12), max_value=4 * 10**18)
"""Any timestamp, short and negative ones included."""
NS = st.integers(min_value=10**18, max_value=10**19 - 1)
"""Timestamps of 2001–2286, the width the fast path compares as text."""


def body_of(stamps: list[int]) -> bytes:
    return "\n".join(f'telemetry,device_id=d x=1.0,s="a {s}" {s}' for s in stamps).encode()


@given(st.lists(NS, min_size=1, max_size=20), NS)
def test_all_fresh_is_exact_for_current_timestamps(stamps: list[int], before_ns: int) -> None:
    """The marker's fast path lets a batch through exactly when no line is late."""
    assert all_fresh(body_of(stamps), before_ns) == all(s >= before_ns for s in stamps)


@given(st.lists(st.one_of(WIDE, NS), min_size=1, max_size=20), st.one_of(WIDE, NS))
def test_all_fresh_never_hides_a_late_line(stamps: list[int], before_ns: int) -> None:
    body = body_of(stamps)
    if all_fresh(body, before_ns):
        assert not late_days(body, before_ns, ZoneInfo("Asia/Shanghai"))
        assert min(stamps) >= before_ns


DAYS = st.lists(st.dates(min_value=date(2024, 1, 1), max_value=date(2026, 12, 31)),
                unique=True, max_size=60)


@given(DAYS, st.integers(min_value=0, max_value=500), st.integers(min_value=1, max_value=2000))
def test_day_groups_are_runs_in_one_month_within_the_point_limit(
    days: list[date], per_day: int, limit: int,
) -> None:
    todo = sorted(days, reverse=True)
    counts = {d: per_day + d.day for d in todo}
    groups = list(day_groups(todo, counts, limit))
    assert sorted(d for g in groups for d in g) == sorted(todo)  # each day exactly once
    for group in groups:
        assert all(b - a == timedelta(days=1) for a, b in pairwise(group))
        assert {(d.year, d.month) for d in group} == {(group[0].year, group[0].month)}
        assert len(group) == 1 or sum(counts[d] for d in group) <= limit
    assert [g[-1] for g in groups] == sorted((g[-1] for g in groups), reverse=True)


@pytest.mark.integration
@pytest.mark.slow
def test_first_build_is_bounded_by_horizon_and_spread_by_budget(influxd: Influxd) -> None:
    """Ten closed days of data; an 8-day horizon and a budget that lets one group of two
    days' readings through per cycle: three cycles or more build the days inside the
    horizon, newest first, and nothing older is ever built."""
    settings = Settings(influx_url=influxd.url, influx_api="v1")
    query, writer = InfluxQL(settings), make_writer(settings)
    tz = settings.tz
    now = datetime.now(UTC)
    today = now.astimezone(tz).date()
    days = [today - timedelta(days=k) for k in range(12, 2, -1)]
    write(writer, readings(days, tz))
    per_day = 96 * len(DEVICES)
    rollups = TelemetryRollups(query, writer, tz, TelemetryRollupSettings(
        horizon_days=8, budget_s=1e-9, points_per_query=2 * per_day))
    inside = [d for d in days if d >= today - timedelta(days=8)]
    built: list[list[date]] = []
    for minute in range(6):
        cycle = rollups.maintain_once(now + timedelta(minutes=minute))
        built.append(cycle.days_built)
        if not cycle.pending_days:
            break
    # One group per cycle (the budget) of at most two days' readings (the point limit;
    # empty days cost nothing), newest first; every closed day inside the horizon built
    # once, none before it.
    horizon = today - timedelta(days=8)
    flat = [d for g in built for d in g]
    assert len(built) >= 3 and len(flat) == len(set(flat)), built
    assert all(sum(d in days for d in g) <= 2 for g in built), built
    assert min(built[0]) > max(built[-1]), built
    assert min(flat) == horizon and set(inside) <= set(flat), built
    store = Store(influxd)
    rolled = {local(ms * 1_000_000, tz).date() for _, ms in store.rows(DAILY)}
    assert set(inside) <= rolled and not rolled & (set(days) - set(inside)), rolled
    query.close()
    writer.close()


class FlakyWriter:
    """Stores bodies, refuses ``b"bad"``: the one write failure :class:`OrderedWrites` sees."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def write(self, body: bytes) -> None:
        if body == b"bad":
            raise WriteError("InfluxDB unreachable", transient=True)
        self.bodies.append(body)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release: the bodies stay in memory for the test to read."""


def test_ordered_writes_keep_order_and_drop_everything_after_a_failure() -> None:
    """A day's manifest is handed over after its data: if the data's write fails the
    manifest must not land, and the failure reaches the cycle."""
    writer = FlakyWriter()
    with OrderedWrites(writer) as ordered:
        for body in (b"1", b"2", b"3"):
            ordered.write(body)
    assert writer.bodies == [b"1", b"2", b"3"]
    writer = FlakyWriter()
    with pytest.raises(WriteError), OrderedWrites(writer) as ordered:
        for body in (b"data", b"bad", b"manifest"):
            ordered.write(body)
    assert writer.bodies == [b"data"]


@pytest.mark.integration
@pytest.mark.slow
def test_a_days_use_starts_from_the_day_before_across_groups(influxd: Influxd) -> None:
    """Every closed day its own group, built newest first in one cycle: each day's
    counter use still starts from the previous day's last reading (built after it), not
    from its own first one."""
    settings = Settings(influx_url=influxd.url, influx_api="v1")
    query, writer = InfluxQL(settings), make_writer(settings)
    tz = settings.tz
    now = datetime.now(UTC)
    today = now.astimezone(tz).date()
    days = [today - timedelta(days=k) for k in (5, 4, 3)]
    data = readings(days, tz)
    write(writer, data)
    rollups = TelemetryRollups(query, writer, tz, TelemetryRollupSettings(
        budget_s=1e9, points_per_query=96 * len(DEVICES)))
    cycle = rollups.maintain_once(now)
    assert set(days) <= set(cycle.days_built), cycle
    daily = Store(influxd).rows(DAILY)
    for (device, day), used in expected_use(data, tz).items():
        start_ms = int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()) * 1000
        assert daily[(device, start_ms)]["volume_m3_used"] == pytest.approx(used), (device, day)
    query.close()
    writer.close()
