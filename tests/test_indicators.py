"""The indicators (contract §8) against a real InfluxDB, with hand-made points and registry."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from devstack.servers import Influxd
from farm_contract.indicator_params import load_straw
from farm_contract.indicators import IndicatorId, IndicatorValue
from farm_contract.payloads import EventType
from farm_contract.registry import Registry
from ingest_service.indicators.engine import IndicatorEngine, UnknownCountyError, year_window
from ingest_service.indicators.publisher import IndicatorPublisher, indicator_points
from ingest_service.indicators.reading import longest_open_ms
from ingest_service.influxql import InfluxQL, QueryError, Series
from ingest_service.model import FieldValue, Point
from ingest_service.outputs.influx import make_writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.settings import Settings

SHANGHAI = ZoneInfo("Asia/Shanghai")
PC, YZ, YG = "平城区", "云州区", "阳高县"

SITES_CSV = f"""site_id,name,county,site_type,lat,lon,large_scale,area_mu
m1,一号牛场,{PC},manure,40.1,113.3,true,
m2,二号牛场,{PC},manure,40.1,113.3,true,
m3,三号猪场,{PC},manure,40.1,113.3,true,
m4,四号牛场,{YZ},manure,40.0,113.6,true,
m5,五号羊场,{YZ},manure,40.0,113.6,true,
m6,小散户,{YZ},manure,40.0,113.6,false,
m7,七号牛场,{YZ},manure,40.0,113.6,true,
d1,滴灌一号,{PC},drip,40.1,113.3,,300
d2,滴灌二号,{YZ},drip,40.0,113.6,,200
s1,秸秆一号,{PC},straw,40.1,113.3,,500
s2,秸秆二号,{YZ},straw,40.0,113.6,,400
s3,秸秆三号,{YG},straw,40.4,113.8,,100
"""
SITE_TYPES = {
    "m1": "manure", "m2": "manure", "m3": "manure", "m4": "manure", "m5": "manure",
    "m6": "manure", "m7": "manure", "d1": "drip", "d2": "drip",
    "s1": "straw", "s2": "straw", "s3": "straw",
}
COUNTY = {
    "m1": PC, "m2": PC, "m3": PC, "m4": YZ, "m5": YZ, "m6": YZ, "m7": YZ,
    "d1": PC, "d2": YZ, "s1": PC, "s2": YZ, "s3": YG,
}
DEVICES_CSV = "device_id,site_id,dev_eui,model\n" + "".join(
    f"{site}-dev,{site},,sim\n" for site in SITE_TYPES
)

_seq = iter(range(1, 1_000_000))


def _ns(ts: str, seq: int) -> int:
    moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return int(moment.timestamp() * 1000) * 1_000_000 + seq % 1_000_000


def event(site: str, kind: str, ts: str, seq: int | None = None, **extra: object) -> Point:
    """An ``event`` point as ingest writes it (contract §9)."""
    seq = next(_seq) if seq is None else seq
    tags = {
        "site_id": site, "device_id": f"{site}-dev", "site_type": SITE_TYPES[site],
        "county": COUNTY[site], "type": kind,
    }
    fields: dict[str, FieldValue] = {"seq": seq}
    for key, value in extra.items():
        if isinstance(value, str):
            tags[key] = value
        else:
            assert isinstance(value, int | float)
            fields[key] = float(value)
    return Point("event", tags, fields, _ns(ts, seq))


def telemetry(site: str, ts: str) -> Point:
    seq = next(_seq)
    tags = {
        "site_id": site, "device_id": f"{site}-dev", "site_type": SITE_TYPES[site],
        "county": COUNTY[site],
    }
    return Point("telemetry", tags, {"lagoon_level_pct": 50.0, "seq": seq}, _ns(ts, seq))


DUPLICATE = event("d2", "film_recovered", "2025-10-01T02:00:00Z", seq=777, mass_t=2.0)


def days_of_telemetry(site: str, first: str, days: int, per_day: int = 1) -> list[Point]:
    """Telemetry on ``days`` consecutive days (Datong time) from ``first`` (``YYYY-MM-DD``)."""
    start = datetime.fromisoformat(first).replace(tzinfo=SHANGHAI)
    return [
        telemetry(site, (start + timedelta(days=day, hours=1 + 10 * k)).isoformat())
        for day in range(days) for k in range(per_day)
    ]


POINTS = [
    # film 2025: 平城区 applied 6 (at 2025-01-01 00:00 local, the first instant) + 4 thin
    event("d1", "film_applied", "2024-12-31T16:00:00Z", mass_t=6.0, area_mu=100.0,
          thickness_mm=0.012),
    event("d1", "film_applied", "2025-04-10T02:00:00Z", mass_t=4.0, thickness_mm=0.008),
    # recoveries without a season: after 31 May → this year; up to 31 May → the year before
    event("d1", "film_recovered", "2025-10-01T02:00:00Z", mass_t=5.0),
    event("d1", "film_recovered", "2026-02-01T02:00:00Z", mass_t=3.5),  # for 2025
    event("d1", "film_recovered", "2025-03-01T02:00:00Z", mass_t=50.0),  # for 2024
    event("d1", "film_recovered", "2026-05-31T15:59:00Z", mass_t=0.25),  # 23:59 local: 2025
    # 2025-12-31T17:00Z is 2026-01-01 01:00 in Datong: year 2026, not 2025
    event("d1", "film_applied", "2025-12-31T17:00:00Z", mass_t=100.0),
    event("d1", "film_recovered", "2026-05-31T16:00:00Z", mass_t=75.0),  # 1 June local: 2026
    event("d1", "film_recovered", "2026-02-10T02:00:00Z", mass_t=20.0, season="2026"),
    # 云州区 applied 4, recovered 2 (written twice: a redelivery is one event) + 1 named 2025
    event("d2", "film_applied", "2025-04-01T02:00:00Z", mass_t=4.0),
    DUPLICATE,
    DUPLICATE,
    event("d2", "film_recovered", "2025-04-01T03:00:00Z", mass_t=1.0, season="2025"),
    # straw 2025: 平城区 corn 10 t, potato 4 t; 12.6 t used (above its collectable straw)
    event("s1", "harvest", "2025-09-20T02:00:00Z", crop="corn", grain_t=10.0),
    event("s1", "harvest", "2025-09-21T02:00:00Z", crop="potato", grain_t=4.0),
    event("s1", "straw_utilized", "2025-10-20T02:00:00Z", use="feed", mass_t=7.0),
    event("s1", "straw_utilized", "2025-10-21T02:00:00Z", use="fertilizer", mass_t=5.6),
    event("s1", "straw_burning", "2025-10-22T02:00:00Z"),
    # 云州区 millet 5 t, other 3 t; 4 t used
    event("s2", "harvest", "2025-09-20T02:00:00Z", crop="millet", grain_t=5.0),
    event("s2", "harvest", "2025-09-20T03:00:00Z", crop="other", grain_t=3.0),
    event("s2", "straw_utilized", "2025-11-01T02:00:00Z", use="fuel", mass_t=4.0),
    # ledger 2025: m1, m2 (平城区), m5 (云州区); m3 only in 2024; m4 only in 2026 local
    event("m1", "manure_treated", "2025-03-01T02:00:00Z", mass_t=30.0),
    event("m2", "manure_utilized", "2025-06-01T02:00:00Z", use="fertilizer", mass_t=10.0),
    event("m3", "manure_treated", "2024-06-01T02:00:00Z", mass_t=30.0),
    event("m4", "manure_treated", "2025-12-31T17:00:00Z", mass_t=30.0),
    event("m5", "manure_treated", "2025-07-01T02:00:00Z", mass_t=30.0),
    event("m6", "manure_treated", "2025-07-01T02:00:00Z", mass_t=3.0),  # not large-scale
    # facilities 2025: equipped = telemetry on ≥ 30 days and no fault open > 30 days
    *days_of_telemetry("m1", "2025-01-01", 30, per_day=2),  # 30 days, silent since 31 Jan
    *days_of_telemetry("m2", "2025-03-01", 29),  # 29 days: not equipped ...
    *days_of_telemetry("m2", "2026-01-02", 5),  # ... 2026's days do not help
    *days_of_telemetry("m3", "2025-08-01", 40),  # storage fault open 61 days: not equipped
    event("m3", "facility_fault", "2025-10-31T16:00:00Z", facility="storage"),
    *days_of_telemetry("m4", "2025-08-01", 40),  # digester fault of a day: equipped
    event("m4", "facility_fault", "2025-11-01T02:00:00Z", facility="digester"),
    event("m4", "facility_ok", "2025-11-02T02:00:00Z", facility="digester"),
    *days_of_telemetry("m5", "2025-08-01", 40),  # faults of 2 and exactly 30 days: equipped
    event("m5", "facility_fault", "2025-10-01T02:00:00Z", facility="storage"),
    event("m5", "facility_ok", "2025-10-03T02:00:00Z", facility="storage"),
    event("m5", "facility_fault", "2025-11-05T02:00:00Z", facility="separator"),
    event("m5", "facility_ok", "2025-12-05T02:00:00Z", facility="separator"),
    *days_of_telemetry("m6", "2025-08-01", 40),  # not large-scale: never counted
    *days_of_telemetry("m7", "2025-08-01", 40),  # its fault comes after the year
    event("m7", "facility_fault", "2026-01-05T02:00:00Z", facility="lagoon"),
    # 2026, evaluated "as of" 2026-03-01 00:00 local: 5 days needed (30 × 59/365, rounded up)
    *days_of_telemetry("m1", "2026-02-01", 5),
    *days_of_telemetry("m4", "2026-02-01", 4),
    event("m4", "facility_fault", "2026-01-10T02:00:00Z", facility="digester"),
    event("m4", "facility_ok", "2026-01-10T02:00:00Z", facility="digester"),  # same ms, later seq
]

NOW_2026 = datetime(2026, 3, 1, tzinfo=SHANGHAI)
LATER = datetime(2027, 6, 1, tzinfo=SHANGHAI)
"""A clock after every season of 2025 is over: 2025's figures are final."""
DATONG = ["平城区", "云冈区", "新荣区", "云州区", "阳高县", "天镇县", "广灵县", "灵丘县",
          "浑源县", "左云县"]


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    """One InfluxDB for the module, loaded once with :data:`POINTS`."""
    server = Influxd(tmp_path_factory.mktemp("influxd-indicators"))
    server.start()
    server.query("CREATE DATABASE farm")
    make_writer(Settings(influx_url=server.url, influx_api="v1")).write(encode(POINTS))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_csv(SITES_CSV, DEVICES_CSV)


