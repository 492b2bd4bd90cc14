"""Grafana for every year (issue 13): the publisher's ``indicator`` and ``indicator_member``
points and every panel that reads them, on a real InfluxDB, for two past years and
the current one, the city and each county (one of them n/a), across Datong's year
boundary, after a registry change and a late event.

The panel queries are run as Grafana would send them (dashboards.panel_queries) and
their rows compared with the engine's figures and with numbers worked out by hand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from dashboards import shapes
from dashboards.panel_queries import iter_panels, panel_queries, variable_queries
from devstack.servers import Influxd
from farm_contract import schema
from farm_contract.indicator_params import load_divisions
from farm_contract.indicators import IndicatorId, IndicatorValue
from farm_contract.registry import Registry
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.indicators.late_events import LateEventMarker
from ingest_service.indicators.publisher import (
    INDICATOR_MEMBER,
    IndicatorPublisher,
    YearSchedule,
    indicator_points,
)
from ingest_service.influxql import InfluxQL
from ingest_service.model import FieldValue, Point
from ingest_service.outputs.influx import make_writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.settings import Settings

pytestmark = pytest.mark.integration

SHANGHAI = ZoneInfo("Asia/Shanghai")
PC, YG = "平城区", "阳高县"
ALL = schema.CITY_COUNTY_TAG
JSON_DIR = Path(__file__).resolve().parents[1] / "dashboards" / "json"
BOARDS = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in JSON_DIR.glob("*.json")}
FILM = IndicatorId.FILM_RECOVERY_RATE.value
STRAW = IndicatorId.STRAW_UTILIZATION_RATE.value
MANURE = IndicatorId.MANURE_FACILITY_RATE.value
NOW = datetime(2026, 5, 1, tzinfo=UTC)
"""The publisher's "now": 2026 is the current year, 2024 and 2025 are past."""


DIVISIONS = list(load_divisions().counties)
"""Datong's ten county-level divisions: every year lists all of them (docs/indicators.md §1)."""
assert PC in DIVISIONS and YG in DIVISIONS


def sites_csv(m1_large_scale: bool, with_d2: bool = True) -> str:
    return ("site_id,name,county,site_type,lat,lon,large_scale,area_mu\n"
            f"d1,滴灌一号,{PC},drip,40.1,113.3,,300\n"
            + (f"d2,滴灌二号,{YG},drip,40.4,113.8,,200\n" if with_d2 else "")
            + f"s1,秸秆一号,{PC},straw,40.1,113.3,,500\n"
            f"m1,一号牛场,{PC},manure,40.1,113.3,{str(m1_large_scale).lower()},\n")


def devices_csv(sites: tuple[str, ...] = ("d1", "d2", "s1", "m1")) -> str:
    return "device_id,site_id,dev_eui,model\n" + "".join(f"{s}-dev,{s},,sim\n" for s in sites)


REGISTRY = Registry.from_csv(sites_csv(True), devices_csv())
SITE_TYPE = {s.site_id: str(s.site_type) for s in REGISTRY.sites.values()}
_seq = iter(range(1, 10**6))


def event(site: str, kind: str, ts: str, **extra: float | str) -> Point:
    """An ``event`` point as ingest writes it (contract §9)."""
    seq = next(_seq)
    tags = {"site_id": site, "device_id": f"{site}-dev", "site_type": SITE_TYPE[site],
            "county": REGISTRY.sites[site].county, "type": kind}
    fields: dict[str, FieldValue] = {"seq": seq}
    for key, value in extra.items():
        if isinstance(value, str):
            tags[key] = value
        else:
            fields[key] = float(value)
    moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return Point("event", tags, fields, int(moment.timestamp()) * 10**9 + seq)


