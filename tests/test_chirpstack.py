"""A ChirpStack v4 uplink, as its MQTT integration publishes it, lands in InfluxDB.

The payload is ChirpStack v4's JSON for ``event/up`` (the protobuf ``UplinkEvent``
in its JSON mapping: camelCase keys, ``data`` in base64, ``time`` with
nanoseconds), published with ``mosquitto_pub`` like an operator would test it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.servers import Influxd, Mosquitto
from ingest_service.service import IngestService
from ingest_service.settings import Settings
from tests.helpers import count, mosquitto_pub, rows, wait_for, write_registry

APP_ID = "7f0e3f3e-1b9e-4d4e-9f67-2a4c6a0f3c11"
DEV_EUI = "0011223344556677"  # dev-2 at farm-1 (云州区) in tests/helpers.py


def uplink(f_cnt: int, time: str, obj: dict[str, Any], dev_eui: str = DEV_EUI) -> str:
    """An ``event/up`` message shaped exactly like ChirpStack v4 sends it."""
    return json.dumps({
        "deduplicationId": "3a1b5c2e-8f0d-4b6a-9e1c-6d2f7a8b9c0d",
        "time": time,
        "deviceInfo": {
            "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
            "tenantName": "Datong Agriculture Bureau",
            "applicationId": APP_ID,
            "applicationName": "manure-lagoons",
            "deviceProfileId": "0b4a1c7e-5d3f-4e2a-b8c9-1f6e7d8a9b0c",
            "deviceProfileName": "level-sensor-cn470",
            "deviceName": "farm-1-lagoon",
            "devEui": dev_eui,
            "deviceClassEnabled": "CLASS_A",
            "tags": {"county": "云州区"},
        },
        "devAddr": "01fa3c5d",
        "adr": True,
        "dr": 3,
        "fCnt": f_cnt,
        "fPort": 2,
        "confirmed": False,
        "data": base64.b64encode(b"\x19\x8f\x0e\x10").decode(),
        "object": obj,
        "rxInfo": [{
            "gatewayId": "a840411f6c484150",
            "uplinkId": 27013,
            "gwTime": time,
            "nsTime": time,
            "rssi": -97,
            "snr": 7.5,
            "channel": 3,
            "rfChain": 1,
            "location": {"latitude": 40.2, "longitude": 113.5, "altitude": 1050},
            "context": "EFwMtA==",
            "metadata": {"region_config_id": "cn470_10", "region_common_name": "CN470"},
            "crcStatus": "CRC_OK",
        }],
        "txInfo": {
            "frequency": 486300000,
            "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 9,
                                    "codeRate": "CR_4_5"}},
        },
    }, ensure_ascii=False)


@pytest.fixture
def ingest(tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd) -> Iterator[IngestService]:
    settings = Settings(
        mqtt_url=mosquitto.url, influx_url=influxd.url, influx_api="v1",
        registry_dir=write_registry(tmp_path / "registry"),
        mqtt_client_id="ingest-chirpstack-test", batch_interval_s=0.05,
    )
    service = IngestService(settings, publish_indicators=False)
    service.start()
    assert service.input.wait_connected(10)
    yield service
    service.stop()


@pytest.mark.integration
def test_chirpstack_uplink_lands_under_the_registered_site_and_county(
    mosquitto: Mosquitto, influxd: Influxd, ingest: IngestService
) -> None:
    topic = f"application/{APP_ID}/device/{DEV_EUI}/event/up"
    message = uplink(4711, "2025-06-01T08:00:15.775023242+00:00",
                     {"lagoon_level_pct": 64.25, "battery_v": 3.61})
    mosquitto_pub(mosquitto.port, topic, message)
    mosquitto_pub(mosquitto.port, topic, message)  # a redelivery is stored once
    unknown = uplink(1, "2025-06-01T08:00:16Z", {"battery_v": 3.5}, dev_eui="ffffffffffffffff")
    mosquitto_pub(mosquitto.port, "application/x/device/ffffffffffffffff/event/up", unknown)

    [row] = wait_for(lambda: rows(influxd, "SELECT * FROM telemetry"))
    assert row["device_id"] == "dev-2" and row["site_id"] == "farm-1"
    assert row["county"] == "云州区" and row["site_type"] == "manure"
    assert row["lagoon_level_pct"] == 64.25 and row["battery_v"] == 3.61
    assert row["seq"] == 4711  # fCnt
    assert str(row["time"]).startswith("2025-06-01T08:00:15.775")  # ChirpStack's time
    wait_for(lambda: count(influxd, "SELECT count(detail) FROM rejection "
                                    "WHERE reason = 'unknown_device'") == 1)
    assert count(influxd, "SELECT count(seq) FROM telemetry") == 1