def _engine(influx: Influxd, registry: Registry, **overrides: object) -> IndicatorEngine:
    settings = Settings.model_validate({"influx_url": influx.url, "influx_api": "v1", **overrides})
    return IndicatorEngine(InfluxQL(settings), lambda: registry, settings)


def _table(rows: list[IndicatorValue]) -> dict[tuple[str, str | None], IndicatorValue]:
    return {(str(row.indicator), row.county): row for row in rows}


def _check(row: IndicatorValue, numerator: float, denominator: float) -> None:
    assert row.numerator == pytest.approx(numerator)
    assert row.denominator == pytest.approx(denominator)
    expected = numerator / denominator if denominator else None
    assert row.value == (pytest.approx(expected) if expected is not None else None)
    assert row.met == (None if expected is None else expected >= row.target - 1e-9)


SHIPPED = load_straw()
"""The shipped straw parameters (farm_contract/params/straw.toml), which the expected
collectable straw follows when a published value replaces another."""


def _collectable(grain_t: dict[str, float]) -> float:
    """Collectable straw of these harvests (crop → grain t): grain × ratio × coefficient."""
    return sum(grain * SHIPPED.crops[crop].factor for crop, grain in grain_t.items())


STRAW_PC = _collectable({"corn": 10, "potato": 4})
STRAW_YZ = _collectable({"millet": 5, "other": 3})


