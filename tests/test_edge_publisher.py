"""DevicePublisher and the ``python -m edge`` agent against a real Mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from devstack.servers import Mosquitto, free_port
from edge.publisher import DevicePublisher
from farm_contract.payloads import StatusMessage, TelemetryMessage, decode_json
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Recorder:
    """Subscribes to ``farm/v1/#`` (retain-as-published, so a birth shows as retained)."""

    def __init__(self, port: int, topic: str = "farm/v1/#") -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.on_message = self._on_message
        client.on_subscribe = lambda *args: self._subscribed.set()
        client.on_connect = lambda c, *args: c.subscribe(
            topic, options=SubscribeOptions(qos=1, retainAsPublished=True)
        )
        client.connect("127.0.0.1", port)
        client.loop_start()
        self.client = client
        assert self._subscribed.wait(10), "subscription not acknowledged"

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(message.topic, message.payload, bool(message.retain)))

    def kind(self, kind: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith("/" + kind)]

    def __len__(self) -> int:
        with self._lock:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, topic: str) -> list[Received]:
    """What a new subscriber gets at once on ``topic``: the retained messages."""
    recorder = Recorder(port, topic)
    time.sleep(0.3)
    recorder.close()
    return recorder.messages


@pytest.mark.integration
def test_publisher_birth_seq_acks_and_offline(mosquitto: Mosquitto) -> None:
    recorder = Recorder(mosquitto.port)
    publisher = DevicePublisher("d-x-1", "site-x", mosquitto.url, first_seq=5,
                                metadata={"model": "probe"})
    publisher.start(wait_s=10)
    now = datetime(2025, 6, 1, 8, tzinfo=UTC)
    for _ in range(50):
        publisher.telemetry(now, {"battery_v": 12.5})
    publisher.event(now, "manure_treated", mass_t=3.5)
    assert publisher.wait_all_acked(10)
    assert publisher.pending == 0
    assert publisher.close()
    wait_for(lambda: len(recorder.kind("status")) >= 2)
    recorder.close()

    telemetry = [TelemetryMessage.model_validate(decode_json(m.payload))
                 for m in recorder.kind("telemetry")]
    assert [t.seq for t in telemetry] == list(range(5, 55))
    assert recorder.kind("event")[0].json()["seq"] == 55
    birth, offline = (StatusMessage.model_validate(m.json()) for m in recorder.kind("status"))
    assert birth.state == "online" and offline.state == "offline"
    assert all(m.retain for m in recorder.kind("status"))
    assert birth.model_extra is not None and birth.model_extra["model"] == "probe"
    assert all(m.topic.startswith("farm/v1/site-x/d-x-1/") for m in recorder.messages)
    [kept] = retained(mosquitto.port, "farm/v1/site-x/d-x-1/status")
    assert kept.json()["state"] == "offline"


@pytest.mark.integration
def test_publisher_survives_a_broker_restart(mosquitto: Mosquitto) -> None:
    publisher = DevicePublisher("d-y-1", "site-y", mosquitto.url, reconnect_max_s=2)
    publisher.start(wait_s=10)
    now = datetime(2025, 6, 1, tzinfo=UTC)
    publisher.telemetry(now, {"battery_v": 12.0})
    assert publisher.wait_all_acked(5)
    mosquitto.stop()
    wait_for(lambda: not publisher.connected, timeout=10)
    publisher.telemetry(now, {"battery_v": 12.1})  # queued while the broker is down
    mosquitto.start()
    assert publisher.wait_all_acked(20), "queued message not delivered after reconnect"
    assert publisher.sent_by_kind["status"] >= 2  # a fresh birth after reconnecting
    publisher.close()


def write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "device.toml"
    path.write_text(
        f"""
device_id = "d-hunyuan-drip-01-1"
site_id = "hunyuan-drip-01"
mqtt_url = "{url}"
sample_interval_s = 0.2
state_dir = "{tmp_path / 'state'}"

[driver]
kind = "simulated"
site_type = "drip"
seed = 3
""",
        encoding="utf-8",
    )
    return path


