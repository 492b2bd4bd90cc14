"""The facilities live now (issue 13): an operational figure, not the plan's indicator.

On a real InfluxDB holding hand-made points relative to now: the engine's state and
its reasons, the ``facility_live`` points the publisher writes, the livestock-manure
dashboard's live panels (the queries Grafana sends, run on those points) and
``GET /api/v1/facilities/live`` all say the same — a farm silent for 25 h and a farm
with an open fault are not live and say why; one silent for 23 h or whose fault was
fixed is; a county without large-scale farms is n/a (empty), never 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dashboards import shapes
from dashboards.panel_queries import iter_panels, panel_queries
from devstack.servers import Influxd
from farm_contract import schema
from farm_contract.registry import Registry
from ingest_service.api.app import create_app
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.indicators.publisher import IndicatorPublisher
from ingest_service.influxql import InfluxQL, Series
from ingest_service.model import Point
from ingest_service.outputs.influx import make_writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.settings import Settings
from ingest_service.state import RegistryHolder, ServiceState
from ingest_service.telemetry.rollups import LAST_SEEN
from tests.test_indicators import (
    COUNTY,
    DATONG,
    DEVICES_CSV,
    PC,
    SHANGHAI,
    SITE_TYPES,
    SITES_CSV,
    YZ,
    event,
    telemetry,
)

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
MANURE_BOARD = Path(__file__).resolve().parents[1] / "dashboards/json/livestock-manure.json"
STAT = "Facilities live now / 设施实时运行"
TABLE = "Farms not live / 未实时运行的养殖场"
EMPTY_COUNTY = "新荣区"
"""One of Datong's ten divisions without a large-scale farm in the registry: n/a."""


def ago(**delta: float) -> str:
    return (NOW - timedelta(**delta)).isoformat()


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def last_seen(site: str, seen: datetime) -> Point:
    """A ``device_last_seen`` point as the telemetry roll-ups keep it (month bucket)."""
    month = seen.astimezone(SHANGHAI).replace(day=1, hour=0, minute=0, second=0)
    tags = {"site_id": site, "device_id": f"{site}-dev", "site_type": SITE_TYPES[site],
            "county": COUNTY[site]}
    return Point(LAST_SEEN, tags, {"seen_ms": ms(seen), "seq": 1}, ms(month) * 1_000_000)


POINTS = [
    telemetry("m1", ago(hours=1)),  # live
    telemetry("m2", ago(hours=25)),  # silent for 25 h: not live
    last_seen("m2", NOW - timedelta(hours=25)),
    telemetry("m3", ago(hours=1)),  # reports, but its storage fault is open: not live
    event("m3", "facility_fault", ago(days=3), facility="storage"),
    telemetry("m4", ago(hours=23)),  # silent for 23 h: still live
    # m5 never reported: not live, no last reading known
    telemetry("m6", ago(hours=1)),  # not large-scale: not counted
    telemetry("m7", ago(hours=1)),  # its lagoon fault was fixed: live
    event("m7", "facility_fault", ago(days=2), facility="lagoon"),
    event("m7", "facility_ok", ago(days=1), facility="lagoon"),
]
EXPECTED_LIVE = {"m1": True, "m2": False, "m3": False, "m4": True, "m5": False, "m7": True}


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    server = Influxd(tmp_path_factory.mktemp("influxd-live"))
    server.start()
    server.query("CREATE DATABASE farm")
    make_writer(Settings(influx_url=server.url, influx_api="v1")).write(encode(POINTS))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_csv(SITES_CSV, DEVICES_CSV)


@pytest.fixture(scope="module")
def settings(influx: Influxd) -> Settings:
    return Settings(influx_url=influx.url, influx_api="v1", rollups=False)


@pytest.fixture(scope="module")
def engine(settings: Settings, registry: Registry) -> IndicatorEngine:
    return IndicatorEngine(InfluxQL(settings), lambda: registry, settings)


@pytest.fixture(scope="module")
def published(engine: IndicatorEngine, settings: Settings) -> IndicatorPublisher:
    """One publisher cycle at :data:`NOW` (no year: only the live state)."""
    publisher = IndicatorPublisher(engine, make_writer(settings), settings, years=lambda: [])
    assert publisher.publish_once(now=NOW) == 0  # indicator points only; the live ones apart
    return publisher