@pytest.mark.integration
def test_year_2025_every_county_and_the_city(influx: Influxd, registry: Registry) -> None:
    rows = _engine(influx, registry).compute(2025, now=LATER)
    assert [(r.scope, r.county) for r in rows[::4]] == [
        ("city", None), *[("county", name) for name in DATONG],
    ]
    assert [str(r.indicator) for r in rows[:4]] == [i.value for i in IndicatorId]
    table = _table(rows)
    film, straw = "film_recovery_rate", "straw_utilization_rate"
    ledger, facility = "manure_ledger_coverage", "manure_facility_rate"
    _check(table[film, PC], 5.0 + 3.5 + 0.25, 10.0)  # two recoveries of 2026 before 1 June
    assert table[film, PC].met
    assert table[film, PC].quality["thin_film_share"] == pytest.approx(0.4)
    _check(table[film, YZ], 3.0, 4.0)  # the redelivered point counts once; season 2025
    _check(table[film, None], 11.75, 14.0)
    assert table[film, None].quality["thin_applied_t"] == pytest.approx(4.0)
    _check(table[straw, PC], 12.6, STRAW_PC)
    assert table[straw, PC].flags == ["above_100_percent"] and table[straw, PC].met
    _check(table[straw, YZ], 4.0, STRAW_YZ)
    assert table[straw, YZ].flags == []
    city_straw = table[straw, None]  # 平城区 counts at most its own collectable straw
    _check(city_straw, STRAW_PC + 4.0, STRAW_PC + STRAW_YZ)
    assert city_straw.flags == ["county_capped"]
    assert city_straw.quality["uncapped_numerator"] == pytest.approx(16.6)
    _check(table[ledger, PC], 2, 3)
    _check(table[ledger, YZ], 1, 3)
    _check(table[ledger, None], 3, 6)
    _check(table[facility, PC], 1, 3)  # m1 (silent since January); not m2 (29 d), m3 (fault)
    _check(table[facility, YZ], 3, 3)  # a fault open exactly 30 days is within the grace
    _check(table[facility, None], 4, 6)
    for indicator in IndicatorId:  # a county with nothing to measure: n/a, not "not met"
        for name in (YG, "新荣区"):
            row = table[indicator.value, name]
            assert (row.value, row.met, row.numerator) == (None, None, 0)
    assert all(row.year == 2025 and row.formula.endswith("/2") for row in rows)
    assert all(row.computed_at is not None and row.source == "raw" for row in rows)
    assert table[facility, None].parameters["days_required"] == 30
    assert table[straw, YZ].parameters["straw_ratio.corn"] == SHIPPED.crops["corn"].ratio
    assert table[facility, PC].coverage == 1.0 and table[film, YG].coverage is None
    assert table[straw, YG].coverage == 0.0  # s3 registered, reported nothing