BOUNDARY = event("d1", "film_applied", "2025-12-31T20:00:00Z", mass_t=4.0)
"""2026-01-01 04:00 in Datong: film applied in 2026, not in 2025 (as in UTC)."""
CUTOFF = event("d1", "film_recovered", "2025-05-31T17:00:00Z", mass_t=5.0)
"""2025-06-01 01:00 in Datong, after 31 May: 2025's own film, not 2024's (as on 31 May
in UTC)."""
M1_DAYS = 30
"""Days of April 2026 on which m1's telemetry reports: on 1 May the facility rate asks
⌈30 × 120/365⌉ = 10 (FARM_FACILITY_MIN_DAYS pro rata), so m1 is equipped for 2026."""

POINTS = [
    # 2024: 平城区 film 7 / 10; straw corn 10 t grain × 0.84 × 0.81 = 6.804 t collectable,
    # 5 t used; 阳高县 nothing
    event("d1", "film_applied", "2024-05-01T02:00:00Z", mass_t=10.0),
    event("d1", "film_recovered", "2024-10-01T02:00:00Z", mass_t=6.0),
    event("s1", "harvest", "2024-09-20T02:00:00Z", crop="corn", grain_t=10.0),
    event("s1", "straw_utilized", "2024-10-20T02:00:00Z", use="feed", mass_t=5.0),
    # 2025: 平城区 film 8 / 10, straw 6 / 6.804; 阳高县 film 5 / 5
    event("d1", "film_recovered", "2025-03-01T02:00:00Z", mass_t=1.0),  # spring: 2024's
    event("d1", "film_applied", "2025-05-01T02:00:00Z", mass_t=10.0),
    CUTOFF,
    event("d2", "film_applied", "2025-05-01T02:00:00Z", mass_t=5.0),
    event("d2", "film_recovered", "2025-10-01T02:00:00Z", mass_t=5.0),
    event("s1", "harvest", "2025-09-20T02:00:00Z", crop="corn", grain_t=10.0),
    event("s1", "straw_utilized", "2025-10-20T02:00:00Z", use="feed", mass_t=6.0),
    BOUNDARY,
    # 2026 (to NOW): 平城区 film 9 / (4 + 6), no straw; 阳高县 nothing; m1 reports
    event("d1", "film_applied", "2026-03-01T02:00:00Z", mass_t=6.0),
    event("d1", "film_recovered", "2026-04-01T02:00:00Z", mass_t=3.0),  # spring: 2025's
    event("d1", "film_recovered", "2026-04-15T02:00:00Z", mass_t=9.0, season="2026"),
    *(Point("telemetry", {"site_id": "m1", "device_id": "m1-dev", "site_type": "manure",
                          "county": PC}, {"lagoon_level_pct": 40.0, "seq": day},
            int(datetime(2026, 4, day, 2, tzinfo=UTC).timestamp()) * 10**9)
      for day in range(1, M1_DAYS + 1)),
]

FILM_BY_HAND: dict[tuple[int, str], float | None] = {
    (2024, PC): 0.7, (2024, YG): None, (2024, ALL): 0.7,
    (2025, PC): 0.8, (2025, YG): 1.0, (2025, ALL): 13 / 15,
    (2026, PC): 0.9, (2026, YG): None, (2026, ALL): 0.9,
}
"""Film recovery worked out by hand from :data:`POINTS`, with Datong's time and the
season rule (docs/indicators.md §4: a recovery without ``season`` made up to 31 May, in
Datong, recovers the previous year's film; one naming its season counts for it):

- 2024: applied 10 (1 May 2024); recovered 6 (1 Oct 2024) + 1 (1 Mar 2025, spring) = 7.
- 2025: d1 applied 10 (1 May 2025); recovered 5 (CUTOFF, 1 June in Datong) + 3 (1 Apr
  2026, spring) = 8; d2 5 / 5; the city (8 + 5) / (10 + 5).
- 2026: applied 4 (BOUNDARY, 1 Jan in Datong) + 6 (1 Mar) = 10; recovered 9 (15 Apr,
  ``season=2026``); the 3 t of 1 April are 2025's.

In UTC instead, BOUNDARY would be 2025's and CUTOFF 2024's: 12 / 10, 3 / 14, 9 / 6.
"""