def test_the_engine_says_who_is_live_and_why(engine: IndicatorEngine) -> None:
    state = engine.facility_live_state(NOW)
    assert state.live() == EXPECTED_LIVE == engine.facility_live(NOW)
    farms = {f.site_id: f for f in state.farms}
    local = SHANGHAI
    m2_last = (NOW - timedelta(hours=25)).astimezone(local).strftime("%Y-%m-%d %H:%M")
    assert state.reasons(farms["m2"], local) == [
        f"no reading in 24 h / 24 小时无读数 (last reading / 最后读数 {m2_last})"]
    assert farms["m2"].last_seen_ms == ms(NOW - timedelta(hours=25))  # the roll-up's
    since = (NOW - timedelta(days=3)).astimezone(local).strftime("%Y-%m-%d %H:%M")
    assert farms["m3"].reporting and farms["m3"].open_fault
    assert state.reasons(farms["m3"], local) == [
        f"storage fault open since {since} / storage 故障未修复"]
    assert farms["m3"].last_seen_ms == ms(NOW - timedelta(hours=1))  # in the window
    assert state.reasons(farms["m5"], local) == [
        "no reading in 24 h / 24 小时无读数 (no reading known / 无读数记录)"]
    assert farms["m4"].live and state.reasons(farms["m4"], local) == []
    assert not farms["m7"].open_fault  # fixed
    counts = {c.county: (c.live, c.farms, c.share) for c in state.counts()}
    assert counts[None] == (3, 6, 0.5)
    assert counts[PC] == (1, 3, pytest.approx(1 / 3))
    assert counts[YZ] == (2, 3, pytest.approx(2 / 3))
    assert counts[EMPTY_COUNTY] == (0, 0, None)  # n/a, not 0
    assert list(counts)[1:] == DATONG  # every division listed, in order


def test_the_live_state_costs_a_few_queries_whatever_the_farms(
    settings: Settings, registry: Registry
) -> None:
    issued: list[str] = []

    class Counting(InfluxQL):
        def query(self, q: str) -> list[Series]:
            issued.append(q)
            return super().query(q)

    counting = Counting(settings)
    engine = IndicatorEngine(counting, lambda: registry, settings)
    engine.facility_live_state(NOW)
    assert len(issued) == 3  # readings of 24 h, latest facility events, last seen of silent
    issued.clear()
    engine.facility_live_state(NOW - timedelta(hours=2))  # m2 reported then; m5 never
    assert len(issued) == 3
    no_rollups = IndicatorEngine(counting, lambda: registry,
                                 settings.model_copy(update={"telemetry_rollups": False}))
    issued.clear()
    no_rollups.facility_live_state(NOW)
    assert len(issued) == 2


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**(s.get("tags") or {}), **dict(zip(s["columns"], v, strict=True))}
            for s in result.get("series", []) for v in s["values"]]


def test_the_publisher_writes_each_farm_and_the_counts(
    influx: Influxd, published: IndicatorPublisher, engine: IndicatorEngine,
) -> None:
    assert published.live_published == 6 + 1 + len(DATONG)
    result: Any = influx.query(
        f'SELECT * FROM "{schema.FACILITY_LIVE}" WHERE "scope" = \'farm\' GROUP BY "site_id"')
    farms = {r["site_id"]: r for r in rows(result["results"][0])}
    assert {s: r["live"] for s, r in farms.items()} == EXPECTED_LIVE
    state = engine.facility_live_state(NOW)
    for farm in state.farms:
        row = farms[farm.site_id]
        assert (row["reporting"], row["open_fault"], row["last_seen_ms"]) == (
            farm.reporting, farm.open_fault, farm.last_seen_ms)
        assert row["reason"] == ("; ".join(state.reasons(farm, SHANGHAI)) or None)
    assert farms["m3"]["fault_since_ms"] == ms(NOW - timedelta(days=3))
    result = influx.query(
        f'SELECT "live_farms", "farms", "share" FROM "{schema.FACILITY_LIVE}"'
        ' WHERE "scope" != \'farm\' GROUP BY "county"')
    counts = {r["county"]: (r["live_farms"], r["farms"], r["share"])
              for r in rows(result["results"][0])}  # type: ignore[index]
    assert counts[schema.CITY_COUNTY_TAG] == (3, 6, 0.5)
    assert counts[PC] == (1, 3, pytest.approx(1 / 3))
    assert counts[EMPTY_COUNTY] == (0, 0, None)  # share left out: n/a, never 0
    assert len(counts) == 1 + len(DATONG)


