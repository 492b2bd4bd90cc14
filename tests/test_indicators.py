"""The indicators (contract §8) against a real InfluxDB, with hand-made points and registry."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from devstack.servers import Influxd
from farm_contract.indicators import IndicatorId, IndicatorValue
from farm_contract.registry import Registry
from ingest_service.indicators.engine import (
    IndicatorEngine,
    Totals,
    UnknownCountyError,
    year_window,
)
from ingest_service.indicators.publisher import IndicatorPublisher, indicator_points
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

POINTS = [
    # film 2025: 平城区 applied 6 (at 2025-01-01 00:00 local, the first instant) + 4, recovered 8.5
    event("d1", "film_applied", "2024-12-31T16:00:00Z", mass_t=6.0, area_mu=100.0),
    event("d1", "film_applied", "2025-04-10T02:00:00Z", mass_t=4.0),
    event("d1", "film_recovered", "2025-10-01T02:00:00Z", mass_t=8.5),
    # 2025-12-31T17:00Z is 2026-01-01 01:00 in Datong: year 2026, not 2025
    event("d1", "film_applied", "2025-12-31T17:00:00Z", mass_t=100.0),
    # 2024-12-31T15:59:59Z is still 2024 in Datong
    event("d1", "film_recovered", "2024-12-31T15:59:59Z", mass_t=50.0),
    # 云州区 applied 4, recovered 2 (written twice: a redelivery is one event)
    event("d2", "film_applied", "2025-04-01T02:00:00Z", mass_t=4.0),
    DUPLICATE,
    DUPLICATE,
    # straw 2025: 平城区 corn 10 t (×1.2) + potato 4 t (×0.5) = 14 t straw; 12.6 t used
    event("s1", "harvest", "2025-09-20T02:00:00Z", crop="corn", grain_t=10.0),
    event("s1", "harvest", "2025-09-21T02:00:00Z", crop="potato", grain_t=4.0),
    event("s1", "straw_utilized", "2025-10-20T02:00:00Z", use="feed", mass_t=7.0),
    event("s1", "straw_utilized", "2025-10-21T02:00:00Z", use="fertilizer", mass_t=5.6),
    event("s1", "straw_burning", "2025-10-22T02:00:00Z"),
    # 云州区 millet 5 t (×1.4) + other 3 t = 10 t straw; 4 t used
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
    # facilities, as of 2026-01-01 00:00 local = 2025-12-31T16:00Z, stale after 24 h
    telemetry("m1", "2025-12-31T10:00:00Z"),  # fresh, no fault: working
    telemetry("m2", "2025-12-29T10:00:00Z"),  # stale: not working ...
    telemetry("m2", "2026-01-02T10:00:00Z"),  # ... telemetry after "as of" does not help
    telemetry("m3", "2025-12-31T12:00:00Z"),  # fresh but its storage fault is open
    event("m3", "facility_fault", "2025-12-01T02:00:00Z", facility="storage"),
    telemetry("m4", "2025-12-31T15:00:00Z"),  # fresh, digester fault then ok: working
    event("m4", "facility_fault", "2025-11-01T02:00:00Z", facility="digester"),
    event("m4", "facility_ok", "2025-11-02T02:00:00Z", facility="digester"),
    telemetry("m5", "2025-12-31T15:00:00Z"),  # fresh; storage fixed, separator still down
    event("m5", "facility_fault", "2025-10-01T02:00:00Z", facility="storage"),
    event("m5", "facility_ok", "2025-10-03T02:00:00Z", facility="storage"),
    event("m5", "facility_ok", "2025-11-01T02:00:00Z", facility="separator"),
    event("m5", "facility_fault", "2025-11-05T02:00:00Z", facility="separator"),
    telemetry("m6", "2025-12-31T15:00:00Z"),  # not large-scale: never counted
    telemetry("m7", "2025-12-31T15:00:00Z"),  # fresh; its fault comes after "as of"
    event("m7", "facility_fault", "2026-01-05T02:00:00Z", facility="lagoon"),
    # 2026, evaluated "as of" 2026-03-01 00:00 local (2026-02-28T16:00Z)
    event("d1", "film_recovered", "2026-02-01T02:00:00Z", mass_t=25.0),
    event("d1", "film_recovered", "2026-06-01T02:00:00Z", mass_t=75.0),  # after "now"
    telemetry("m1", "2026-02-28T10:00:00Z"),
    telemetry("m4", "2026-02-28T15:59:00Z"),
    event("m4", "facility_fault", "2026-01-10T02:00:00Z", facility="digester"),
    event("m4", "facility_ok", "2026-01-10T02:00:00Z", facility="digester"),  # same ms, later seq
]

NOW_2026 = datetime(2026, 3, 1, tzinfo=SHANGHAI)


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
    assert row.met == (expected is not None and expected >= row.target - 1e-9)


@pytest.mark.integration
def test_year_2025_every_county_and_the_city(influx: Influxd, registry: Registry) -> None:
    rows = _engine(influx, registry).compute(2025)
    assert [(r.scope, r.county) for r in rows[::4]] == [
        ("city", None), ("county", YZ), ("county", PC), ("county", YG),
    ]
    assert [str(r.indicator) for r in rows[:4]] == [i.value for i in IndicatorId]
    table = _table(rows)
    film, straw = "film_recovery_rate", "straw_utilization_rate"
    ledger, facility = "manure_ledger_coverage", "manure_facility_rate"
    _check(table[film, PC], 8.5, 10.0)
    assert table[film, PC].met
    _check(table[film, YZ], 2.0, 4.0)  # the redelivered point counts once
    _check(table[film, None], 10.5, 14.0)
    _check(table[straw, PC], 12.6, 14.0)
    assert table[straw, PC].met
    _check(table[straw, YZ], 4.0, 10.0)
    _check(table[straw, None], 16.6, 24.0)
    _check(table[ledger, PC], 2, 3)
    _check(table[ledger, YZ], 1, 3)
    _check(table[ledger, None], 3, 6)
    _check(table[facility, PC], 1, 3)
    _check(table[facility, YZ], 2, 3)
    _check(table[facility, None], 3, 6)
    for indicator in IndicatorId:  # a county with nothing to measure
        row = table[indicator.value, YG]
        assert (row.value, row.met, row.numerator, row.denominator) == (None, False, 0, 0)
    assert all(row.year == 2025 for row in rows)


@pytest.mark.integration
def test_county_filter_returns_only_that_county(influx: Influxd, registry: Registry) -> None:
    rows = _engine(influx, registry).compute(2025, county=PC)
    assert [(r.scope, r.county) for r in rows] == [("county", PC)] * 4
    assert rows == [r for r in _engine(influx, registry).compute(2025) if r.county == PC]


@pytest.mark.integration
def test_unknown_or_hostile_county_is_refused(influx: Influxd, registry: Registry) -> None:
    engine = _engine(influx, registry)
    for name in ("大同县", "x' OR 1=1 --", '"; DROP DATABASE farm'):
        with pytest.raises(UnknownCountyError) as info:
            engine.compute(2025, county=name)
        assert info.value.known == sorted([PC, YZ, YG])


@pytest.mark.integration
def test_straw_ratios_from_the_environment(
    influx: Influxd, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FARM_STRAW_RATIOS", '{"corn": 2.0, "millet": 1.0}')
    settings = Settings(influx_url=influx.url, influx_api="v1")
    rows = _table(IndicatorEngine(InfluxQL(settings), lambda: registry, settings).compute(2025))
    _check(rows["straw_utilization_rate", PC], 12.6, 10 * 2.0 + 4 * 0.5)
    _check(rows["straw_utilization_rate", YZ], 4.0, 5 * 1.0 + 3 * 1.0)


@pytest.mark.integration
def test_stale_hours_setting(influx: Influxd, registry: Registry) -> None:
    rows = _table(_engine(influx, registry, stale_hours=4).compute(2025))
    _check(rows["manure_facility_rate", PC], 0, 3)  # m1 last spoke 6 h before "as of"
    _check(rows["manure_facility_rate", YZ], 2, 3)


@pytest.mark.integration
def test_current_year_is_as_of_now(influx: Influxd, registry: Registry) -> None:
    rows = _table(_engine(influx, registry).compute(2026, now=NOW_2026))
    _check(rows["film_recovery_rate", PC], 25.0, 100.0)  # June's recovery has not happened
    _check(rows["manure_ledger_coverage", YZ], 1, 3)  # m4 on 2026-01-01 01:00 local
    _check(rows["manure_facility_rate", PC], 1, 3)  # m1 fresh as of now
    _check(rows["manure_facility_rate", YZ], 1, 3)  # m4 (ok after fault, same ms); m7's fault
    later = _table(_engine(influx, registry).compute(2026, now=NOW_2026 + timedelta(days=2)))
    _check(later["manure_facility_rate", None], 0, 6)  # nobody spoke for two days


@pytest.mark.integration
def test_future_year_has_nothing_yet(influx: Influxd, registry: Registry) -> None:
    rows = _engine(influx, registry).compute(2027, now=NOW_2026)
    assert all(row.numerator == 0 for row in rows)
    _check(_table(rows)["manure_facility_rate", None], 0, 6)
    _check(_table(rows)["film_recovery_rate", None], 0, 0)


@pytest.mark.integration
def test_now_defaults_to_the_clock(influx: Influxd, registry: Registry) -> None:
    settings = Settings(influx_url=influx.url, influx_api="v1", influx_db="farm_clock")
    now = datetime.now(UTC) - timedelta(seconds=2)
    points = [
        event("d1", "film_applied", now.isoformat(), mass_t=2.0),
        event("d1", "film_recovered", now.isoformat(), mass_t=1.0),
        event("d1", "film_recovered", (now + timedelta(minutes=5)).isoformat(), mass_t=1.0),
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
    assert publisher.publish_once(now=datetime(2026, 1, 2, tzinfo=UTC)) == 16
    result = InfluxQL(settings).query(
        "SELECT value, numerator, denominator, target, year FROM indicator "
        "WHERE indicator = 'film_recovery_rate' GROUP BY scope, county"
    )
    by_county = {s.tags["county"]: s.rows()[0] for s in result}
    assert set(by_county) == {"all", PC, YZ, YG}
    assert by_county["all"]["numerator"] == pytest.approx(10.5)
    assert by_county["all"]["value"] == pytest.approx(0.75)
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


def test_city_adds_numerators_and_denominators() -> None:
    city = Totals()
    city.add(Totals(film_applied_t=100, film_recovered_t=90, manure_sites=1, working_sites=1))
    city.add(Totals(film_applied_t=1, film_recovered_t=0, manure_sites=3))
    values = {row.indicator: row for row in city.values(2025, None)}
    film = values[IndicatorId.FILM_RECOVERY_RATE]
    assert (film.numerator, film.denominator) == (90, 101)
    assert film.value == pytest.approx(90 / 101)
    assert values[IndicatorId.MANURE_FACILITY_RATE].value == 0.25
    assert values[IndicatorId.STRAW_UTILIZATION_RATE].value is None
    assert all(row.scope == "city" and row.county is None for row in values.values())


def test_indicator_points_shape() -> None:
    rows = Totals(film_applied_t=2, film_recovered_t=1).values(2025, None)
    rows += Totals().values(2025, PC)
    points = indicator_points(rows, 123)
    assert points[2].tags == {"indicator": "film_recovery_rate", "scope": "city", "county": "all"}
    assert points[2].fields == {
        "value": 0.5, "numerator": 1.0, "denominator": 2.0, "target": 0.85, "year": 2025,
    }
    assert "value" not in points[6].fields and points[6].tags["county"] == PC
    assert all(p.measurement == "indicator" and p.time_ns == 123 for p in points)


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


def test_county_name_is_quoted_in_queries(tmp_path: Path) -> None:
    hostile = "x' OR county =~ /.*/ --"
    sites = f"site_id,name,county,site_type,lat,lon\nd1,f,{hostile},drip,40,113\n"
    registry = Registry.from_csv(sites, "device_id,site_id\n")
    query = _FlakyQuery(failures=0)
    IndicatorEngine(query, lambda: registry, Settings()).compute(2025, county=hostile)
    assert any("'x\\' OR county =~ /.*/ --'" in q for q in query.queries)
