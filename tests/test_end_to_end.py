"""The whole path on real servers: a simulated fleet with a known scenario → Mosquitto →
ingest → InfluxDB → the API returns exactly the indicators the scenario implies, per county
and for the city, through both InfluxDB APIs. Then every dashboard panel's query runs
against the simulated data (after the telemetry roll-ups are built) and must return
some, except targets whose resolution gates are off for the range, which must be empty.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dashboards import shapes
from dashboards.panel_queries import panel_queries
from devstack.servers import Influxd, Mosquitto
from farm_contract import schema
from farm_contract.catalog import SiteType
from farm_contract.indicator_params import load_divisions
from ingest_service.api.app import create_app
from ingest_service.indicators.publisher import IndicatorPublisher
from ingest_service.service import IngestService
from ingest_service.settings import Settings
from ingest_service.telemetry.rollups import TelemetryRollups
from simulators.expected import expected_indicators
from simulators.fleet import FleetReport, build_registry, run_backfill
from simulators.scenario import Scenario, load_scenario
from tests.helpers import count, rows, wait_behind_marker
from tests.influx_v2_shim import TOKEN, InfluxV2Shim
from tests.simulated_year import rollup_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MARKER_TOPIC = "farm/v1/marker-site/marker-device/telemetry"
"""An unknown device: its message, published after the fleet's, is rejected (and counted)
as ``unknown_device``, the positive control behind which nothing more can arrive."""

MARKER_PAYLOAD = '{"v": 1, "seq": 0, "ts": "2025-06-01T00:00:00Z", "readings": {"battery_v": 12}}'

DASHBOARDS = sorted((Path(__file__).parent.parent / "dashboards" / "json").glob("*.json"))


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return load_scenario("test-small")


@pytest.fixture(params=["v1", "v2"])
def simulated(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd,
    scenario: Scenario,
) -> Iterator[tuple[IngestService, FleetReport]]:
    """Ingest running against the real servers while the scenario's year is back-filled."""
    registry_dir = tmp_path / "registry"
    build_registry(scenario).write_dir(registry_dir)
    influx: dict[str, object] = {"influx_url": influxd.url, "influx_api": "v1"}
    shim = None
    if request.param == "v2":
        shim = InfluxV2Shim(influxd.url)
        shim.start()
        influx = {"influx_url": shim.url, "influx_api": "v2", "influx_token": TOKEN,
                  "influx_org": "datong", "influx_bucket": "farm"}
    settings = Settings(mqtt_url=mosquitto.url, registry_dir=registry_dir,
                        **influx)  # type: ignore[arg-type]
    service = IngestService(settings, publish_indicators=False)
    service.start()
    assert service.input.wait_connected(10)
    report = run_backfill(scenario, mosquitto.url)  # returns once all is PUBACKed
    assert report.completed and report.refused == 0
    wait_behind_marker(
        mosquitto.port, MARKER_TOPIC, MARKER_PAYLOAD,
        lambda: service.state.stats.rejected.get("unknown_device"), timeout=120,
    )
    yield service, report
    service.stop()
    if shim is not None:
        assert shim.writes > 0
        shim.stop()


