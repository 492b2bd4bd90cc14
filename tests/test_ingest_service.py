"""The ingest service against a real Mosquitto and a real InfluxDB, both InfluxDB APIs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from devstack.servers import Influxd, Mosquitto
from ingest_service.service import IngestService
from ingest_service.settings import Settings
from tests.helpers import count, mosquitto_pub, rows, wait_for, write_registry
from tests.influx_v2_shim import TOKEN, InfluxV2Shim

pytestmark = pytest.mark.integration


@pytest.fixture(params=["v1", "v2"])
def service(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd
) -> Iterator[IngestService]:
    """A running ingest service writing through the v1 API, or the v2 API via the shim."""
    extra: dict[str, object] = {"influx_url": influxd.url, "influx_api": "v1"}
    shim = None
    if request.param == "v2":
        shim = InfluxV2Shim(influxd.url)
        shim.start()
        extra = {
            "influx_url": shim.url,
            "influx_api": "v2",
            "influx_token": TOKEN,
            "influx_org": "farm",
            "influx_bucket": "farm",
        }
    settings = Settings(
        mqtt_url=mosquitto.url,
        registry_dir=write_registry(tmp_path / "registry"),
        mqtt_client_id=f"ingest-{request.param}",
        batch_interval_s=0.05,
        **extra,  # type: ignore[arg-type]
    )
    svc = IngestService(settings, publish_indicators=False)
    svc.start()
    assert svc.input.wait_connected(10)
    yield svc
    svc.stop()
    if shim is not None:
        assert shim.writes > 0, "the v2 path was not exercised"
        shim.stop()


def test_mosquitto_pub_message_lands_in_influxdb(
    service: IngestService, mosquitto: Mosquitto, influxd: Influxd
) -> None:
    mosquitto_pub(
        mosquitto.port,
        "farm/v1/drip-1/dev-1/telemetry",
        json.dumps(
            {
                "v": 1,
                "seq": 1042,
                "ts": "2026-05-01T08:00:00Z",
                "readings": {"soil_moisture_vwc": 0.31, "flow_lpm": 12.5},
            }
        ),
    )
    mosquitto_pub(
        mosquitto.port,
        "farm/v1/straw-1/dev-3/event",
        json.dumps(
            {
                "v": 1,
                "seq": 17,
                "ts": 1746086400000,
                "type": "harvest",
                "crop": "corn",
                "grain_t": 3.5,
            }
        ),
    )
    got = wait_for(lambda: rows(influxd, "SELECT * FROM telemetry GROUP BY *"))
    assert got[0]["county"] == "平城区" and got[0]["site_type"] == "drip"
    assert got[0]["flow_lpm"] == 12.5 and got[0]["seq"] == 1042
    event = wait_for(lambda: rows(influxd, "SELECT * FROM event GROUP BY *"))
    assert event[0]["crop"] == "corn" and event[0]["grain_t"] == 3.5
    assert event[0]["county"] == "云州区"


def test_malformed_message_is_rejected_and_neighbours_are_stored(
    service: IngestService, mosquitto: Mosquitto, influxd: Influxd
) -> None:
    topic = "farm/v1/drip-1/dev-1/telemetry"
    mosquitto_pub(mosquitto.port, topic, "{this is not json")
    mosquitto_pub(
        mosquitto.port,
        topic,
        json.dumps({"v": 1, "seq": 2, "ts": 1777622400000, "readings": {"flow_lpm": 99999}}),
    )
    mosquitto_pub(
        mosquitto.port,
        "farm/v1/drip-1/nobody/telemetry",
        json.dumps({"v": 1, "seq": 1, "ts": 1777622400000, "readings": {"flow_lpm": 1}}),
    )
    mosquitto_pub(
        mosquitto.port,
        topic,
        json.dumps({"v": 1, "seq": 3, "ts": 1777622400000, "readings": {"flow_lpm": 3.0}}),
    )
    wait_for(lambda: count(influxd, "SELECT count(flow_lpm) FROM telemetry") == 1)
    reasons = wait_for(
        lambda: (
            {r["reason"]: r for r in rows(influxd, "SELECT * FROM rejection GROUP BY reason")}
            if count(influxd, "SELECT count(detail) FROM rejection") == 3
            else None
        )
    )
    assert set(reasons) == {"bad_json", "out_of_range", "unknown_device"}
    assert reasons["bad_json"]["payload"] == "{this is not json"
    assert reasons["bad_json"]["topic"] == topic
    assert "flow_lpm=99999" in str(reasons["out_of_range"]["detail"])
    assert service.state.stats.rejected == {"bad_json": 1, "out_of_range": 1, "unknown_device": 1}


def test_redelivered_message_is_stored_once_and_distinct_events_twice(
    service: IngestService, mosquitto: Mosquitto, influxd: Influxd
) -> None:
    event = {"v": 1, "seq": 5, "ts": 1777622400000, "type": "manure_treated", "mass_t": 2.0}
    topic = "farm/v1/farm-1/dev-2/event"
    mosquitto_pub(mosquitto.port, topic, json.dumps(event))
    mosquitto_pub(mosquitto.port, topic, json.dumps(event))  # a replay of the same message
    mosquitto_pub(mosquitto.port, topic, json.dumps({**event, "seq": 6}))  # same ts, new event
    wait_for(lambda: service.state.stats.received == 3)
    assert count(influxd, "SELECT count(mass_t) FROM event") == 2
    assert count(influxd, "SELECT sum(mass_t) FROM event") == 4


def test_influxdb_outage_loses_nothing(
    service: IngestService, mosquitto: Mosquitto, influxd: Influxd
) -> None:
    influxd.stop()
    topic = "farm/v1/drip-1/dev-1/telemetry"
    for seq in range(20):
        mosquitto_pub(
            mosquitto.port,
            topic,
            json.dumps(
                {
                    "v": 1,
                    "seq": seq,
                    "ts": 1777622400000 + seq * 1000,
                    "readings": {"flow_lpm": seq},
                }
            ),
        )
    wait_for(lambda: service.state.stats.write_errors > 0)
    assert service.state.stats.stored_points == 0
    influxd.start()
    wait_for(lambda: count(influxd, "SELECT count(flow_lpm) FROM telemetry") == 20, timeout=60)


def test_metrics_count_what_happened(
    service: IngestService, mosquitto: Mosquitto, influxd: Influxd
) -> None:
    from fastapi.testclient import TestClient

    from ingest_service.api.app import create_app

    topic = "farm/v1/drip-1/dev-1/telemetry"
    mosquitto_pub(mosquitto.port, topic, "[]")
    mosquitto_pub(mosquitto.port, topic, json.dumps(
        {"v": 1, "seq": 1, "ts": 1777622400000, "readings": {"flow_lpm": 1.0}}))
    wait_for(lambda: service.state.stats.received == 2)
    client = TestClient(
        create_app(service.state, service.engine), base_url="http://127.0.0.1"
    )
    text = client.get("/metrics").text
    assert "farm_messages_received_total 2.0" in text
    assert 'farm_rejections_total{reason="invalid_payload"} 1.0' in text
    assert "farm_points_stored_total 1.0" in text
    assert "farm_mqtt_connected 1.0" in text


def test_registry_replaced_through_the_api_updates_site_points(
    service: IngestService, influxd: Influxd
) -> None:
    from fastapi.testclient import TestClient

    from ingest_service.api.app import create_app
    from tests.helpers import DEVICES_CSV, SITES_CSV

    sites = lambda: {r["site_id"] for r in rows(  # noqa: E731
        influxd, "SELECT last(lat) FROM site GROUP BY site_id")}
    wait_for(lambda: sites() == {"drip-1", "farm-1", "straw-1"})
    service.state.settings.api_token = SecretStr("admin")
    client = TestClient(
        create_app(service.state, service.engine), base_url="http://127.0.0.1"
    )
    new_sites = SITES_CSV + "drip-2,滴灌二号,天镇县,drip,40.4,114.1,,80,250\n"
    response = client.post(
        "/api/v1/registry", json={"sites_csv": new_sites, "devices_csv": DEVICES_CSV},
        headers={"Authorization": "Bearer admin"},
    )
    assert response.status_code == 200, response.text
    wait_for(lambda: "drip-2" in sites())
