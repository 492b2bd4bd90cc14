"""dashboards/: generated Grafana JSON, provisioning files and the panel queries.

Grafana itself does not run here; what can be checked without it is: the
committed JSON is what the generator makes, every panel reads the provisioned
InfluxQL datasource with raw queries, the provisioning files have the keys
Grafana needs, panel_queries fills in variables as Grafana does, shapes reads a
panel's expectations right, and every panel query runs on a real InfluxDB
holding contract-shaped points (§9) and returns the shape its panel draws.
tests/test_dashboards_simulated.py does the same on a whole simulated year.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import geojson
import httpx
import pytest
import yaml

from dashboards import generate, mapdata, shapes
from dashboards.drip import WATER_BY_COUNTY, WATER_PER_SITE, empty_by_design
from dashboards.panel_queries import (
    auto_interval_ms,
    format_interval,
    iter_panels,
    panel_queries,
    variable_queries,
)
from devstack.servers import Influxd
from farm_contract import schema
from farm_contract.indicator_params import load_divisions
from farm_contract.indicators import TARGETS, IndicatorId, IndicatorValue, Member
from farm_contract.schema import SITE as SITE_MEASUREMENT
from ingest_service.indicators.live import FarmLive, LiveState, OpenFault, live_points
from ingest_service.indicators.publisher import indicator_points, member_points
from ingest_service.influxql import InfluxQL
from ingest_service.outputs.influx import make_writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.settings import Settings
from ingest_service.telemetry.rollups import TelemetryRollups

ROOT = Path(__file__).resolve().parents[1]
JSON_DIR = ROOT / "dashboards" / "json"
PROVISIONING = ROOT / "dashboards" / "provisioning"
SHANGHAI = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 5, 1, tzinfo=UTC)
END = START + timedelta(hours=1)


COUNTY_QUERY = 'SHOW TAG VALUES FROM "indicator" WITH KEY = "county" WHERE "period" = \'$year\''
"""The counties of the chosen year's published rows (the registry they were computed with)."""


def committed() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in JSON_DIR.glob("*.json")}


def test_committed_json_is_generated(tmp_path: Path) -> None:
    written = generate.write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in JSON_DIR.glob("*.json"))
    for path in written:
        assert path.read_bytes() == (JSON_DIR / path.name).read_bytes(), (
            f"{path.name} is stale: run python -m dashboards.generate")
    # Deterministic: a second run writes the same bytes.
    again = generate.write_all(tmp_path / "again")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in written]


def test_committed_maps_are_generated(tmp_path: Path) -> None:
    written = mapdata.write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(
        p.name for p in mapdata.MAPS_DIR.glob("*.geojson"))
    for path in written:
        assert path.read_bytes() == (mapdata.MAPS_DIR / path.name).read_bytes(), (
            f"dashboards/maps/{path.name} is stale: run python -m dashboards.generate")


DATONG_BOX = (112.0, 39.0, 115.0, 41.0)
"""(west, south, east, north): all of 大同市 lies inside."""


def test_county_seats_geojson_names_every_division() -> None:
    path = mapdata.MAPS_DIR / mapdata.COUNTY_SEATS
    assert path.stat().st_size < 300_000
    collection = geojson.loads(path.read_text(encoding="utf-8"))
    assert isinstance(collection, geojson.FeatureCollection)
    assert collection.is_valid, collection.errors()
    divisions = load_divisions()
    assert [f["properties"]["name"] for f in collection["features"]] == list(divisions.counties)
    assert len(divisions.counties) == 10
    west, south, east, north = DATONG_BOX
    for feature in collection["features"]:
        assert isinstance(feature["geometry"], geojson.Point)
        lon, lat = feature["geometry"]["coordinates"]
        assert west < lon < east and south < lat < north, feature["properties"]["name"]
        assert feature["properties"]["city"] == divisions.city
    # Ten distinct places, not one point repeated.
    assert len({tuple(f["geometry"]["coordinates"]) for f in collection["features"]}) == 10
    blank = geojson.loads((mapdata.MAPS_DIR / mapdata.BLANK).read_text(encoding="utf-8"))
    assert isinstance(blank, geojson.FeatureCollection) and blank.is_valid
    assert blank["features"] == []


def test_generate_cli_writes_to_out(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "city-overview.json").is_file()


@pytest.mark.parametrize("name", sorted(committed()))
def test_panels_use_the_datasource_and_raw_influxql(name: str) -> None:
    board = committed()[name]
    panels = list(iter_panels(board["panels"]))
    assert panels
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert board["uid"] and board["title"]
    for panel in panels:
        assert panel["datasource"] == {"type": "influxdb", "uid": "farm-influx"}, panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "farm-influx"
            assert target["rawQuery"] is True
            assert target["query"].startswith("SELECT ")
            query = target["query"]
            # Bounded in time: the range, or "as of its end" for latest states; the
            # registry facts of the site measurement are timeless; published figures
            # are bounded by their year.
            assert ("$timeFilter" in query or "time <= ${__to}ms" in query
                    or f'FROM "{SITE_MEASUREMENT}"' in query
                    or "\"period\" = '$year'" in query), (panel["title"], query)
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "farm-influx"
    assert board["timezone"] == "Asia/Shanghai", "Datong's year and days, not the viewer's"


