"""``GET /api/v1/devices/{id}/latest``: what a device sent, as stored, with its rejections.

Sent through a real broker and the running ingest service, so the answer shows what
the production path stored, not what a test wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from devstack.servers import Influxd, Mosquitto
from ingest_service.api.app import create_app
from ingest_service.api.devices import latest_query
from ingest_service.service import IngestService
from ingest_service.settings import Settings
from tests.helpers import mosquitto_pub, wait_for, write_registry


def test_the_query_names_only_this_device() -> None:
    q = latest_query("dev-1", datetime(2026, 5, 1, tzinfo=UTC), 10)
    assert "time >= " in q.telemetry and "time > 0" in latest_query("d", None, 1).events
    assert "\"device_id\" = 'dev-1'" in q.telemetry and "LIMIT 10" in q.telemetry
    assert "\"device_id\" = 'dev-1'" in q.events
    # a rejection's topic names the device as a whole level: dev-1 is not dev-10
    assert "=~ /\\/dev-1(\\/|$)/" in q.rejections


@pytest.fixture
def service(tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd) -> Iterator[IngestService]:
    settings = Settings(
        mqtt_url=mosquitto.url, influx_url=influxd.url, influx_api="v1",
        registry_dir=write_registry(tmp_path / "registry"), mqtt_client_id="ingest-latest",
        batch_interval_s=0.05,
    )
    svc = IngestService(settings, publish_indicators=False)
    svc.start()
    assert svc.input.wait_connected(10)
    yield svc
    svc.stop()


@pytest.mark.integration
def test_a_device_sees_what_arrived_and_what_was_refused(
    service: IngestService, mosquitto: Mosquitto
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    ts = (now - timedelta(minutes=5)).isoformat()
    topic = "farm/v1/drip-1/dev-1/telemetry"
    reading = {"v": 1, "seq": 7, "ts": ts, "readings": {"soil_moisture_vwc": 0.31}}
    mosquitto_pub(mosquitto.port, topic, json.dumps(reading))
    mosquitto_pub(mosquitto.port, topic, "{not json")
    mosquitto_pub(mosquitto.port, "farm/v1/drip-1/zz-9/telemetry", json.dumps(reading))
    mosquitto_pub(mosquitto.port, "farm/v1/drip-1/dev-10/telemetry", "{not json either")
    client = TestClient(create_app(service.state, service.engine), base_url="http://127.0.0.1")

    def latest(device: str) -> dict[str, object]:
        response = client.get(f"/api/v1/devices/{device}/latest")
        assert response.status_code == 200, response.text
        answer: dict[str, object] = response.json()
        return answer

    got = wait_for(lambda: (a := latest("dev-1"))["telemetry"] and a["rejections"] and a)
    assert got["registered"] is True and got["site_id"] == "drip-1"
    assert got["telemetry"] == [{"ts": ts.replace("+00:00", "Z"), "seq": 7,
                                 "readings": {"soil_moisture_vwc": 0.31}}]
    assert got["last_seen"] == ts.replace("+00:00", "Z")
    rejections = got["rejections"]
    assert isinstance(rejections, list)
    assert [r["reason"] for r in rejections] == ["bad_json"]  # not dev-10's
    assert rejections[0]["topic"] == topic
    unknown = wait_for(lambda: (a := latest("zz-9"))["rejections"] and a)
    assert unknown["registered"] is False and unknown["telemetry"] == []
    assert [r["reason"] for r in unknown["rejections"]] == ["unknown_device"]  # type: ignore[union-attr]
    assert client.get("/api/v1/devices/Not%20An%20Id/latest").status_code == 422
    client.close()