@pytest.mark.integration
def test_members_add_up_to_every_figure(influx: Influxd, registry: Registry) -> None:
    engine = _engine(influx, registry)
    for year, now in ((2025, LATER), (2026, NOW_2026)):
        rows = engine.compute(year, now=now)
        members = engine.members(year, now=now)
        for row in rows:
            own = [m for m in members if m.indicator == row.indicator
                   and (row.county is None or m.county == row.county)]
            numerator = row.quality.get("uncapped_numerator", row.numerator)
            assert math.fsum(m.numerator for m in own) == numerator, row
            assert math.fsum(m.denominator for m in own) == row.denominator, row
    facility = {m.site_id: m for m in engine.members(
        2025, indicator=IndicatorId.MANURE_FACILITY_RATE, now=LATER)}
    assert facility["m1"].status == "equipped"
    assert facility["m1"].detail["days_reported"] == 30
    assert facility["m1"].detail["last_reading"] == "2025-01-30"
    assert facility["m2"].status == "not_equipped" and facility["m2"].detail["days_reported"] == 29
    assert facility["m3"].detail["longest_open_fault_days"] == 61
    assert facility["m5"].detail["longest_open_fault_days"] == 30
    assert "m6" not in facility
    only = engine.members(2025, county=YZ, indicator=IndicatorId.STRAW_UTILIZATION_RATE,
                          now=LATER)
    assert [(m.site_id, m.county, m.detail["grain_t.millet"]) for m in only] == [("s2", YZ, 5.0)]