class CountingEngine(IndicatorEngine):
    """The real engine (its ``members`` too) over a registry the test replaces, noting
    which years the publisher computed."""

    def __init__(self, query: InfluxQL, registry: Registry, settings: Settings) -> None:
        super().__init__(query, lambda: self.registry, settings)
        self.registry = registry
        self.computed: list[int] = []

    def compute(self, year: int, county: str | None = None,
                now: datetime | None = None) -> list[IndicatorValue]:
        self.computed.append(year)
        return super().compute(year, county, now)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Influxd]:
    influxd = Influxd(tmp_path / "influxd")
    influxd.start()
    influxd.query("CREATE DATABASE farm")
    yield influxd
    influxd.stop()


def setup(influxd: Influxd, points: list[Point] = POINTS) -> tuple[Settings, CountingEngine]:
    settings = Settings(influx_url=influxd.url, influx_api="v1", rollups=False)
    make_writer(settings).write(encode(points))
    return settings, CountingEngine(InfluxQL(settings), REGISTRY, settings)


def publisher(settings: Settings, engine: CountingEngine, **kwargs: Any) -> IndicatorPublisher:
    return IndicatorPublisher(engine, make_writer(settings), settings,
                              registry=lambda: engine.registry, **kwargs)


# --- reading the panels -------------------------------------------------------------


def reads_indicators(query: str) -> bool:
    return f'FROM "{schema.INDICATOR}"' in query or f'FROM "{INDICATOR_MEMBER}"' in query


def tag_values(server: Influxd, query: str) -> list[str]:
    """What a ``SHOW TAG VALUES`` variable lists, as Grafana reads it (second column)."""
    result: Any = server.query(query)
    return [row[1] for s in result["results"][0].get("series", []) for row in s["values"]]


def rows_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**(s.get("tags") or {}), **dict(zip(s["columns"], v, strict=True))}
            for s in result.get("series", []) for v in s["values"]]


def year_range(year: int) -> tuple[int, int]:
    """As Grafana with the year's first day (in Datong) to just after the publication."""
    start = datetime(year, 1, 1, tzinfo=SHANGHAI)
    return int(start.timestamp() * 1000), int(NOW.timestamp() * 1000) + 120_000


def own_range(year: int) -> tuple[int, int]:
    """The year itself in Datong, as a viewer picks it to read the year's events."""
    start, end = (datetime(y, 1, 1, tzinfo=SHANGHAI) for y in (year, year + 1))
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000) - 1