@pytest.mark.parametrize("name", sorted(committed()))
def test_every_dashboard_is_bilingual_linked_and_filtered(name: str) -> None:
    board = committed()[name]
    cjk = re.compile(r"[\u4e00-\u9fff]")
    assert " / " in board["title"] and cjk.search(board["title"]), board["title"]
    for panel in iter_panels(board["panels"]):
        assert " / " in panel["title"] and cjk.search(panel["title"]), panel["title"]
        assert panel.get("description"), f"{panel['title']}: say what it shows"
    (link,) = board["links"]
    assert link["type"] == "dashboards" and link["tags"] == ["farm"]
    assert link["includeVars"] and link["keepTime"]
    assert "farm" in board["tags"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables)[:2] == ["year", "county"], "county follows the chosen year"
    assert variables["year"]["query"] == 'SHOW TAG VALUES FROM "indicator" WITH KEY = "period"'
    assert variables["year"]["sort"] == 4, "newest year first"
    assert variables["county"]["query"] == COUNTY_QUERY
    assert variables["county"]["current"]["value"] == schema.CITY_COUNTY_TAG
    if name not in ("city-overview.json", "indicator-members.json"):
        site = variables["site"]
        assert site["includeAll"] and site["allValue"] == ".*"
        assert site["current"]["value"] == "$__all"
        assert "$county" in site["query"]
        queries = [t["query"] for p in iter_panels(board["panels"]) for t in p["targets"]]
        filtered = [q for q in queries if 'FROM "rejection"' not in q]
        assert all("$county" in q for q in filtered), "every farm panel follows $county"
        assert sum("$site" in q for q in filtered) >= len(filtered) - 2


