"""broker/: the real Mosquitto with the project's mosquitto.conf and ACL.

The broker runs the committed ``broker/mosquitto.conf`` with only its paths and
listener ports rewritten for a temporary folder, the committed ``broker/acl``,
certificates made by ``broker/make-dev-certs.sh`` and a password file made with
``mosquitto_passwd``. The clients are paho-mqtt, as devices and the ingest
service use it.

Mosquitto drops a publish its ACL forbids without telling an MQTT 3.1.1 client,
so "was not delivered" is proven by ordering: after the forbidden message, the
same client publishes an allowed marker (or, for an account that may publish
nothing, waits for the broker's PUBACK, which Mosquitto sends only after routing
the message, and then another client publishes the marker). A subscriber gets
its messages in the order the broker routed them, so once it has the marker
the forbidden message would have come before it.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from devstack.servers import LOOPBACK, find_binary, free_port
from farm_contract.settings import Settings
from ingest_service.inputs.mqtt import MqttInput
from ingest_service.model import Inbound

ROOT = Path(__file__).resolve().parents[1]
BROKER = ROOT / "broker"

PASSWORDS = {
    "d1": "pw-d1",
    "d2": "pw-d2",
    "svc.ingest": "pw-ingest",
    "svc.simulator": "pw-simulator",
}

pytestmark = pytest.mark.integration


@dataclass
class Broker:
    port: int
    tls_port: int
    certs: Path
    log: Path


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {log.read_text(errors='replace')}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {port}: {log.read_text(errors='replace')}")


def _test_config(conf: str, work: Path, port: int, tls_port: int) -> str:
    """broker/mosquitto.conf with paths under ``work`` and loopback listeners on free ports."""
    replacements = [
        (r"^listener 1883$", f"listener {port} {LOOPBACK}"),
        (r"^listener 8883$", f"listener {tls_port} {LOOPBACK}"),
        (r"^password_file /mosquitto/config/passwd$", f"password_file {work / 'passwd'}"),
        (r"^acl_file /mosquitto/config/acl$", f"acl_file {BROKER / 'acl'}"),
        (r"^persistence_location /mosquitto/data/$", f"persistence_location {work / 'data'}/"),
        (r" /mosquitto/config/certs/", f" {work / 'certs'}/"),
    ]
    for pattern, replacement in replacements:
        conf, count = re.subn(pattern, replacement, conf, flags=re.MULTILINE)
        assert count, f"broker/mosquitto.conf no longer has {pattern!r}"
    settings = [line for line in conf.splitlines() if not line.startswith("#")]
    assert not [line for line in settings if "/mosquitto/" in line], "an image path is left"
    # Stay root when the tests run as root: the temporary files are root's alone.
    return conf + "user root\n"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    work = tmp_path_factory.mktemp("mosquitto")
    (work / "data").mkdir()
    subprocess.run(
        [str(BROKER / "make-dev-certs.sh"), "--out", str(work / "certs")],
        check=True, capture_output=True,
    )
    passwd = find_binary("mosquitto_passwd")
    create = ["-c"]
    for user, password in PASSWORDS.items():
        subprocess.run(
            [passwd, *create, "-b", str(work / "passwd"), user, password],
            check=True, capture_output=True,
        )
        create = []
    port, tls_port = free_port(), free_port()
    conf = _test_config((BROKER / "mosquitto.conf").read_text(), work, port, tls_port)
    (work / "mosquitto.conf").write_text(conf)
    log = work / "mosquitto.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [find_binary("mosquitto"), "-c", str(work / "mosquitto.conf")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_port(port, process, log)
        _wait_port(tls_port, process, log)
        yield Broker(port=port, tls_port=tls_port, certs=work / "certs", log=log)
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Peer:
    """A connected paho-mqtt client and the messages it has received."""

    client: mqtt.Client
    messages: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)

    def publish(self, topic: str, payload: str) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=5)
        assert info.is_published()

    def subscribe(self, topic_filter: str) -> None:
        granted: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: granted.put(codes)
        self.client.subscribe(topic_filter, qos=1)
        codes = granted.get(timeout=5)
        assert not codes[0].is_failure, f"subscription to {topic_filter} refused: {codes}"

    def until(self, marker: str, timeout: float = 5) -> list[tuple[str, bytes]]:
        """Messages received up to and including the one whose payload is ``marker``."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            topic, payload = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            seen.append((topic, payload))
            if payload == marker.encode():
                return seen

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(
    broker: Broker, user: str | None, password: str | None = None, tls: bool = False,
) -> tuple[ReasonCode, Peer]:
    """Connect (MQTT 3.1.1, like the devices) and return the CONNACK reason code."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv311,
    )
    peer = Peer(client)
    connack: queue.Queue[ReasonCode] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, code, _p: connack.put(code)
    client.on_message = lambda _c, _u, msg: peer.messages.put((msg.topic, bytes(msg.payload)))
    if user is not None:
        client.username_pw_set(user, password)
    if tls:
        client.tls_set(ca_certs=str(broker.certs / "ca.crt"), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.connect(LOOPBACK, broker.tls_port if tls else broker.port)
    client.loop_start()
    code = connack.get(timeout=5)
    if code.is_failure:
        client.loop_stop()
    return code, peer


def connected(broker: Broker, user: str, tls: bool = False) -> Peer:
    code, peer = connect(broker, user, PASSWORDS[user], tls=tls)
    assert not code.is_failure, f"{user} refused: {code}"
    return peer


@pytest.fixture
def ingest(broker: Broker) -> Iterator[Peer]:
    peer = connected(broker, "svc.ingest")
    peer.subscribe("farm/v1/#")
    peer.subscribe("application/+/device/+/event/up")
    yield peer
    peer.close()


def test_anonymous_and_wrong_password_are_refused(broker: Broker) -> None:
    code, _ = connect(broker, None)
    assert code.is_failure
    code, _ = connect(broker, "d1", "wrong")
    assert code.is_failure
    code, _ = connect(broker, "nobody", "pw-d1")
    assert code.is_failure


def test_device_publishes_only_under_its_own_id(broker: Broker, ingest: Peer) -> None:
    d1 = connected(broker, "d1")
    try:
        d1.publish("farm/v1/s1/d1/telemetry", "own")
        d1.publish("farm/v1/s1/d2/telemetry", "spoofed")
        d1.publish("farm/v1/s1/d2/event", "spoofed")
        d1.publish("application/a/device/0011223344556677/event/up", "spoofed")
        d1.publish("farm/v1/s2/d1/event", "own-other-site")
        d1.publish("farm/v1/s1/d1/status", "marker")
        seen = ingest.until("marker")
    finally:
        d1.close()
    assert seen == [
        ("farm/v1/s1/d1/telemetry", b"own"),
        ("farm/v1/s2/d1/event", b"own-other-site"),
        ("farm/v1/s1/d1/status", b"marker"),
    ]


def test_device_reads_nothing(broker: Broker) -> None:
    d1 = connected(broker, "d1")
    d2 = connected(broker, "d2")
    try:
        # Mosquitto 2.0 grants the subscription, then checks read access per message.
        d1.client.subscribe("farm/v1/#", qos=1)
        d2.publish("farm/v1/s1/d2/telemetry", "secret")
        d1.publish("farm/v1/s1/d1/telemetry", "marker")
        time.sleep(0.3)
        assert d1.messages.empty()
    finally:
        d1.close()
        d2.close()


def test_ingest_account_reads_but_cannot_publish(broker: Broker, ingest: Peer) -> None:
    writer = connected(broker, "svc.ingest")
    d1 = connected(broker, "d1")
    try:
        writer.publish("farm/v1/s1/d1/telemetry", "forged")
        writer.publish("farm/v1/s1/svc.ingest/telemetry", "forged")
        writer.publish("application/a/device/0011223344556677/event/up", "forged")
        # PUBACKs are back, so the broker has routed (or dropped) all three.
        d1.publish("farm/v1/s1/d1/telemetry", "marker")
        seen = ingest.until("marker")
    finally:
        writer.close()
        d1.close()
    assert seen == [("farm/v1/s1/d1/telemetry", b"marker")]


def test_simulator_account_publishes_for_the_fleet(broker: Broker, ingest: Peer) -> None:
    simulator = connected(broker, "svc.simulator")
    try:
        simulator.publish("farm/v1/s9/d9/telemetry", "t")
        simulator.publish("application/a/device/0011223344556677/event/up", "uplink")
        simulator.publish("farm/v1/s9/d8/event", "marker")
        seen = ingest.until("marker")
    finally:
        simulator.close()
    assert [topic for topic, _ in seen] == [
        "farm/v1/s9/d9/telemetry",
        "application/a/device/0011223344556677/event/up",
        "farm/v1/s9/d8/event",
    ]


def test_tls_listener_with_dev_certificates(broker: Broker, ingest: Peer) -> None:
    d2 = connected(broker, "d2", tls=True)
    try:
        d2.publish("farm/v1/s1/d2/telemetry", "marker")
        assert ingest.until("marker") == [("farm/v1/s1/d2/telemetry", b"marker")]
    finally:
        d2.close()


def test_ingest_input_over_tls_with_its_password(broker: Broker) -> None:
    """Ingest's own MQTT input (not paho) on the project's TLS listener, as svc.ingest."""
    received: list[tuple[str, bytes]] = []

    def deliver(batch: list[Inbound]) -> None:
        for item in batch:
            received.append((item.topic, item.payload))
            item.ack()

    def settings(password: str) -> Settings:
        return Settings(
            mqtt_url=f"mqtts://svc.ingest:{password}@localhost:{broker.tls_port}",
            mqtt_ca_file=broker.certs / "ca.crt",
            mqtt_client_id=f"t-ingest-{uuid.uuid4().hex[:8]}",
        )

    wrong = MqttInput(settings("guess"), deliver)
    wrong.start()
    try:
        assert not wrong.wait_connected(2), "a wrong password must be refused"
    finally:
        wrong.stop()
    receiver = MqttInput(settings(PASSWORDS["svc.ingest"]), deliver)
    receiver.start()
    d2 = connected(broker, "d2", tls=True)
    try:
        assert receiver.wait_connected(10)
        d2.publish("farm/v1/s1/d2/telemetry", "over tls")
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received == [("farm/v1/s1/d2/telemetry", b"over tls")]
    finally:
        d2.close()
        receiver.stop()


def test_compose_entrypoint_builds_the_broker_config(tmp_path: Path) -> None:
    """broker/compose-entrypoint.sh, as the mosquitto service runs it, minus the container."""
    src = tmp_path / "broker"
    shutil.copytree(BROKER, src, ignore=shutil.ignore_patterns("certs"))
    env = {
        **os.environ,
        "BROKER_SRC": str(src), "BROKER_CONF": str(tmp_path / "config"),
        "BROKER_DATA": str(tmp_path / "data"), "MOSQUITTO": "/bin/echo",
        "MQTT_INGEST_PASSWORD": "i", "MQTT_SIMULATOR_PASSWORD": "s",
        "MQTT_EXTRA_USERS": "d1:p1 d2:p:2",
    }
    (tmp_path / "data").mkdir()

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(src / "compose-entrypoint.sh")], env=env, check=True,
            capture_output=True, text=True,
        )

    result = run()
    conf = (tmp_path / "config" / "mosquitto.conf").read_text()
    assert "TLS listener 8883 disabled" in result.stderr
    assert "listener 1883" in conf and "listener 8883" not in conf and "cafile" not in conf
    users = [line.split(":")[0] for line in (tmp_path / "config" / "passwd").read_text().split()]
    assert users == ["svc.ingest", "svc.simulator", "d1", "d2"]
    assert (tmp_path / "config" / "acl").read_text() == (BROKER / "acl").read_text()
    assert result.stdout.split() == ["-c", str(tmp_path / "config" / "mosquitto.conf")]

    subprocess.run([str(src / "make-dev-certs.sh"), "--out", str(src / "certs")], check=True,
                   capture_output=True)
    run()
    assert (tmp_path / "config" / "mosquitto.conf").read_text() == (
        BROKER / "mosquitto.conf").read_text()
    assert sorted(p.name for p in (tmp_path / "config" / "certs").iterdir()) == [
        "ca.crt", "server.crt", "server.key"]


def test_compose_healthcheck_command(broker: Broker) -> None:
    """The mosquitto service's healthcheck passes on a good broker and fails on bad credentials."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    kind, command = compose["services"]["mosquitto"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    command = command.replace("$$", "$")  # compose's escape for a literal $
    assert " -p 1883 " in command
    command = command.replace(" -p 1883 ", f" -p {broker.port} ")

    def check(password: str) -> int:
        env = {**os.environ, "MQTT_INGEST_PASSWORD": password}
        return subprocess.run(["sh", "-c", command], env=env, timeout=10,
                              capture_output=True).returncode

    assert check(PASSWORDS["svc.ingest"]) == 0
    assert check("wrong") != 0