def panels_of(
    influxd: Influxd, name: str, variables: dict[str, str], year: int,
    allow_null: bool = False, time_range: tuple[int, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Title → result of every panel of ``name`` that reads published indicators."""
    board = BOARDS[name]
    panels = {p["title"]: p for p in iter_panels(board["panels"])}
    start, end = time_range or year_range(year)
    out: dict[str, dict[str, Any]] = {}
    for title, ref, query in panel_queries(board, variables, start, end):
        if not reads_indicators(query):
            continue
        answer: Any = influxd.query(query)
        result = answer["results"][0]
        panel = panels[title]
        target = next(t for t in panel["targets"] if t["refId"] == ref)
        problems = shapes.check(shapes.expectation(panel, target), result, panel,
                                allow_null=allow_null)
        if allow_null:  # an n/a figure: its trend has no point, its drill-down no member
            problems = [p for p in problems if p != "no data"]
        assert not problems, (name, variables, title, query, problems)
        out[title] = result
    return out


def expected_rows(engine: CountingEngine, year: int) -> dict[tuple[str, str], IndicatorValue]:
    return {(str(r.indicator), r.county or ALL): r for r in engine.compute(year, now=NOW)}


def gauge_values(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    board = {p["title"]: p for p in BOARDS["city-overview.json"]["panels"]}
    out = {}
    for title, result in results.items():
        if board.get(title, {}).get("type") == "gauge":
            rows = rows_of(result)
            assert len(rows) <= 1, (title, rows)
            # no row and a null value both show the gauge's noValue (无数据 n/a)
            out[board[title]["description"].split(":")[0]] = rows[0]["value"] if rows else None
    return out


def approx(value: float | None) -> object:
    return None if value is None else pytest.approx(value)


# --- every year, every county ---------------------------------------------------------


def test_every_indicator_panel_for_two_past_years_and_the_current_one(server: Influxd) -> None:
    settings, engine = setup(server)
    pub = publisher(settings, engine)
    assert pub.publish_once(now=NOW) > 0
    assert engine.computed == [2026, 2025, 2024], "the current year, then the past, newest first"

    board = BOARDS["city-overview.json"]
    years = tag_values(server, dict(variable_queries(board))["year"])
    assert sorted(years) == ["2024", "2025", "2026"]
    for year in (2024, 2025, 2026):
        expected = expected_rows(engine, year)
        counties = dict(variable_queries(board, {"year": str(year)}))["county"]
        assert sorted(tag_values(server, counties)) == sorted([ALL, *DIVISIONS])
        for county in (ALL, PC, YG):
            variables = {"county": county, "year": str(year)}
            na = any(expected[i.value, county].value is None for i in IndicatorId)
            city = panels_of(server, "city-overview.json", variables, year, allow_null=na)
            gauges = gauge_values(city)
            assert set(gauges) == {i.value for i in IndicatorId}
            for indicator, value in gauges.items():
                assert value == approx(expected[indicator, county].value), (year, county)
            assert gauges[FILM] == approx(FILM_BY_HAND[year, county]), (year, county)
            # The year, not the time range, picks the figure: the year's own range
            # (published later, after a back-fill) shows the same gauges.
            alone = panels_of(server, "city-overview.json", variables, year, allow_null=True,
                              time_range=own_range(year))
            assert gauge_values(alone) == gauges

            ranking = rows_of(city["County ranking, worst first / 区县排名（由低到高）"])
            assert {(r["indicator"], r["county"]) for r in ranking} == {
                (i.value, c) for i in IndicatorId for c in DIVISIONS}
            for row in ranking:
                want = expected[row["indicator"], row["county"]]
                assert (row["value"], row["numerator"], row["denominator"]) == (
                    approx(want.value), approx(want.numerator), approx(want.denominator))
                assert row["met"] == (None if want.value is None else want.met), row
            bars = rows_of(city["Indicators by county / 各区县指标对比"])
            assert {(r["indicator"], r["county"]): r["value"] for r in bars} == {
                (r["indicator"], r["county"]): approx(expected[r["indicator"], r["county"]].value)
                for r in bars}

            straw = panels_of(server, "straw.json", variables, year, allow_null=True)
            produced = rows_of(straw["Straw produced vs used, by county / 秸秆产生量与利用量"])
            assert {r["county"]: (r["produced_t"], r["utilized_t"]) for r in produced} == {
                c: (approx(expected[STRAW, c].denominator), approx(expected[STRAW, c].numerator))
                for c in (DIVISIONS if county == ALL else (county,))}

            check_members(server, engine, year, county)


def check_members(server: Influxd, engine: CountingEngine, year: int, county: str) -> None:
    """The drill-down of the film rate: the engine's members, summing to the figure."""
    variables = {"county": county, "year": str(year), "indicator": FILM}
    figure = engine.compute(year, None if county == ALL else county, now=NOW)
    (row,) = [r for r in figure if r.indicator == FILM and (r.county or ALL) == county]
    members = engine.members(year, None if county == ALL else county,
                             IndicatorId.FILM_RECOVERY_RATE, now=NOW)
    assert {m.site_id for m in members} == ({"d1"} if county == PC else {"d2"} if county == YG
                                            else {"d1", "d2"}), "both drip sites, every year"
    # status is only the facility rate's: null for film members (their rows are checked)
    results = panels_of(server, "indicator-members.json", variables, year, allow_null=True)
    listed = rows_of(results["Members / 构成站点"])
    assert sorted((r["site_id"], r["county"], r["name"], r["numerator"], r["denominator"])
                  for r in listed) == sorted(
        (m.site_id, m.county, m.name, approx(m.numerator), approx(m.denominator))
        for m in members)
    (shown,) = rows_of(results["Figure / 指标值"])
    assert (shown["value"], shown["numerator"], shown["denominator"]) == (
        approx(row.value), approx(row.numerator), approx(row.denominator))
    sums = rows_of(results["Members' sums / 明细合计"])
    if members:
        (total,) = sums
        assert (total["numerator"], total["denominator"], total["sites"]) == (
            approx(row.numerator), approx(row.denominator), len(members))
    else:
        assert sums == [] or sums[0]["sites"] in (None, 0)


def test_the_gauges_open_the_drill_down_with_county_and_year() -> None:
    members = BOARDS["indicator-members.json"]
    names = [v["name"] for v in members["templating"]["list"]]
    assert names == ["year", "county", "indicator"]
    indicator_options = {o["value"] for o in members["templating"]["list"][2]["options"]}
    assert indicator_options == {i.value for i in IndicatorId}
    gauges = [p for p in BOARDS["city-overview.json"]["panels"] if p["type"] == "gauge"]
    assert len(gauges) == 4
    for gauge in gauges:
        indicator = gauge["description"].split(":")[0]
        (link,) = gauge["fieldConfig"]["defaults"]["links"]
        assert link["url"].startswith(f"/d/{members['uid']}/")
        for part in (f"var-indicator={indicator}", "var-county=${county}", "var-year=${year}"):
            assert part in link["url"], (indicator, link)
        assert gauge["fieldConfig"]["defaults"]["noValue"] == "无数据 n/a"


# --- n/a after a figure: a registry change, a restart, a site leaving -----------------


def drill_down(server: Influxd, indicator: str, year: int) -> set[str]:
    """The sites the drill-down lists for ``indicator`` in ``year``, all counties."""
    members = panels_of(server, "indicator-members.json",
                        {"county": ALL, "year": str(year), "indicator": indicator}, year,
                        allow_null=True)
    return {r["site_id"] for r in rows_of(members["Members / 构成站点"])}


def latest_member_flags(server: Influxd, site_id: str) -> dict[tuple[str, str], bool]:
    """(period, indicator) → the ``member`` field of the site's latest member point."""
    result: Any = server.query(
        f'SELECT last("member") FROM "{INDICATOR_MEMBER}" WHERE "site_id" = \'{site_id}\' '
        'GROUP BY "period", "indicator"')
    return {(s["tags"]["period"], s["tags"]["indicator"]): s["values"][0][1]
            for s in result["results"][0].get("series", [])}


def test_a_figure_that_became_na_shows_empty_not_its_old_value(server: Influxd) -> None:
    settings, engine = setup(server)
    publisher(settings, engine).publish_once(now=NOW)
    before = gauge_values(panels_of(server, "city-overview.json",  # 2026 straw is n/a
                                    {"county": PC, "year": "2026"}, 2026, allow_null=True))
    assert before[MANURE] == 1.0, f"m1 is large-scale and reports on {M1_DAYS} days ≥ 10"
    manure_ids = (MANURE, IndicatorId.MANURE_LEDGER_COVERAGE.value)
    for year in (2024, 2025, 2026):  # the engine lists every registered site of the set
        assert "d2" in drill_down(server, FILM, year) and "m1" in drill_down(server, MANURE, year)

    # m1 is no longer large-scale: no farm counts, every year; d2 leaves the registry, so
    # its events count nowhere. A fresh publisher (a restart) must retire both from the
    # members it no longer lists (``member=false``), from what the first one stored.
    engine.registry = Registry.from_csv(sites_csv(False, with_d2=False),
                                        devices_csv(("d1", "s1", "m1")))
    later = NOW + timedelta(minutes=1)
    publisher(settings, engine).publish_once(now=later)
    for year in (2024, 2025, 2026):
        for county in (PC, ALL):
            variables = {"county": county, "year": str(year)}
            city = panels_of(server, "city-overview.json", variables, year, allow_null=True)
            assert gauge_values(city)[MANURE] is None, (year, county)
            ranking = {(r["indicator"], r["county"]): r for r in rows_of(
                city["County ranking, worst first / 区县排名（由低到高）"])}
            assert ranking[MANURE, PC]["value"] is None and ranking[MANURE, PC]["met"] is None
            assert ranking[MANURE, PC]["denominator"] == 0
        assert drill_down(server, FILM, year) == {"d1"}, year
        assert "m1" not in drill_down(server, MANURE, year), year
    assert latest_member_flags(server, "d2") == {
        (str(y), FILM): False for y in (2024, 2025, 2026)}
    assert latest_member_flags(server, "m1") == {
        (str(y), i): False for y in (2024, 2025, 2026) for i in manure_ids}


def test_the_county_list_is_the_chosen_years_published_counties(server: Influxd) -> None:
    """A county the registry had in 2020 but no longer has is not offered for 2026."""
    settings, engine = setup(server)
    publisher(settings, engine).publish_once(now=NOW)
    old = [IndicatorValue.of(IndicatorId.FILM_RECOVERY_RATE, "county", "旧县", 2020, 1, 2)]
    make_writer(settings).write(encode(indicator_points(old, 10**18)))
    board = BOARDS["straw.json"]
    for year, counties in ((2020, ["旧县"]), (2026, [ALL, *DIVISIONS])):
        query = dict(variable_queries(board, {"year": str(year)}))["county"]
        assert sorted(tag_values(server, query)) == sorted(counties), year


# --- which years a cycle computes ---------------------------------------------------------


def test_late_events_and_the_periodic_refresh_update_a_past_year(server: Influxd) -> None:
    settings, engine = setup(server)
    pub = publisher(settings, engine, schedule=YearSchedule(refresh_every=4))
    rows = len(IndicatorId) * (1 + len(DIVISIONS))  # a year's rows: the city and ten counties
    pub.publish_once(now=NOW)
    engine.computed.clear()
    assert pub.publish_once(now=NOW + timedelta(minutes=1)) == rows, (
        "2026's rows, no member news")
    assert engine.computed == [2026], "nothing changed in the past: not recomputed"

    # A late 2024 recovery through ingest: its mark makes 2024 due at the next cycle.
    writer = make_writer(settings)
    marker = LateEventMarker(writer, settings.tz, "test", clock=time.time_ns)
    late = event("d1", "film_recovered", "2024-11-01T02:00:00Z", mass_t=1.0)
    writer.write(encode([late]))
    marker.stored([late.time_ns])
    pub.publish_once(now=NOW + timedelta(minutes=2))
    assert engine.computed[-2:] == [2026, 2024]
    gauges = gauge_values(panels_of(server, "city-overview.json",
                                    {"county": PC, "year": "2024"}, 2024, allow_null=True))
    assert gauges[FILM] == pytest.approx(0.8), "(6 + 1 + 1) / 10"

    # A late spring recovery (April 2025, no season) is 2024's film: its mark, in a month
    # of 2025, makes 2024 due too, not only 2025.
    spring = event("d1", "film_recovered", "2025-04-01T02:00:00Z", mass_t=1.0)
    writer.write(encode([spring]))
    marker.stored([spring.time_ns])
    engine.computed.clear()
    pub.publish_once(now=NOW + timedelta(minutes=3))
    assert engine.computed == [2026, 2025, 2024]
    gauges = gauge_values(panels_of(server, "city-overview.json",
                                    {"county": PC, "year": "2024"}, 2024, allow_null=True))
    assert gauges[FILM] == pytest.approx(0.9), "(6 + 1 + 1 + 1) / 10"

    # A write that bypasses ingest leaves no mark: the periodic refresh finds it.
    writer.write(encode([event("d1", "film_recovered", "2025-11-01T02:00:00Z", mass_t=1.0)]))
    engine.computed.clear()
    written = pub.publish_once(now=NOW + timedelta(minutes=4))  # 5th cycle: refresh_every=4
    assert engine.computed == [2026, 2025, 2024]
    # 2026's rows; 2025's rows and all its members again (d1's film part changed): m1
    # twice (facility, ledger), d1, d2, s1; 2024 is unchanged
    members_2025 = engine.members(2025, now=NOW)
    assert len(members_2025) == 5
    assert written == rows + rows + len(members_2025)
    gauges = gauge_values(panels_of(server, "city-overview.json",
                                    {"county": PC, "year": "2025"}, 2025, allow_null=True))
    assert gauges[FILM] == pytest.approx(0.9), "(5 + 3 + 1) / 10"


def test_a_cycle_is_bounded_however_many_years(server: Influxd) -> None:
    old = [event("d1", kind, f"{year}-06-01T02:00:00Z", mass_t=1.0)
           for year in (2021, 2022, 2023) for kind in ("film_applied", "film_recovered")]
    settings, engine = setup(server, POINTS + old)
    pub = publisher(settings, engine, schedule=YearSchedule(past_per_cycle=2))
    for cycle in range(4):
        started = time.perf_counter()
        pub.publish_once(now=NOW + timedelta(minutes=cycle))
        print(f"cycle {cycle}: years {engine.computed}, {time.perf_counter() - started:.3f} s")
        assert len(engine.computed) <= 3
        engine.computed.clear()
    years = tag_values(server, 'SHOW TAG VALUES FROM "indicator" WITH KEY = "period"')
    assert set(years) == {str(y) for y in range(2021, 2027)}
    for year in (2021, 2022, 2023):
        assert gauge_values(panels_of(server, "city-overview.json",  # film only: allow n/a
                                      {"county": PC, "year": str(year)}, year,
                                      allow_null=True))[FILM] == 1.0


def test_the_current_year_is_datongs(server: Influxd) -> None:
    """At 2025-12-31T17:00Z it is already 2026 in Datong: 2026 is the current year."""
    settings, engine = setup(server)
    pub = publisher(settings, engine)
    pub.publish_once(now=datetime(2025, 12, 31, 17, tzinfo=UTC))
    assert engine.computed[0] == 2026 and 2025 in engine.computed


def _run(schedule: YearSchedule, current: int, marks: dict[str, int],
         registry: object | None) -> list[int]:
    """One cycle's plan, then every planned past year computed (first year: 2023)."""
    due = schedule.plan(current, 2023 if schedule.needs_first_year() else None, marks, registry)
    for year in due[1:]:
        schedule.computed(year)
    return due


def test_year_schedule_rules() -> None:
    schedule = YearSchedule(refresh_every=100, past_per_cycle=1)
    registry, marks, later = object(), {"2024-03": 1}, {"2024-03": 2}
    assert _run(schedule, 2026, marks, registry) == [2026, 2025], "none done: newest first"
    assert _run(schedule, 2026, marks, registry) == [2026, 2024]
    assert _run(schedule, 2026, marks, registry) == [2026, 2023]
    assert _run(schedule, 2026, marks, registry) == [2026], "all done: the current year only"
    assert _run(schedule, 2026, later, registry) == [2026, 2024], "a late event in 2024"
    assert _run(schedule, 2026, later, object()) == [2026, 2025], "a new registry: all"
    assert schedule.dirty == {2023, 2024}
    _run(schedule, 2026, later, None)
    _run(schedule, 2026, later, None)
    assert _run(schedule, 2026, later, None) == [2026]
    assert _run(schedule, 2027, later, None) == [2027, 2026], "2026 just ended"
    assert _run(schedule, 2027, later, None) == [2027]

    spring = YearSchedule(refresh_every=100, past_per_cycle=5)
    assert _run(spring, 2026, {}, None) == [2026, 2025, 2024, 2023]
    assert _run(spring, 2026, {"2025-04": 1}, None) == [2026, 2025, 2024], (
        "a late recovery of April 2025 may be 2024's film")

    periodic = YearSchedule(refresh_every=3, past_per_cycle=5)
    assert _run(periodic, 2026, {}, None) == [2026, 2025, 2024, 2023]
    assert _run(periodic, 2026, {}, None) == [2026]
    assert _run(periodic, 2026, {}, None) == [2026]
    assert _run(periodic, 2026, {}, None) == [2026, 2025, 2024, 2023], "every 3rd cycle"