def run_agent(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge", "--config", str(config)], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


@pytest.mark.integration
def test_last_will_marks_a_vanished_device_offline(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A power cut (SIGKILL: no DISCONNECT) leaves the broker's last will as the status."""
    config = write_config(tmp_path, mosquitto.url)
    agent = run_agent(config)
    topic = "farm/v1/hunyuan-drip-01/d-hunyuan-drip-01-1/status"
    try:
        wait_for(lambda: [m for m in retained(mosquitto.port, topic)
                          if m.json()["state"] == "online"], timeout=20)
    finally:
        agent.kill()
        agent.communicate(timeout=10)
    [kept] = wait_for(lambda: [m for m in retained(mosquitto.port, topic)
                               if m.json()["state"] == "offline"], timeout=10)
    assert kept.json()["reason"] == "connection lost"


@pytest.mark.integration
def test_edge_agent_process_publishes_and_shuts_down_cleanly(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    recorder = Recorder(mosquitto.port)
    config = write_config(tmp_path, mosquitto.url)
    agent = run_agent(config)
    try:
        wait_for(lambda: len(recorder.kind("telemetry")) >= 3, timeout=20)
    finally:
        agent.send_signal(signal.SIGTERM)
        output = agent.communicate(timeout=15)[0].decode()
    assert agent.returncode == 0, output
    wait_for(lambda: len(recorder.kind("status")) >= 2)
    states = [m.json()["state"] for m in recorder.kind("status")]
    assert states[0] == "online" and states[-1] == "offline"
    seqs = [TelemetryMessage.model_validate(m.json()).seq for m in recorder.kind("telemetry")]
    assert seqs == list(range(len(seqs)))
    readings = recorder.kind("telemetry")[0].json()["readings"]
    assert {"volume_m3", "soil_moisture_vwc", "valve_open"} <= set(readings)

    # a restart continues the seq instead of reusing numbers ingest has already stored
    agent = run_agent(config)
    try:
        wait_for(lambda: len(recorder.kind("telemetry")) > len(seqs), timeout=20)
    finally:
        agent.send_signal(signal.SIGINT)
        agent.communicate(timeout=15)
    assert agent.returncode == 0
    recorder.close()
    sent = [record["seq"] for m in recorder.kind("telemetry")  # a replay comes as a batch
            for record in m.json().get("batch", [m.json()])]
    after = sent[len(seqs):]
    assert after[0] == len(seqs)


def test_edge_agent_refuses_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_text('device_id = "d-1"\nsite_id = "s-1"\n[driver]\nkind = "simulated"\n'
                    'site_type = "vineyard"\n', encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "edge", "--config", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "driver.site_type" in result.stderr


@pytest.mark.integration
def test_tls_with_client_certificate_and_per_device_password(tmp_path: Path) -> None:
    """``mqtts://`` with the project's CA, a client certificate and the device's own password."""
    certs = tmp_path / "certs"
    subprocess.run([str(ROOT / "broker" / "make-dev-certs.sh"), "--out", str(certs),
                    "--client", "d-tls-1"], check=True, capture_output=True, timeout=60)
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "d-tls-1", "s3cret"],
                   check=True, capture_output=True, timeout=30)
    tls_port = free_port()
    broker = Mosquitto(
        tmp_path / "mosquitto", password_file=passwords,
        extra_config="\n".join([
            *(["user root"] if os.geteuid() == 0 else []),
            f"listener {tls_port} 127.0.0.1",
            f"cafile {certs / 'ca.crt'}",
            f"certfile {certs / 'server.crt'}",
            f"keyfile {certs / 'server.key'}",
            "require_certificate true",
        ]),
    )
    broker.start()
    url = f"mqtts://127.0.0.1:{tls_port}"
    cert, key = certs / "client-d-tls-1.crt", certs / "client-d-tls-1.key"
    try:
        good = DevicePublisher("d-tls-1", "site-t", url, password="s3cret",
                               ca_file=certs / "ca.crt", cert_file=cert, key_file=key)
        good.start(wait_s=10)
        good.telemetry(datetime(2025, 6, 1, tzinfo=UTC), {"battery_v": 12.5})
        assert good.wait_all_acked(10)
        good.close()

        wrong_password = DevicePublisher("d-tls-1", "site-t", url, password="guess",
                                         ca_file=certs / "ca.crt", cert_file=cert, key_file=key,
                                         reconnect_max_s=0.5)
        no_certificate = DevicePublisher("d-tls-1", "site-t", url, password="s3cret",
                                         ca_file=certs / "ca.crt", reconnect_max_s=0.5)
        for refused in (wrong_password, no_certificate):
            refused.start()
            assert not refused.wait_connected(3)
            refused.close(timeout=1)
    finally:
        broker.stop()
