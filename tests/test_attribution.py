"""Attribution at the time of the data (issue 12 point 2), tried as an auditor would, on a
real InfluxDB: a farm moved today, a county typo corrected, a farm turned large-scale from a
date, a straw site moved in the middle of a month (read raw for the split, roll-ups or not).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from devstack.servers import Influxd
from farm_contract.indicators import IndicatorId, IndicatorValue
from farm_contract.registry import Registry, Site, today
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.indicators.rollups import RollupMaintainer
from ingest_service.influxql import InfluxQL
from ingest_service.model import FieldValue, Point
from ingest_service.outputs.influx import make_writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.settings import Settings

SHANGHAI = ZoneInfo("Asia/Shanghai")
PC, YZ, DTX = "平城区", "云州区", "大同县"
LATER = datetime(2027, 6, 1, tzinfo=SHANGHAI)
FACTOR = 0.84 * 0.81  # corn: straw-to-grain ratio × collectable coefficient

SITES = f"""site_id,name,county,site_type,lat,lon,large_scale,area_mu,valid_from
m1,一号牛场,{PC},manure,40.1,113.3,true,,
m2,二号牛场,{PC},manure,40.1,113.3,true,,
m6,小散户,{YZ},manure,40.0,113.6,false,,
s1,秸秆一号,{PC},straw,40.1,113.3,,500,
s3,秸秆三号,{DTX},straw,40.4,113.8,,100,
s4,秸秆四号,{YZ},straw,40.0,113.6,,100,
"""
DEVICES = "device_id,site_id\n" + "".join(f"{s}-dev,{s}\n" for s in
                                         ("m1", "m2", "m6", "s1", "s3", "s4"))

_seq = iter(range(1, 1_000_000))


def point(measurement: str, site: str, county: str, at: datetime, site_type: str,
          **values: float | str) -> Point:
    """A point as ingest stored it, with the county tag of the day it was stored."""
    seq = next(_seq)
    tags = {"site_id": site, "device_id": f"{site}-dev", "site_type": site_type,
            "county": county}
    fields: dict[str, FieldValue] = {"seq": seq}
    for key, value in values.items():
        if isinstance(value, str):
            tags[key] = value
        else:
            fields[key] = float(value)
    return Point(measurement, tags, fields, int(at.timestamp() * 1000) * 1_000_000 + seq)


def local(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=SHANGHAI)  # type: ignore[misc]


def _points() -> list[Point]:
    out = []
    for site, county in (("m1", PC), ("m2", PC), ("m6", YZ)):
        out += [point("telemetry", site, county, local(2025, 3, 1 + day, 12), "manure",
                      lagoon_level_pct=50.0) for day in range(30)]
        out += [point("telemetry", site, county, local(2026, 3, 1 + day, 12), "manure",
                      lagoon_level_pct=50.0) for day in range(30)]
    out.append(point("event", "m1", PC, local(2025, 5, 1, 9), "manure", type="manure_treated",
                     mass_t=3.0))
    out.append(point("event", "m6", YZ, local(2026, 5, 1, 9), "manure", type="manure_treated",
                     mass_t=3.0))
    out += [
        point("event", "s1", PC, local(2025, 9, 10, 9), "straw", type="harvest", crop="corn",
              grain_t=10.0),
        point("event", "s1", PC, local(2025, 10, 10, 9), "straw", type="straw_utilized",
              use="feed", mass_t=5.0),
        # stored under the typo's county tag
        point("event", "s3", DTX, local(2025, 9, 10, 9), "straw", type="harvest", crop="corn",
              grain_t=20.0),
        point("event", "s3", DTX, local(2025, 10, 10, 9), "straw", type="straw_utilized",
              use="fuel", mass_t=13.0),
        # s4 moves from 云州区 to 平城区 on 15 September 2025: one harvest before, one after
        point("event", "s4", YZ, local(2025, 9, 10, 9), "straw", type="harvest", crop="corn",
              grain_t=10.0),
        point("event", "s4", YZ, local(2025, 9, 25, 9), "straw", type="harvest", crop="corn",
              grain_t=5.0),
        point("event", "s4", YZ, local(2025, 9, 26, 9), "straw", type="straw_utilized",
              use="feed", mass_t=2.0),
    ]
    return out


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    server = Influxd(tmp_path_factory.mktemp("influxd-attribution"))
    server.start()
    server.query("CREATE DATABASE farm")
    make_writer(Settings(influx_url=server.url, influx_api="v1")).write(encode(_points()))
    yield server
    server.stop()


def registry(extra: str = "", replace: dict[str, str] | None = None) -> Registry:
    text = SITES
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    return Registry.from_csv(text + extra, DEVICES)


def engine(influx: Influxd, reg: Registry, **overrides: object) -> IndicatorEngine:
    settings = Settings.model_validate({"influx_url": influx.url, "influx_api": "v1",
                                        "earliest_ts": "2025-01-01T00:00:00Z", **overrides})
    return IndicatorEngine(InfluxQL(settings), lambda: reg, settings)


def plain(rows: list[IndicatorValue]) -> list[dict[str, object]]:
    return [row.model_dump(exclude={"computed_at", "source", "parameters"}) for row in rows]


def table(rows: list[IndicatorValue]) -> dict[tuple[str, str | None], IndicatorValue]:
    return {(str(row.indicator), row.county): row for row in rows}


@pytest.mark.integration
def test_a_farm_moved_today_leaves_past_years_alone(influx: Influxd) -> None:
    base = registry()
    moved = registry(f"m1,一号牛场,{YZ},manure,40.0,113.6,true,,{today().isoformat()}\n")
    before = engine(influx, base).compute(2025, now=LATER)
    after = engine(influx, moved).compute(2025, now=LATER)
    assert plain(after) == plain(before)
    assert table(after)["manure_facility_rate", PC].numerator == 2  # m1 and m2, in 平城区
    # the year the move happened in counts m1 where it is at that year's end
    members = engine(influx, moved).members(2026, indicator=IndicatorId.MANURE_FACILITY_RATE,
                                            now=LATER)
    assert {m.site_id: m.county for m in members} == {"m1": YZ, "m2": PC}


@pytest.mark.integration
def test_a_corrected_county_carries_the_sites_history(influx: Influxd) -> None:
    typo = engine(influx, registry()).compute(2025, now=LATER)
    corrected_reg = registry(replace={f"s3,秸秆三号,{DTX}": f"s3,秸秆三号,{YZ}"})
    corrected = engine(influx, corrected_reg).compute(2025, now=LATER)
    straw = "straw_utilization_rate"
    city_before, city_after = table(typo)[straw, None], table(corrected)[straw, None]
    total_grain = 10.0 + 20.0 + 15.0
    assert city_after.denominator == pytest.approx(total_grain * FACTOR)
    assert (city_after.numerator, city_after.denominator) == (
        city_before.numerator, city_before.denominator)  # the city is the sum over all sites
    assert table(typo)[straw, DTX].numerator == 13.0  # the typo was listed, not dropped
    assert (straw, DTX) not in table(corrected)  # no site names it any more
    yz = table(corrected)[straw, YZ]
    assert yz.numerator == 13.0 + 2.0  # s3's utilisation (stored as 大同县) and s4's
    assert yz.denominator == pytest.approx((20.0 + 15.0) * FACTOR)


@pytest.mark.integration
def test_large_scale_from_a_date_changes_only_later_years(influx: Influxd) -> None:
    base = registry()
    flipped = registry(f"m6,小散户,{YZ},manure,40.0,113.6,true,,2026-01-01\n")
    assert plain(engine(influx, flipped).compute(2025, now=LATER)) == plain(
        engine(influx, base).compute(2025, now=LATER))
    rows = table(engine(influx, flipped).compute(2026, now=LATER))
    assert (rows["manure_facility_rate", YZ].numerator,
            rows["manure_facility_rate", YZ].denominator) == (1, 1)
    assert rows["manure_ledger_coverage", None].denominator == 3
    assert rows["manure_ledger_coverage", None].numerator == 1  # m6's 2026 ledger


@pytest.mark.slow
@pytest.mark.integration
def test_a_site_moved_mid_month_is_split_with_or_without_roll_ups(influx: Influxd) -> None:
    moved = registry(f"s4,秸秆四号,{PC},straw,40.1,113.3,,100,2025-09-15\n")
    raw = engine(influx, moved, rollups=False)
    rolled = engine(influx, moved)
    settings = Settings(influx_url=influx.url, influx_api="v1", influx_db="farm",
                        earliest_ts="2025-01-01T00:00:00Z")
    done = RollupMaintainer(InfluxQL(settings), make_writer(settings), settings,
                            months_per_cycle=None).maintain_once(LATER)
    assert any(m.key == "2025-09" for m in done.built)
    rows = rolled.compute(2025, now=LATER)
    assert {row.source for row in rows} == {"rollup"}
    assert plain(rows) == plain(raw.compute(2025, now=LATER))
    members = {(m.site_id, m.county): m for m in rolled.members(
        2025, indicator=IndicatorId.STRAW_UTILIZATION_RATE, now=LATER)}
    assert members["s4", YZ].denominator == pytest.approx(10.0 * FACTOR)
    assert members["s4", YZ].numerator == 0
    assert members["s4", PC].denominator == pytest.approx(5.0 * FACTOR)
    assert members["s4", PC].numerator == 2.0
    pc = table(rows)["straw_utilization_rate", PC]
    assert pc.denominator == math.fsum(m.denominator for (_, c), m in members.items() if c == PC)
    assert date(2025, 9, 15) in moved.change_days()
    assert isinstance(moved.site_on("s4", date(2025, 9, 14)), Site)