def test_indicators_match_the_scenario(
    simulated: tuple[IngestService, FleetReport], influxd: Influxd, scenario: Scenario
) -> None:
    service, report = simulated
    stats = service.state.stats
    # Nothing more, nothing less arrived (checked behind the marker, so nothing is late).
    assert stats.received == report.published + 1

    # Everything valid stored once, duplicates merged, bad payloads rejected with reasons.
    assert count(influxd, "SELECT count(seq) FROM telemetry") == report.telemetry
    assert count(influxd, "SELECT count(seq) FROM event") == report.events
    assert stats.rejected == {k: v for k, v in {
        "bad_json": report.bad_json, "out_of_range": report.out_of_range,
        "unknown_device": 1}.items() if v}
    assert count(influxd, "SELECT count(detail) FROM rejection") == report.bad_payloads + 1

    year = scenario.year
    client = TestClient(
        create_app(service.state, service.engine), base_url="http://127.0.0.1"
    )
    response = client.get("/api/v1/indicators", params={"year": year})
    assert response.status_code == 200, response.text
    got = {(r["indicator"], r["county"]): r for r in response.json()}
    expected = expected_indicators(scenario, year)
    # the city and every county listed: Datong's ten divisions, with sites or not (§8)
    assert len(got) == len(expected) == 4 * (1 + len(listed_counties(scenario))) == 44
    for value in expected:
        row = got[(value.indicator.value, value.county)]
        assert row["scope"] == value.scope and row["year"] == year
        assert row["numerator"] == pytest.approx(value.numerator, rel=1e-9)
        assert row["denominator"] == pytest.approx(value.denominator, rel=1e-9)
        if value.value is None:
            assert row["value"] is None
        else:
            assert row["value"] == pytest.approx(value.value, rel=1e-9)
        assert row["met"] == value.met

    # And the scenario's own declared outcomes, independently of the expectation code.
    declared = {key: value for key, value in scenario.declared().items() if value is not None}
    assert len(declared) >= 8
    for (indicator, county), fraction in declared.items():
        assert got[(indicator, county)]["value"] == pytest.approx(float(fraction), rel=1e-9)
    assert got[("film_recovery_rate", None)]["value"] == pytest.approx(0.8)
    city_facilities = got[("manure_facility_rate", None)]
    assert (city_facilities["numerator"], city_facilities["denominator"]) == (5, 7)

    # The same as CSV, Chinese county names intact.
    text = client.get("/api/v1/indicators", params={"year": year, "format": "csv"}).text
    table = list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"))))
    assert {r["county"] for r in table} == {"", *listed_counties(scenario)}
    assert len(table) == len(expected)


def scenario_counties(scenario: Scenario) -> set[str]:
    return set(build_registry(scenario).counties)


def listed_counties(scenario: Scenario) -> set[str]:
    """The counties the indicators list: the divisions file's, then the registry's others."""
    return set(load_divisions().listed(build_registry(scenario).counties))


def test_indicators_written_back_and_every_panel_returns_data(
    simulated: tuple[IngestService, FleetReport], influxd: Influxd, scenario: Scenario
) -> None:
    service, _ = simulated
    publisher = IndicatorPublisher(service.engine, service.writer, service.settings,
                                   years=lambda: [scenario.year])
    # a point per indicator row, and one per member: each large-scale farm twice (facility,
    # ledger), each drip site (film) and each straw site (straw) once
    sites = build_registry(scenario).sites.values()
    members = sum(2 if s.site_type is SiteType.MANURE and s.large_scale
                  else int(s.site_type in (SiteType.DRIP, SiteType.STRAW)) for s in sites)
    assert members == 2 * 7 + 5 + 5
    assert publisher.publish_once() == 4 * (1 + len(listed_counties(scenario))) + members
    stored = rows(influxd, "SELECT last(value) FROM indicator GROUP BY indicator, county")
    assert {r["county"] for r in stored} == {schema.CITY_COUNTY_TAG,
                                             *scenario_counties(scenario)}

    # The telemetry roll-ups the dashboards read, from the year's last two months on, at
    # once (the service's maintainer spreads a first start over cycles).
    cycle = TelemetryRollups(service.query, service.writer, service.settings.tz,
                             rollup_settings(scenario.year)).maintain_once()
    assert cycle.days_built and cycle.pending_days == 0, cycle

    assert DASHBOARDS, "no dashboards committed"
    start = int(datetime(scenario.year, 1, 1, tzinfo=UTC).timestamp() * 1000)
    end = int(time.time() * 1000) + 60_000
    county = sorted(scenario_counties(scenario))[0]
    for path in DASHBOARDS:
        for chosen in (schema.CITY_COUNTY_TAG, county):
            variables = {"county": chosen, "year": str(scenario.year)}
            for title, ref, query in panel_queries(path, variables, start, end):
                result = influxd.query(query)["results"][0]  # type: ignore[index]
                assert "error" not in result, (path.name, title, ref, query, result)
                if not shapes.active(query):  # another resolution's target: empty by design
                    assert "series" not in result, (path.name, chosen, title, ref, query)
                    continue
                # members are published once the engine lists them (issue 13)
                no_members = ('"indicator_member"' in query
                              and getattr(service.engine, "members", None) is None)
                assert result.get("series") or no_members, (path.name, chosen, title, ref, query)