@pytest.mark.integration
def test_events_behind_a_site(influx: Influxd, registry: Registry) -> None:
    engine = _engine(influx, registry)
    found = engine.events(IndicatorId.FILM_RECOVERY_RATE, 2025, "d1", now=LATER)
    recovered = [e["values"]["mass_t"] for e in found if e["role"] == "numerator"]  # type: ignore[index]
    applied = [e["values"]["mass_t"] for e in found if e["role"] == "denominator"]  # type: ignore[index]
    assert sorted(recovered) == [0.25, 3.5, 5.0] and sorted(applied) == [4.0, 6.0]
    assert all(e["device_id"] == "d1-dev" and isinstance(e["seq"], int) for e in found)
    member = next(m for m in engine.members(2025, PC, IndicatorId.FILM_RECOVERY_RATE, LATER)
                  if m.site_id == "d1")
    assert math.fsum(recovered) == member.numerator
    ledger = engine.events(IndicatorId.MANURE_LEDGER_COVERAGE, 2025, "m1", now=LATER)
    assert [e["type"] for e in ledger] == ["manure_treated"]
    faults = engine.events(IndicatorId.MANURE_FACILITY_RATE, 2025, "m5", now=LATER)
    assert [e["values"]["facility"] for e in faults] == [  # type: ignore[index]
        "storage", "storage", "separator", "separator"]


@pytest.mark.integration
def test_county_filter_returns_only_that_county(influx: Influxd, registry: Registry) -> None:
    rows = _engine(influx, registry).compute(2025, county=PC, now=LATER)
    assert [(r.scope, r.county) for r in rows] == [("county", PC)] * 4
    full = [r for r in _engine(influx, registry).compute(2025, now=LATER) if r.county == PC]
    assert [r.model_dump(exclude={"computed_at"}) for r in rows] == [
        r.model_dump(exclude={"computed_at"}) for r in full]
    assert len(_engine(influx, registry).compute(2025, county="新荣区", now=LATER)) == 4


@pytest.mark.integration
def test_unknown_or_hostile_county_is_refused(influx: Influxd, registry: Registry) -> None:
    engine = _engine(influx, registry)
    for name in ("大同县", "x' OR 1=1 --", '"; DROP DATABASE farm'):
        with pytest.raises(UnknownCountyError) as info:
            engine.compute(2025, county=name)
        assert info.value.known == DATONG