def test_dashboards_cover_the_issue() -> None:
    boards = committed()
    kinds = {name: {p["type"] for p in iter_panels(b["panels"])} for name, b in boards.items()}
    assert {"gauge", "barchart", "table", "timeseries", "geomap"} <= kinds["city-overview.json"]
    text = {name: json.dumps(b, ensure_ascii=False) for name, b in boards.items()}
    for needle in ("soil_moisture_vwc", "flow_lpm", "pressure_kpa", "volume_m3",
                   "water_quota_m3_per_mu", "fertilizer_l"):
        assert needle in text["drip-irrigation.json"], needle
    for needle in ("lagoon_level_pct", "facility_fault", "manure_treated", "manure_utilized",
                   schema.FACILITY_LIVE):
        assert needle in text["livestock-manure.json"], needle
    for needle in ('GROUP BY \\"use\\"', "harvest", "straw_burning", "straw_utilization_rate"):
        assert needle in text["straw.json"], needle
    for needle in ("battery_v", "rssi_dbm", "device_status", "rejection"):
        assert needle in text["devices.json"], needle
    lagoon = next(p for p in iter_panels(boards["livestock-manure.json"]["panels"])
                  if p["type"] == "timeseries" and "lagoon" in p["targets"][0]["query"])
    assert [s["value"] for s in lagoon["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [
        None, 80, 90]


def test_city_overview_content() -> None:
    board = committed()["city-overview.json"]
    assert board["title"] == "City overview / 城市总览"
    panels = list(iter_panels(board["panels"]))
    gauges = [p for p in panels if p["type"] == "gauge"]
    seen = set()
    for gauge in gauges:
        query = gauge["targets"][0]["query"]
        (indicator,) = re.findall(r"\"indicator\" = '(\w+)'", query)
        steps = gauge["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1] == {"color": "green", "value": TARGETS[IndicatorId(indicator)]}
        assert [s["color"] for s in steps] == ["red", "orange", "green"]
        assert f'FROM "{schema.INDICATOR}"' in query and "/^$county$/" in query
        seen.add(indicator)
    assert seen == {i.value for i in IndicatorId}
    assert sorted(TARGETS.values()) == [0.85, 0.9, 0.98, 1.0]
    trends = [p for p in panels if p["type"] == "timeseries"]
    assert len(trends) == 4
    assert all("GROUP BY time($__interval)" in p["targets"][0]["query"] for p in trends)
    ranking = next(p for p in panels if p["type"] == "table" and "ranking" in p["title"])
    assert 'GROUP BY "indicator", "county"' in ranking["targets"][0]["query"]
    assert ranking["transformations"][-1]["id"] == "sortBy"
    bars = next(p for p in panels if p["type"] == "barchart")
    assert bars["options"]["xField"] == "county"
    geomap = next(p for p in panels if p["type"] == "geomap")
    counties, layer = geomap["options"]["layers"]
    # The counties (a served file, no query) under the site markers; tiles from the server.
    assert counties["type"] == "geojson" and layer["type"] == "markers"
    assert counties["config"]["src"] == f"{mapdata.URL_PREFIX}/{mapdata.COUNTY_SEATS}"
    assert counties["config"]["style"]["text"] == {"field": "name", "fixed": "", "mode": "field"}
    assert geomap["options"]["basemap"]["type"] == "default"
    assert layer["location"] == {"latitude": "lat", "longitude": "lon", "mode": "coords"}
    assert layer["config"]["style"]["color"]["field"] == "online"
    assert f'FROM "{SITE_MEASUREMENT}"' in geomap["targets"][0]["query"]
    assert geomap["transformations"][0] == {"id": "joinByField",
                                            "options": {"byField": "site_id", "mode": "outer"}}
    year, county = board["templating"]["list"]
    assert (year["name"], county["name"]) == ("year", "county")
    assert county["query"] == COUNTY_QUERY
    assert county["current"]["value"] == schema.CITY_COUNTY_TAG


def test_no_panel_turns_na_into_zero_or_an_older_figure() -> None:
    """n/a (no ``value`` field) must stay empty: no fill but fill(none), and a published
    figure is read as its latest point, never with last() (an older point's value)."""
    for name, board in committed().items():
        for panel in iter_panels(board["panels"]):
            for target in panel["targets"]:
                query = target["query"]
                assert set(re.findall(r"fill\((\w+)\)", query)) <= {"none"}, (name, query)
                if f'FROM "{schema.INDICATOR}"' in query and panel["type"] != "timeseries":
                    assert "last(" not in query, (name, panel["title"], query)
                    assert "ORDER BY time DESC LIMIT 1" in query, (name, panel["title"])
                    assert "\"period\" = '$year'" in query, (name, panel["title"])
            if panel["type"] == "gauge":
                assert panel["fieldConfig"]["defaults"]["noValue"] == "无数据 n/a"


def test_datasource_provisioning() -> None:
    data = yaml.safe_load((PROVISIONING / "datasources" / "influxdb.yaml").read_text())
    assert data["apiVersion"] == 1
    (source,) = data["datasources"]
    for key in ("name", "type", "access", "url", "uid"):
        assert source.get(key), key
    assert source["uid"] == "farm-influx" and source["type"] == "influxdb"
    assert source["access"] == "proxy"
    assert source["jsonData"]["dbName"] == "farm"
    assert source["jsonData"].get("version", "InfluxQL") == "InfluxQL"
    header = source["jsonData"]["httpHeaderName1"]
    assert header == "Authorization"
    assert source["secureJsonData"]["httpHeaderValue1"].startswith("Token $")


def test_dashboard_provider_provisioning() -> None:
    data = yaml.safe_load((PROVISIONING / "dashboards" / "farm.yaml").read_text())
    assert data["apiVersion"] == 1
    (provider,) = data["providers"]
    for key in ("name", "type"):
        assert provider.get(key), key
    assert provider["type"] == "file"
    assert provider["folder"] == "Farm / 农业"
    assert provider["options"]["path"].startswith("/")


# --- panel_queries ----------------------------------------------------------------


def synthetic_board() -> dict[str, Any]:
    """Every variable syntax, a hidden target and a collapsed row."""
    q = generate.target
    box = generate.Box(0, 0, 12, 8)
    panels = [
        generate.panel("timeseries", "plain", box, [
            q('SELECT mean("x") FROM "m" WHERE "county" = \'$county\' AND $timeFilter '
              "GROUP BY time($__interval)"),
            q('SELECT mean("x") FROM "m" WHERE "county" =~ /^${county}$/ AND $timeFilter '
              "GROUP BY time($interval)", "B"),
            {**q('SELECT "x" FROM "m" WHERE $unknown', "C"), "hide": True},
        ]),
        {"type": "row", "title": "row", "collapsed": True, "panels": [
            generate.panel("table", "in row", box, [
                q('SELECT last("x") FROM "m" WHERE "site_id" =~ /[[site]]/ AND $timeFilter '
                  "AND $__interval_ms > 0 AND $__from < $__to"),
            ]),
        ]},
    ]
    variables = [
        generate.query_variable("county", "County", 'SHOW TAG VALUES WITH KEY = "county"', "all"),
        generate.query_variable("site", "Site", 'SHOW TAG VALUES WITH KEY = "site_id"', "s1"),
    ]
    return generate.dashboard("t", "t", panels, variables=variables)


def test_panel_queries_substitutes_like_grafana() -> None:
    start_ms = int(START.timestamp() * 1000)
    queries = panel_queries(synthetic_board(), {"county": "云州区"}, START, END)
    assert [(title, ref) for title, ref, _ in queries] == [
        ("plain", "A"), ("plain", "B"), ("in row", "A")]
    time_filter = f"time >= {start_ms}ms and time <= {start_ms + 3_600_000}ms"
    # 1 h over 1000 points = 3.6 s, which Grafana rounds to 5 s.
    assert queries[0][2] == (
        f'SELECT mean("x") FROM "m" WHERE "county" = \'云州区\' AND {time_filter} '
        "GROUP BY time(5s)")
    assert queries[1][2] == (
        f'SELECT mean("x") FROM "m" WHERE "county" =~ /^云州区$/ AND {time_filter} '
        "GROUP BY time(5s)")
    # The dashboard's current value when no value is given.
    assert queries[2][2] == (
        f'SELECT last("x") FROM "m" WHERE "site_id" =~ /s1/ AND {time_filter} '
        f"AND 5000 > 0 AND {start_ms} < {start_ms + 3_600_000}")


def test_panel_queries_escapes_regex_values_only_in_regexes() -> None:
    queries = panel_queries(synthetic_board(), {"county": "a.b/c"}, START, END)
    assert "\"county\" = 'a.b/c'" in queries[0][2]
    assert r'"county" =~ /^a\.b\/c$/' in queries[1][2]
    multi = panel_queries(synthetic_board(), {"county": ["x", "y+"]}, START, END)
    assert r'"county" =~ /^(x|y\+)$/' in multi[1][2]


def test_panel_queries_intervals() -> None:
    assert format_interval(3_600_000) == "1h" and format_interval(500) == "500ms"
    assert auto_interval_ms(0, 7 * 86_400_000, 1000) == 600_000
    assert auto_interval_ms(0, 3_600_000, 1000, "1m") == 60_000
    fixed = panel_queries(synthetic_board(), {}, START, END, interval="1h")
    assert "GROUP BY time(1h)" in fixed[0][2]
    floor = panel_queries(synthetic_board(), {}, 0, 3_600_000, min_interval="1m")
    assert "GROUP BY time(1m)" in floor[0][2]


def test_panel_queries_refuses_unknown_variables() -> None:
    board = generate.dashboard("t", "t", [generate.panel(
        "timeseries", "p", generate.Box(0, 0, 1, 1),
        [generate.target('SELECT "x" FROM "m" WHERE "a" = \'$nope\' AND $timeFilter')])])
    with pytest.raises(KeyError, match="nope"):
        panel_queries(board, {}, START, END)


@pytest.mark.parametrize("name", sorted(committed()))
def test_panel_queries_leave_no_variables(name: str) -> None:
    board = committed()[name]
    queries = panel_queries(board, {}, START, END)
    assert len(queries) == sum(len(p["targets"]) for p in iter_panels(board["panels"]))
    for title, ref, query in queries:
        assert "$" not in query.replace("$/", ""), (title, ref, query)
        assert "[[" not in query, (title, ref, query)
    for _, query in variable_queries(board):
        assert "$" not in query.replace("$/", "")


def test_all_option_becomes_its_custom_value_unescaped() -> None:
    board = committed()["drip-irrigation.json"]
    queries = panel_queries(board, {"county": "all"}, START, END)
    assert all('"site_id" =~ /^.*$/' in q for _, _, q in queries if "site_id\" =~" in q)
    one = panel_queries(board, {"county": "all", "site": "a.b"}, START, END)
    assert any(r'"site_id" =~ /^a\.b$/' in q for _, _, q in one)
    no_all_value = generate.dashboard("t", "t", [generate.panel(
        "timeseries", "p", generate.Box(0, 0, 1, 1),
        [generate.target('SELECT "x" FROM "m" WHERE "s" =~ /^$s$/ AND $timeFilter')])],
        variables=[{**generate.query_variable("s", "S", "SHOW TAG VALUES WITH KEY = \"s\"", "x",
                                              include_all=True), "allValue": None}])
    with pytest.raises(ValueError, match="allValue"):
        panel_queries(no_all_value, {}, START, END)


def test_shapes_reads_columns_tags_and_time_grouping() -> None:
    query = ('SELECT sum("w") AS "water_m3" FROM (SELECT spread("v") AS "w" FROM "t" '
             'WHERE $timeFilter GROUP BY "site_id", "device_id") GROUP BY "site_id"')
    assert shapes.selected_columns(query) == (shapes.Column("water_m3", True),)
    assert shapes.group_by(query) == (("site_id",), False)
    query = ('SELECT last("seq") AS "seq", "type" FROM "event" WHERE "x" = \'a, b\' '
             'GROUP BY time(1h), "site_id", "facility" fill(none)')
    assert shapes.selected_columns(query) == (shapes.Column("seq", False),
                                              shapes.Column("type", False))
    assert shapes.group_by(query) == (("site_id", "facility"), True)
    assert shapes.selected_columns('SELECT count("detail") FROM "r"') == (
        shapes.Column("count", True),)


def test_shapes_finds_what_a_panel_cannot_draw() -> None:
    gauge = {"type": "gauge", "fieldConfig": {"defaults": {"min": 0, "max": 1}}}
    target = {"query": 'SELECT last("value") FROM "indicator"', "resultFormat": "time_series"}
    expected = shapes.expectation(gauge, target)
    good = {"series": [{"name": "indicator", "columns": ["time", "last"], "values": [[1, 0.5]]}]}
    assert shapes.check(expected, good, gauge) == []
    assert shapes.check(expected, {"statement_id": 0}, gauge) == ["no data"]
    two = {"series": [*good["series"], *good["series"]]}
    assert shapes.check(expected, two, gauge) == ["gauge needs one series, got 2"]
    high = {"series": [{"name": "i", "columns": ["time", "last"], "values": [[1, 3.0]]}]}
    assert "not a number in [0, 1]" in shapes.check(expected, high, gauge)[0]
    table = {"type": "table"}
    grouped = shapes.expectation(table, {"query": 'SELECT sum("m") AS "t" FROM "e" GROUP BY "use"',
                                         "resultFormat": "table"})
    untagged = {"series": [{"name": "e", "columns": ["time", "t"], "values": [[0, None]]}]}
    assert shapes.check(grouped, untagged, table) == [
        "series: grouped tags ['use'] missing", "column 't' is null in every series"]
    # One n/a series among others is what a panel shows as empty; n/a everywhere is not,
    # unless the caller expects it.
    one_na = {"series": [{"name": "e", "tags": {"use": u}, "columns": ["time", "t"],
                          "values": [[0, v]]} for u, v in (("a", None), ("b", 1.0))]}
    assert shapes.check(grouped, one_na, table) == []
    all_na = {"series": one_na["series"][:1]}
    assert shapes.check(grouped, all_na, table) == ["column 't' is null in every series"]
    assert shapes.check(grouped, all_na, table, allow_null=True) == []
    na_gauge = {**gauge, "fieldConfig": {"defaults": {"min": 0, "max": 1, "noValue": "n/a"}}}
    null = {"series": [{"name": "i", "columns": ["time", "last"], "values": [[1, None]]}]}
    assert any("noValue" in p for p in shapes.check(expected, null, na_gauge))
    assert shapes.check(expected, null, na_gauge, allow_null=True) == []
    assert "not a number" in shapes.check(expected, null, gauge, allow_null=True)[0]
    stat = {"type": "stat", "fieldConfig": {"defaults": {"noValue": "n/a"}}}
    two_numbers = shapes.expectation(stat, {"query": 'SELECT "share", "farms" FROM "f"'})
    live = {"series": [{"name": "f", "columns": ["time", "share", "farms"],
                        "values": [[1, 0.5, 2]]}]}
    assert shapes.check(two_numbers, live, stat) == []
    assert shapes.check(two_numbers, {"series": live["series"] * 2}, stat) == [
        "stat needs one series, got 2"]
    text = {"series": [{**live["series"][0], "values": [[1, "x", 2]]}]}
    assert shapes.check(two_numbers, text, stat) == ["stat's last row ['x', 2] is not numbers"]
    ordered = ('SELECT "v" FROM (SELECT "v", "d" FROM "i" WHERE time <= 1ms GROUP BY "c" '
               'ORDER BY time DESC LIMIT 1) GROUP BY "c", "k" ORDER BY time DESC LIMIT 1')
    assert shapes.group_by(ordered) == (("c", "k"), False)
    assert shapes.selected_columns(ordered) == (shapes.Column("v", False),)
    join = {"transformations": [{"id": "joinByField", "options": {"byField": "site_id"}}]}
    a = {"series": [{"name": "a", "tags": {"site_id": "s1"}, "columns": ["time", "x"],
                     "values": [[0, 1]]}]}
    b = {"series": [{"name": "b", "tags": {"site_id": "s2"}, "columns": ["time", "y"],
                     "values": [[0, 1]]}]}
    assert shapes.check_transformations(join, {"A": a, "B": b}) == [
        "joined queries share no 'site_id'"]
    assert shapes.check_transformations(join, {"A": a, "B": a}) == []


# --- every panel query on a real InfluxDB ---------------------------------------

COUNTY = "平城区"
SITE_POINTS = (
    f'{SITE_MEASUREMENT},site_id=drip-1,county={COUNTY},site_type=drip,name=滴灌一号'
    " lat=40.1,lon=113.3,large_scale=false,area_mu=120.0,water_quota_m3_per_mu=300.0 {t0}\n"
    f'{SITE_MEASUREMENT},site_id=farm-1,county={COUNTY},site_type=manure,name=养殖场'
    " lat=40.2,lon=113.5,large_scale=true {t0}\n"
    f'{SITE_MEASUREMENT},site_id=straw-1,county={COUNTY},site_type=straw,name=秸秆站'
    " lat=40.0,lon=113.6,large_scale=false,area_mu=300.0 {t0}\n"
)


def event(site: str, site_type: str, kind: str, fields: str, ts: int, **tags: str) -> str:
    extra = "".join(f",{k}={v}" for k, v in sorted(tags.items()))
    return (f"{schema.EVENT},site_id={site},device_id=dev-{site},site_type={site_type},"
            f"county={COUNTY},type={kind}{extra} {fields},seq={ts % 1000}i {ts}")


def year_of(time_ms: int) -> int:
    return datetime.fromtimestamp(time_ms / 1000, SHANGHAI).year


def indicator_lines(time_ms: int, year: int) -> list[str]:
    """``indicator`` and ``indicator_member`` points as the publisher writes them."""
    rows, members = [], []
    for indicator in IndicatorId:
        for county in (None, COUNTY):
            rows.append(IndicatorValue.of(indicator, "city" if county is None else "county",
                                          county, year, 9, 10))
        members.append(Member(indicator=indicator, year=year, county=COUNTY, site_id="farm-1",
                              name="养殖场", numerator=9, denominator=10, status="equipped"))
    time_ns = time_ms * 1_000_000
    body = encode(indicator_points(rows, time_ns) + member_points(year, members, (), time_ns))
    return [line[: -len(str(time_ns))] + str(time_ms)
            for line in body.decode().splitlines()]  # this body is written in ms


def live_lines(time_ms: int) -> list[str]:
    """``facility_live`` points as the publisher writes them: farm-1 reports but its
    lagoon fault (below) is open, so it is not live."""
    fault = OpenFault("lagoon", time_ms)
    farm = FarmLive("farm-1", "养殖场", COUNTY, reporting=True, last_seen_ms=time_ms,
                    open_faults=(fault,))
    state = LiveState(datetime.fromtimestamp(time_ms / 1000, UTC), 24, [farm], [COUNTY])
    time_ns = time_ms * 1_000_000
    body = encode(live_points(state, time_ns, SHANGHAI))
    return [line[: -len(str(time_ns))] + str(time_ms) for line in body.decode().splitlines()]


def contract_points(now_ms: int) -> str:
    """A few points of each measurement the dashboards read, as the ingest service writes them."""
    lines = [SITE_POINTS.format(t0=now_ms - 7_200_000).strip()]
    for step, minutes_ago in enumerate((30, 10)):
        ts = now_ms - minutes_ago * 60_000
        lines += indicator_lines(ts, year_of(now_ms))
        lines += live_lines(ts)
        lines += [
            f"{schema.TELEMETRY},site_id=drip-1,device_id=dev-1,site_type=drip,county={COUNTY}"
            f" soil_moisture_vwc=0.31,flow_lpm=12.5,pressure_kpa=180.0,volume_m3={100.0 + step},"
            f"fertilizer_l={20.0 + step},battery_v=12.6,rssi_dbm=-80.0,valve_open=true,"
            f"seq={minutes_ago}i {ts}",
            f"{schema.TELEMETRY},site_id=farm-1,device_id=dev-2,site_type=manure,county={COUNTY}"
            f" lagoon_level_pct=85.0,digester_temp_c=35.0,biogas_m3h=20.0,separator_on=true,"
            f"pump_on=false,nh3_ppm=8.0,battery_v=12.1,rssi_dbm=-100.0,seq={minutes_ago}i {ts}",
            f"{schema.DEVICE_STATUS},site_id=drip-1,device_id=dev-1,county={COUNTY} online=true"
            f" {ts}",
            f"{schema.DEVICE_STATUS},site_id=farm-1,device_id=dev-2,county={COUNTY} online=false"
            f" {ts}",
            f"{schema.REJECTION},reason=unknown_device"
            f' topic="farm/v1/s1/nobody/telemetry",payload="{{\\"v\\":1}}",'
            f'detail="device nobody is not in the registry" {ts}',
            event("farm-1", "manure", "manure_treated", "mass_t=12.5", ts),
            event("farm-1", "manure", "manure_utilized", "mass_t=10.0", ts, use="fertilizer"),
            event("straw-1", "straw", "straw_utilized", "mass_t=3.0", ts, use="feed"),
        ]
    two_days_ago = now_ms - 2 * 86_400_000  # the daily water and fertiliser bars need two days
    lines.append(
        f"{schema.TELEMETRY},site_id=drip-1,device_id=dev-1,site_type=drip,county={COUNTY}"
        f" volume_m3=90.0,fertilizer_l=15.0,seq=1i {two_days_ago}")
    t = now_ms - 20 * 60_000
    lines += [
        event("farm-1", "manure", "facility_fault", "", t, facility="lagoon").replace(" ,", " "),
        event("straw-1", "straw", "harvest", "grain_t=10.0", t, crop="corn"),
        event("straw-1", "straw", "straw_burning", "", t + 1).replace(" ,", " "),
    ]
    return "\n".join(lines) + "\n"


def roll_up(influxd: Influxd, now: datetime) -> None:
    """What the ingest service's telemetry roll-up maintainer would have written by ``now``."""
    settings = Settings(influx_url=influxd.url, influx_api="v1")
    query, writer = InfluxQL(settings), make_writer(settings)
    try:
        TelemetryRollups(query, writer, settings.tz).maintain_once(now)
    finally:
        query.close()
        writer.close()


RANGES_MS = {"1 day": 86_400_000, "3 days": 3 * 86_400_000, "90 days": 90 * 86_400_000}
"""One range per resolution: raw (one site), hourly, daily roll-ups."""


def check_board(influxd: Influxd, name: str, board: dict[str, Any], variables: dict[str, str],
                start: int, end: int) -> None:
    """Every active target has its panel's shape and bounded rows; gated-off ones are empty."""
    panels = {p["title"]: p for p in iter_panels(board["panels"])}
    results: dict[str, dict[str, Any]] = {}
    for title, ref, query in panel_queries(board, variables, start, end):
        result = influxd.query(query)["results"][0]
        where = (name, variables, title, ref, query)
        assert shapes.row_count(result) <= shapes.MAX_ROWS, where
        if not shapes.active(query):
            assert "series" not in result and "error" not in result, where
            continue
        results.setdefault(title, {})[ref] = result
        target = next(t for t in panels[title]["targets"] if t["refId"] == ref)
        problems = shapes.check(shapes.expectation(panels[title], target), result,
                                panels[title])
        assert not problems, (*where, problems)
    empty = empty_by_design(variables["county"], variables["site"]) & set(panels)
    assert not empty & set(results), (name, variables, "gated off by design, yet ran")
    ran = set(results) | empty
    assert ran == set(panels), (name, variables, set(panels) - set(results))
    for title, by_ref in results.items():
        assert not shapes.check_transformations(panels[title], by_ref), (name, title)


@pytest.mark.integration
def test_every_panel_query_returns_data_of_its_shape(influxd: Influxd) -> None:
    now_ms = int(time.time() * 1000)
    response = httpx.post(
        f"{influxd.url}/write", params={"db": "farm", "precision": "ms"},
        content=contract_points(now_ms).encode(), timeout=10,
    )
    assert response.status_code == 204, response.text
    roll_up(influxd, datetime.fromtimestamp(now_ms / 1000, UTC) + timedelta(hours=1))
    end = now_ms + 60_000
    year = str(year_of(now_ms))
    for name, board in committed().items():
        sites: set[str] = set()
        for variable, query in variable_queries(board, {"year": year}):
            result: Any = influxd.query(query)["results"]
            values = {row[1] for row in result[0]["series"][0]["values"]}
            if variable == "county":
                assert {schema.CITY_COUNTY_TAG, COUNTY} <= values
            elif variable == "year":
                assert values == {year}
            else:
                assert values <= {"drip-1", "farm-1", "straw-1"} and values, (name, values)
                sites = values
        for county in (schema.CITY_COUNTY_TAG, COUNTY):
            for site in ["$__all", *sorted(sites)[:1]]:
                for span in RANGES_MS.values():
                    check_board(influxd, name, board,
                                {"county": county, "site": site, "year": year},
                                end - span, end)


@pytest.mark.integration
def test_devices_table_is_bounded_for_the_city_and_complete_for_a_county(
    influxd: Influxd,
) -> None:
    """More devices than the city-wide list shows: for "all" the table lists the
    ``CITY_LIST`` heard from longest ago; for one county, every device of it."""
    from dashboards.devices import CITY_LIST

    now_ms = int(time.time() * 1000)
    month_ns = (now_ms - 86_400_000) * 1_000_000
    devices = CITY_LIST + 100
    lines = [f"device_last_seen,county=c{i % 4},device_id=d{i:04d},site_id=s{i:04d},"
             f"site_type=drip seen_ms={now_ms - i * 60_000}i,battery_v=12.5,rssi_dbm=-90.0 "
             f"{month_ns}" for i in range(devices)]
    response = httpx.post(f"{influxd.url}/write", params={"db": "farm"},
                          content="\n".join(lines).encode(), timeout=30)
    assert response.status_code == 204, response.text
    board = committed()["devices.json"]

    def table(county: str) -> dict[tuple[str, str], Any]:
        out: dict[tuple[str, str], Any] = {}
        for title, ref, query in panel_queries(board, {"county": county, "site": "$__all"},
                                               now_ms - 86_400_000, now_ms + 60_000):
            if title in ("Devices / 设备清单", "Devices by county / 各区县设备"):
                result: Any = influxd.query(query)
                out[(title, ref)] = result["results"][0]
        return out

    city = table(schema.CITY_COUNTY_TAG)
    listed = city[("Devices / 设备清单", "B")]["series"][0]
    assert "series" not in city[("Devices / 设备清单", "A")]
    assert len(listed["values"]) == CITY_LIST
    seen = [row[listed["columns"].index("seen_ms")] for row in listed["values"]]
    assert max(seen) == now_ms - (devices - CITY_LIST) * 60_000  # the oldest ones
    summary = city[("Devices by county / 各区县设备", "A")]["series"]
    assert {s["tags"]["county"]: s["values"][0][1] for s in summary} == {
        f"c{k}": devices // 4 for k in range(4)}
    one = table("c1")
    assert "series" not in one[("Devices / 设备清单", "B")]
    assert len(one[("Devices / 设备清单", "A")]["series"]) == devices // 4


@pytest.mark.integration
def test_drip_county_rows_are_the_sums_of_their_site_rows(influxd: Influxd) -> None:
    """For the whole city the drip use tables show a row per county (issue 15: a row per
    site is thousands), from the county daily roll-up; each must be what adding up that
    county's per-site rows (one county chosen, from ``site_use_1d``) gives."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start_ms = int((now - timedelta(days=4)).timestamp() * 1000)
    sites = {"d-1": ("平城区", 120.0, 300.0), "d-2": ("平城区", 80.0, 250.0),
             "d-3": ("平城区", 50.0, None), "d-4": ("云州区", 200.0, 400.0),
             "d-5": ("云州区", 30.0, 350.0)}
    lines = []
    for n, (site, (county, area, quota)) in enumerate(sites.items()):
        quota_field = "" if quota is None else f",water_quota_m3_per_mu={quota}"
        lines.append(f"{SITE_MEASUREMENT},site_id={site},county={county},site_type=drip,"
                     f"name=n{n} area_mu={area}{quota_field} {start_ms}")
        for device in range(1 + n % 2):  # sites with one and with two meters
            volume, litres = 1000.0 * n, 10.0 * n
            for step in range(4 * 4):  # every 6 h for 4 days
                volume += 3.5 + n + device * 0.25 + step % 3
                litres += 0.5 + (n + step) % 2
                lines.append(f"{schema.TELEMETRY},site_id={site},device_id={site}-{device},"
                             f"site_type=drip,county={county} volume_m3={volume},"
                             f"fertilizer_l={litres},seq={step}i "
                             f"{start_ms + step * 6 * 3_600_000}")
    response = httpx.post(f"{influxd.url}/write", params={"db": "farm", "precision": "ms"},
                          content="\n".join(lines).encode(), timeout=10)
    assert response.status_code == 204, response.text
    roll_up(influxd, now + timedelta(hours=1))
    board = committed()["drip-irrigation.json"]
    start, end = start_ms - 86_400_000, int(now.timestamp() * 1000) + 60_000

    def rows(county: str, site: str = "$__all") -> dict[tuple[str, str], list[dict[str, Any]]]:
        out: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for title, ref, query in panel_queries(board, {"county": county, "site": site},
                                               start, end):
            result: Any = influxd.query(query)["results"][0]
            assert "error" not in result, (title, ref, result)
            out[(title, ref)] = [
                {**(s.get("tags") or {}), **dict(zip(s["columns"], v, strict=True))}
                for s in result.get("series", []) for v in s["values"]]
        return out

    water, fertiliser = WATER_PER_SITE, "Fertigation total / 施肥总量"
    by_county = WATER_BY_COUNTY
    city = rows(schema.CITY_COUNTY_TAG)
    assert not city[(water, "A")] and not city[(water, "B")] and not city[(fertiliser, "A")]
    use = {r["county"]: r["water_m3"] for r in city[(by_county, "A")]}
    areas = {r["county"]: r for r in city[(by_county, "B")]}
    fert = {r["county"]: r["fertilizer_l"] for r in city[(fertiliser, "B")]}
    assert set(use) == set(areas) == set(fert) == {"平城区", "云州区"}
    for county in use:
        one = rows(county)
        assert not one[(fertiliser, "B")]
        site_use = [r["water_m3"] for r in one[(water, "A")]]
        facts = one[(water, "B")]
        site_fert = [r["fertilizer_l"] for r in one[(fertiliser, "A")]]
        in_county = [s for s, (c, _, _) in sites.items() if c == county]
        assert len(site_use) == len(facts) == len(site_fert) == len(in_county)
        assert use[county] == pytest.approx(sum(site_use), rel=1e-12) and use[county] > 0
        assert fert[county] == pytest.approx(sum(site_fert), rel=1e-12) and fert[county] > 0
        quoted = [f for f in facts if f["water_quota_m3_per_mu"] is not None]
        assert areas[county]["area_mu"] == pytest.approx(sum(f["area_mu"] for f in facts))
        assert areas[county]["quota_area_mu"] == pytest.approx(
            sum(f["area_mu"] for f in quoted))
        assert areas[county]["quota_m3"] == pytest.approx(
            sum(f["area_mu"] * f["water_quota_m3_per_mu"] for f in quoted))
        assert [r["water_m3"] for r in one[(by_county, "A")]] == [use[county]]
        assert not one[(water, "C")] and not one[(fertiliser, "C")]
    # one site of the whole city: its own row (the second gate set), as within its county
    site = rows(schema.CITY_COUNTY_TAG, "d-4")
    in_county = {r["site_id"]: r for r in rows("云州区")[(water, "A")]}
    assert site[(water, "C")] == [in_county["d-4"]] and not site[(water, "A")]
    assert [r["site_id"] for r in site[(water, "D")]] == ["d-4"]
    assert [r["site_id"] for r in site[(fertiliser, "C")]] == ["d-4"]
    assert not site[(by_county, "A")] and not site[(fertiliser, "B")]