def panel_results(
    influx: Influxd, county: str, end: datetime, site: str = "$__all",
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """The live panels' results (and the panels) as Grafana would get them."""
    board = json.loads(MANURE_BOARD.read_text(encoding="utf-8"))
    panels = {p["title"]: p for p in iter_panels(board["panels"])}
    out = {}
    start = end - timedelta(days=30)
    for title, _, query in panel_queries(board, {"county": county, "site": site}, start, end):
        if title in (STAT, TABLE):
            out[title] = (influx.query(query)["results"][0], panels[title])  # type: ignore[index]
    assert set(out) == {STAT, TABLE}
    return out


def test_the_manure_panels_show_the_engines_state(
    influx: Influxd, published: IndicatorPublisher, engine: IndicatorEngine,
) -> None:
    state = engine.facility_live_state(NOW)
    end = NOW + timedelta(minutes=1)
    for county in (schema.CITY_COUNTY_TAG, PC, YZ):
        results = panel_results(influx, county, end)
        scope = None if county == schema.CITY_COUNTY_TAG else county
        (count,) = [c for c in state.counts() if c.county == scope]
        (result, panel) = results[STAT]
        assert not shapes.check(shapes.expectation(panel, panel["targets"][0]), result, panel)
        (shown,) = rows(result)
        assert (shown["share"], shown["live_farms"], shown["farms"]) == (
            pytest.approx(count.share), count.live, count.farms)
        (result, panel) = results[TABLE]
        assert not shapes.check(shapes.expectation(panel, panel["targets"][0]), result, panel)
        listed = {r["site_id"]: (r["county"], r["name"], r["reason"]) for r in rows(result)}
        assert listed == {
            f.site_id: (f.county, f.name, "; ".join(state.reasons(f, SHANGHAI)))
            for f in state.farms if not f.live and (scope is None or f.county == scope)}
        assert set(listed) == {s for s, live in EXPECTED_LIVE.items()
                               if not live and (scope is None or COUNTY[s] == scope)}


def test_a_county_without_farms_is_empty_not_zero(
    influx: Influxd, published: IndicatorPublisher,
) -> None:
    results = panel_results(influx, EMPTY_COUNTY, NOW + timedelta(minutes=1))
    (result, panel) = results[STAT]
    (shown,) = rows(result)
    assert shown["share"] is None and shown["farms"] == 0  # the stat's noValue: n/a
    assert panel["fieldConfig"]["defaults"]["noValue"] == "无数据 n/a"
    expected = shapes.expectation(panel, panel["targets"][0])
    assert shapes.check(expected, result, panel) == ["column 'share' is null in every series"]
    assert shapes.check(expected, result, panel, allow_null=True) == []
    assert "series" not in results[TABLE][0]  # no farm, none not live


def test_a_state_older_than_an_hour_is_not_shown_as_now(
    influx: Influxd, published: IndicatorPublisher,
) -> None:
    """Points of a stopped publisher (or of a farm since removed) fall out of the panels."""
    results = panel_results(influx, schema.CITY_COUNTY_TAG, NOW + timedelta(minutes=61))
    assert "series" not in results[STAT][0] and "series" not in results[TABLE][0]
    results = panel_results(influx, schema.CITY_COUNTY_TAG, NOW + timedelta(minutes=59))
    assert "series" in results[STAT][0]


def test_the_table_follows_the_site_variable(
    influx: Influxd, published: IndicatorPublisher,
) -> None:
    results = panel_results(influx, PC, NOW + timedelta(minutes=1), site="m2")
    assert [r["site_id"] for r in rows(results[TABLE][0])] == ["m2"]
    results = panel_results(influx, PC, NOW + timedelta(minutes=1), site="m1")  # live
    assert "series" not in results[TABLE][0]


def test_the_api_gives_the_same_state(
    settings: Settings, registry: Registry, engine: IndicatorEngine,
) -> None:
    state = ServiceState(settings, RegistryHolder(registry))
    client = TestClient(create_app(state, engine), base_url="http://127.0.0.1")
    answer = client.get("/api/v1/facilities/live")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert {f["site_id"]: f["live"] for f in body["farms"]} == EXPECTED_LIVE
    m3 = next(f for f in body["farms"] if f["site_id"] == "m3")
    assert [f["facility"] for f in m3["open_faults"]] == ["storage"]
    assert m3["reasons"][0].startswith("storage fault open since ")
    counts = {c["county"]: (c["live"], c["farms"], c["share"]) for c in body["counts"]}
    assert counts[None] == (3, 6, 0.5) and counts[EMPTY_COUNTY] == (0, 0, None)
    one = client.get("/api/v1/facilities/live", params={"county": YZ}).json()
    assert {f["site_id"] for f in one["farms"]} == {"m4", "m5", "m7"}
    assert [(c["county"], c["live"], c["farms"]) for c in one["counts"]] == [(YZ, 2, 3)]
    unknown = client.get("/api/v1/facilities/live", params={"county": "大同县"})
    assert unknown.status_code == 404 and EMPTY_COUNTY in unknown.json()["known_counties"]
    client.close()