@pytest.mark.integration
def test_straw_ratios_from_the_environment(
    influx: Influxd, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FARM_STRAW_RATIOS", '{"corn": 2.0, "millet": 1.0}')
    settings = Settings(influx_url=influx.url, influx_api="v1")
    engine = IndicatorEngine(InfluxQL(settings), lambda: registry, settings)
    rows = _table(engine.compute(2025, now=LATER))
    corn, millet = SHIPPED.crops["corn"], SHIPPED.crops["millet"]
    _check(rows["straw_utilization_rate", PC], 12.6,
           10 * 2.0 * corn.coefficient + _collectable({"potato": 4}))
    _check(rows["straw_utilization_rate", YZ], 4.0,
           5 * 1.0 * millet.coefficient + _collectable({"other": 3}))


@pytest.mark.integration
def test_straw_parameters_per_county_from_a_file(
    influx: Influxd, registry: Registry, tmp_path: Path
) -> None:
    shipped = (Path(__file__).parents[1] / "farm_contract/params/straw.toml").read_text("utf-8")
    custom = tmp_path / "straw.toml"
    custom.write_text(shipped + f'[counties."{YZ}".millet]\nratio = 2.0\ncoefficient = 0.5\n',
                      encoding="utf-8")
    rows = _table(_engine(influx, registry, straw_params_file=custom).compute(2025, now=LATER))
    _check(rows["straw_utilization_rate", YZ], 4.0, 5 * 2.0 * 0.5 + _collectable({"other": 3}))
    _check(rows["straw_utilization_rate", PC], 12.6, STRAW_PC)  # other counties unchanged


@pytest.mark.integration
def test_facility_days_and_grace_settings(influx: Influxd, registry: Registry) -> None:
    rows = _table(_engine(influx, registry, facility_min_days=41).compute(2025, now=LATER))
    _check(rows["manure_facility_rate", None], 0, 6)  # nobody reported on 41 days
    rows = _table(_engine(influx, registry, fault_grace_days=29.5).compute(2025, now=LATER))
    _check(rows["manure_facility_rate", YZ], 2, 3)  # m5's 30-day fault is now too long


@pytest.mark.integration
def test_film_recovery_until_setting(influx: Influxd, registry: Registry) -> None:
    rows = _table(_engine(influx, registry, film_recovery_until="01-31")
                  .compute(2025, now=LATER))
    # March 2025 now counts for 2025, February and May 2026 for 2026
    _check(rows["film_recovery_rate", PC], 50.0 + 5.0, 10.0)


@pytest.mark.integration
def test_current_year_is_as_of_now(influx: Influxd, registry: Registry) -> None:
    engine = _engine(influx, registry)
    rows = _table(engine.compute(2026, now=NOW_2026))
    _check(rows["film_recovery_rate", PC], 20.0, 100.0)  # only the recovery named 2026
    _check(rows["manure_ledger_coverage", YZ], 1, 3)  # m4 on 2026-01-01 01:00 local
    _check(rows["manure_facility_rate", PC], 2, 3)  # m1, m2: 5 of the 5 days needed by now
    _check(rows["manure_facility_rate", YZ], 0, 3)  # m4: 4 days
    assert rows["manure_facility_rate", None].parameters["days_required"] == 5
    live = engine.facility_live(datetime(2026, 2, 4, 12, tzinfo=SHANGHAI))
    assert live == {"m1": True, "m2": False, "m3": False, "m4": True, "m5": False,
                    "m7": False}  # m3's storage and m7's lagoon faults are open
    assert not any(engine.facility_live(NOW_2026 + timedelta(days=2)).values())


@pytest.mark.integration
def test_a_year_without_data_is_not_zero(influx: Influxd, registry: Registry) -> None:
    for year, now in ((2020, LATER), (2027, NOW_2026)):
        rows = _engine(influx, registry).compute(year, now=now)
        assert all(row.value is None and row.met is None for row in rows)
        facility = _table(rows)["manure_facility_rate", None]
        assert facility.denominator == 6 and facility.flags == ["no_data"]


@pytest.mark.integration
def test_now_defaults_to_the_clock(influx: Influxd, registry: Registry) -> None:
    settings = Settings(influx_url=influx.url, influx_api="v1", influx_db="farm_clock")
    now = datetime.now(UTC) - timedelta(seconds=2)
    points = [
        event("d1", "film_applied", now.isoformat(), mass_t=2.0),
        event("d1", "film_recovered", now.isoformat(), mass_t=1.0, season=str(
            now.astimezone(SHANGHAI).year)),
        event("d1", "film_recovered", (now + timedelta(minutes=5)).isoformat(), mass_t=1.0,
              season=str(now.astimezone(SHANGHAI).year)),
    ]
    engine = IndicatorEngine(InfluxQL(settings), lambda: registry, settings)
    empty = _table(engine.compute(now.astimezone(SHANGHAI).year))  # no database yet: no data
    _check(empty["film_recovery_rate", PC], 0, 0)
    make_writer(settings).write(encode(points))
    rows = _table(engine.compute(now.astimezone(SHANGHAI).year))
    _check(rows["film_recovery_rate", PC], 1.0, 2.0)  # the one 5 minutes ahead is not yet


@pytest.mark.integration
def test_publisher_writes_indicator_points(influx: Influxd, registry: Registry) -> None:
    settings = Settings(influx_url=influx.url, influx_api="v1", influx_db="farm_pub")
    engine = _engine(influx, registry)
    publisher = IndicatorPublisher(engine, make_writer(settings), settings, years=lambda: [2025])
    now = datetime(2026, 1, 2, tzinfo=UTC)
    members = engine.members(2025, now=now)
    # one ``indicator`` point per indicator and scope (the city and Datong's ten), then one
    # ``indicator_member`` point per indicator and site of the engine's members
    # members: the six large-scale farms twice (facility, ledger), d1 and d2, s1 to s3
    assert len(DATONG) == 10 and len(members) == 6 + 6 + 2 + 3
    assert publisher.publish_once(now=now) == len(IndicatorId) * (1 + len(DATONG)) + len(members)
    query = InfluxQL(settings)
    (indicators,) = query.query('SELECT count("denominator") FROM indicator')
    assert indicators.rows()[0]["count"] == len(IndicatorId) * (1 + len(DATONG))
    (written,) = query.query('SELECT count("denominator") FROM indicator_member')
    assert written.rows()[0]["count"] == len(members)
    result = query.query(
        "SELECT value, numerator, denominator, target, year FROM indicator "
        "WHERE indicator = 'film_recovery_rate' GROUP BY scope, county"
    )
    by_county = {s.tags["county"]: s.rows()[0] for s in result}
    assert set(by_county) == {"all", *DATONG}
    assert by_county["all"]["numerator"] == pytest.approx(5.0 + 3.0)  # not February yet
    assert by_county[YG]["value"] is None
    assert by_county[PC]["year"] == 2025


# --- without InfluxDB ---------------------------------------------------------


def test_year_window_uses_the_zone() -> None:
    now = datetime(2026, 5, 1, tzinfo=UTC)
    past = year_window(2025, SHANGHAI, now)
    assert past.start == datetime(2024, 12, 31, 16, tzinfo=UTC)
    assert past.as_of == datetime(2025, 12, 31, 16, tzinfo=UTC)
    assert year_window(2026, SHANGHAI, now).as_of == now
    assert year_window(2027, SHANGHAI, now).empty
    assert not past.empty


def test_indicator_points_shape() -> None:
    rows = [IndicatorValue.of(IndicatorId.FILM_RECOVERY_RATE, "city", None, 2025, 1, 2),
            IndicatorValue.of(IndicatorId.FILM_RECOVERY_RATE, "county", PC, 2025, 0, 0)]
    points = indicator_points(rows, 123)
    assert points[0].tags == {"indicator": "film_recovery_rate", "scope": "city", "county": "all",
                              "period": "2025"}
    assert points[0].fields == {
        "value": 0.5, "met": False, "numerator": 1.0, "denominator": 2.0, "target": 0.85,
        "year": 2025,
    }
    assert "value" not in points[1].fields and points[1].tags["county"] == PC
    assert "met" not in points[1].fields, "n/a is not 'not met'"
    assert all(p.measurement == "indicator" and p.time_ns == 123 for p in points)


def test_n_a_is_null_not_false() -> None:
    row = IndicatorValue.of(IndicatorId.STRAW_UTILIZATION_RATE, "county", PC, 2025, 0, 0)
    assert (row.value, row.met) == (None, None)
    assert IndicatorValue.of(IndicatorId.STRAW_UTILIZATION_RATE, "city", None, 2025, 0, 1
                             ).met is False


def test_longest_open_fault() -> None:
    fault, ok = EventType.FACILITY_FAULT.value, EventType.FACILITY_OK.value
    day = 86_400_000.0
    assert longest_open_ms(None, [(1 * day, 1, fault), (3 * day, 2, ok)], 0, 10 * day) == 2 * day
    # open when the year began: counted from its start; a second fault does not restart it
    assert longest_open_ms((-5 * day, 9, fault), [(2 * day, 1, fault), (4 * day, 2, ok)],
                           0, 10 * day) == 4 * day
    assert longest_open_ms(None, [(6 * day, 1, fault)], 0, 10 * day) == 4 * day  # still open
    assert longest_open_ms((-5 * day, 9, ok), [], 0, 10 * day) == 0


class _FlakyQuery:
    """Fails the first ``failures`` queries, then answers with no data."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.queries: list[str] = []

    def query(self, q: str) -> list[Series]:
        self.queries.append(q)
        if self.failures:
            self.failures -= 1
            raise QueryError("InfluxDB unreachable: connection refused")
        return []


class _Writer:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.written = threading.Event()

    def write(self, body: bytes) -> None:
        self.bodies.append(body)
        self.written.set()

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


def test_publisher_survives_errors(registry: Registry) -> None:
    settings = Settings(indicator_interval_s=0.05)
    query = _FlakyQuery(failures=2)
    writer = _Writer()
    publisher = IndicatorPublisher(
        IndicatorEngine(query, lambda: registry, settings), writer, settings,
        years=lambda: [2025], retry_s=0.01,
    )
    publisher.start()
    try:
        assert writer.written.wait(5)
    finally:
        publisher.stop()
    assert publisher.errors == 2
    assert writer.bodies[0].startswith(b"indicator,")
    assert b"county=all" in writer.bodies[0]


def test_site_id_is_quoted_in_queries() -> None:
    hostile = "x' OR site_id =~ /.*/ --"
    registry = Registry.from_csv(SITES_CSV, DEVICES_CSV)
    query = _FlakyQuery(failures=0)
    IndicatorEngine(query, lambda: registry, Settings()).events(
        IndicatorId.FILM_RECOVERY_RATE, 2025, hostile, now=LATER)
    assert query.queries and all("'x\\' OR site_id =~ /.*/ --'" in q for q in query.queries)


class _OverflowingSite:
    """InfluxDB answering a sum it overflowed (+Inf) for site d1 (平城区) and nothing else."""

    def query(self, q: str) -> list[Series]:
        if 'sum("mass_t") AS mass_t' in q and "film_applied" in q and "2025-" in q:
            return [Series("event", {"site_id": "d1", "type": "film_applied", "crop": "",
                                     "season": ""}, ["time", "mass_t", "grain_t"],
                           [[0, math.inf, None]])]
        return []


def test_an_overflowed_site_sum_refuses_only_its_scopes() -> None:
    registry = Registry.from_csv(SITES_CSV, DEVICES_CSV)
    engine = IndicatorEngine(_OverflowingSite(), lambda: registry, Settings())
    for county in (None, PC):
        with pytest.raises(QueryError, match="not finite"):
            engine.compute(2025, county, now=LATER)
    rows = engine.compute(2025, YZ, now=LATER)
    assert [row.county for row in rows] == [YZ] * 4
    assert engine.members(2025, YZ, now=LATER)
