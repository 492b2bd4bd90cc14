"""Ingest's own MQTT 5 input: the packet codec, and the input against a real Mosquitto.

The input replaced paho-mqtt in ingest for speed (docs/performance.md), so what
paho gave for free is checked here: packets split right wherever a read ends,
acks only on the connection a message came on, redelivery of what was not
acked, the queued backlog that arrives right behind the CONNACK, reconnecting
until the broker is there. TLS and passwords: ``tests/test_broker_config.py``.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.servers import Mosquitto, free_port
from ingest_service.inputs import mqtt as mqtt_input
from ingest_service.inputs import mqtt_wire as wire
from ingest_service.inputs.mqtt import MqttInput
from ingest_service.model import Inbound
from ingest_service.settings import Settings
from tests.helpers import mosquitto_pub, wait_behind_marker, wait_for

TOPIC = "farm/v1/site-1/dev-1/telemetry"


def publish_packet(
    topic: str, payload: bytes, qos: int, packet_id: int, props: bytes = b""
) -> bytes:
    body = wire.utf8(topic)
    if qos:
        body += struct.pack(">H", packet_id)
    body += wire.varint(len(props)) + props + payload
    return wire.packet(wire.PUBLISH, qos << 1, body)


STREAM = [
    publish_packet(TOPIC, b'{"v":1}', 1, 1),
    publish_packet("farm/v1/s/d/status", b"", 0, 0),
    # payload format indicator and a user property: skipped, not misread as payload
    publish_packet(TOPIC, b"with props", 1, 2, b"\x01\x01\x26" + wire.utf8("k") + wire.utf8("v")),
    publish_packet(TOPIC, b"x" * 20_000, 1, 65535),  # a three-byte remaining length
    publish_packet("farm/v1/站点/设备/telemetry", b"\xff\x00", 1, 3),
    wire.packet(wire.PINGRESP, 0, b""),
    wire.packet(wire.SUBACK, 0, b"\x00\x01\x00\x01\x80"),
]
EXPECTED_PUBLISHES = [
    (TOPIC, b'{"v":1}', 1, 1),
    ("farm/v1/s/d/status", b"", 0, 0),
    (TOPIC, b"with props", 1, 2),
    (TOPIC, b"x" * 20_000, 1, 65535),
    ("farm/v1/站点/设备/telemetry", b"\xff\x00", 1, 3),
]
EXPECTED_OTHERS = [(wire.PINGRESP, 0, b""), (wire.SUBACK, 0, b"\x00\x01\x00\x01\x80")]


@pytest.mark.parametrize(
    "value", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455]
)
def test_variable_byte_integers_round_trip(value: int) -> None:
    encoded = wire.varint(value)
    assert len(encoded) == 1 + (value > 127) + (value > 16_383) + (value > 2_097_151)
    assert wire.read_varint(b"\x00" + encoded + b"\x00", 1) == (value, 1 + len(encoded))
    assert wire.read_varint(encoded[:-1], 0) is None  # cut short: wait for more


def test_variable_byte_integer_limits() -> None:
    with pytest.raises(ValueError):
        wire.varint(268_435_456)
    with pytest.raises(wire.ProtocolError):
        wire.read_varint(b"\xff\xff\xff\xff\x01", 0)


def test_packets_split_the_same_wherever_a_read_ends() -> None:
    data = b"".join(STREAM)
    whole_pub: list[wire.Publish] = []
    whole_other: list[wire.Other] = []
    assert wire.split_packets(data, whole_pub, whole_other) == len(data)
    assert whole_pub == EXPECTED_PUBLISHES
    assert whole_other == EXPECTED_OTHERS
    step = 7  # every boundary of the small packets, and inside the large one's header
    for cut in [*range(0, 80), *range(80, len(data), step)]:
        publishes: list[wire.Publish] = []
        others: list[wire.Other] = []
        used = wire.split_packets(data[:cut], publishes, others)
        rest = data[:cut][used:] + data[cut:]
        assert wire.split_packets(rest, publishes, others) == len(rest), cut
        assert publishes == EXPECTED_PUBLISHES, cut
        assert others == EXPECTED_OTHERS, cut


def test_a_malformed_publish_is_a_protocol_error() -> None:
    bad_qos = bytearray(publish_packet(TOPIC, b"{}", 1, 1))
    bad_qos[0] |= 0x06  # QoS 3 does not exist
    with pytest.raises(wire.ProtocolError):
        wire.split_packets(bytes(bad_qos), [], [])
    # a topic length running past the packet
    body = struct.pack(">H", 500) + b"farm" + b"\x00\x01\x00"
    with pytest.raises(wire.ProtocolError):
        wire.split_packets(wire.packet(wire.PUBLISH, 2, body), [], [])


def test_pubacks_are_four_bytes_each_in_order() -> None:
    assert wire.pubacks([1, 0x1234, 65535]) == (
        b"\x40\x02\x00\x01" + b"\x40\x02\x12\x34" + b"\x40\x02\xff\xff"
    )
    assert wire.pubacks([]) == b""


def test_connect_packet_carries_session_expiry_receive_maximum_and_credentials() -> None:
    packet = wire.connect_packet(
        "ingest-1", keepalive=30, clean_start=False, session_expiry=3600,
        receive_maximum=20_000, username="svc", password="pw",
    )
    assert packet[0] == 0x10
    length, at = wire.read_varint(packet, 1) or (0, 0)
    assert at + length == len(packet)
    body = packet[at:]
    assert body[:7] == b"\x00\x04MQTT\x05"
    assert body[7] == 0x80 | 0x40  # user name and password, no clean start
    assert struct.unpack(">H", body[8:10]) == (30,)
    props, after = wire.properties(body, 10)
    assert props == {wire.PROP_SESSION_EXPIRY: 3600, wire.PROP_RECEIVE_MAXIMUM: 20_000}
    assert body[after:] == wire.utf8("ingest-1") + wire.utf8("svc") + wire.binary(b"pw")


# --- against a real Mosquitto ------------------------------------------------------------


class Collector:
    """Stands in for the pipeline: keeps every delivered message."""

    def __init__(self) -> None:
        self.inbounds: list[Inbound] = []
        self.changes = 0
        self._lock = threading.Lock()

    def deliver(self, batch: list[Inbound]) -> None:
        with self._lock:
            self.inbounds.extend(batch)

    def changed(self) -> None:
        self.changes += 1

    def payloads(self) -> list[bytes]:
        with self._lock:
            return [item.payload for item in self.inbounds]


def make_input(url: str, collector: Collector, client_id: str = "t-input") -> MqttInput:
    settings = Settings(mqtt_url=url, mqtt_client_id=client_id)
    return MqttInput(settings, collector.deliver, collector.changed)


@pytest.fixture
def started() -> Iterator[list[MqttInput]]:
    inputs: list[MqttInput] = []
    yield inputs
    for item in inputs:
        item.stop()


def running(url: str, collector: Collector, started: list[MqttInput]) -> MqttInput:
    """An input started (stopped after the test) and subscribed."""
    receiver = make_input(url, collector)
    started.append(receiver)
    receiver.start()
    assert receiver.wait_connected(10)
    return receiver


def publish_all(port: int, payloads: list[bytes]) -> None:
    for payload in payloads:
        mosquitto_pub(port, TOPIC, payload)


MARKER = b"marker"


def marker_behind_the_session(port: int, collector: Collector) -> None:
    """The positive control before asserting that a reconnected session redelivered
    nothing more: a marker on the messages' own topic, published once the input is
    connected again. Mosquitto resends a session's unacknowledged messages right
    behind the CONNACK and queues the marker after them, so by the time the marker
    has been handed over, any redelivery has been too (not merely slow)."""
    wait_behind_marker(port, TOPIC, MARKER, lambda: MARKER in collector.payloads())


@pytest.mark.integration
def test_acked_messages_stay_acked_and_the_rest_come_again(
    mosquitto: Mosquitto, started: list[MqttInput]
) -> None:
    first = Collector()
    receiver = running(mosquitto.url, first, started)
    payloads = [f"m{i}".encode() for i in range(6)]
    publish_all(mosquitto.port, payloads)
    wait_for(lambda: len(first.payloads()) == 6)
    assert first.payloads() == payloads
    for item in first.inbounds[:4]:
        item.ack()
    time.sleep(0.5)  # let the PUBACKs go out
    receiver.stop()
    assert all(item.stale() for item in first.inbounds)

    again = Collector()
    running(mosquitto.url, again, started)
    # Whatever the session still holds (m4, m5, and m0-m3 had their acks been lost) is
    # queued ahead of a marker published now on the same topic, and comes first.
    marker_behind_the_session(mosquitto.port, again)
    assert again.payloads() == [*payloads[4:], MARKER]


@pytest.mark.integration
def test_a_lost_connections_messages_turn_stale_and_come_again(
    mosquitto: Mosquitto, started: list[MqttInput]
) -> None:
    collector = Collector()
    receiver = running(mosquitto.url, collector, started)
    publish_all(mosquitto.port, [b"a", b"b"])
    wait_for(lambda: len(collector.payloads()) == 2)
    old = list(collector.inbounds)
    mosquitto.restart()  # the connection is lost; the session persists
    wait_for(lambda: all(item.stale() for item in old))
    for item in old:
        item.ack()  # must not reach the new connection, where the ids may mean other messages
    wait_for(lambda: len(collector.payloads()) == 4, timeout=30)  # redelivered on reconnect
    assert collector.payloads() == [b"a", b"b", b"a", b"b"]
    fresh = collector.inbounds[2:]
    assert not any(item.stale() for item in fresh)
    assert collector.changes >= 3  # connected, lost, connected again
    for item in fresh:
        item.ack()
    time.sleep(0.5)
    receiver.stop()

    after = Collector()
    running(mosquitto.url, after, started)
    marker_behind_the_session(mosquitto.port, after)
    assert after.payloads() == [MARKER]  # the redelivered copies were acked


@pytest.mark.integration
def test_a_backlog_queued_while_away_arrives_behind_the_connack(
    mosquitto: Mosquitto, started: list[MqttInput]
) -> None:
    collector = Collector()
    receiver = make_input(mosquitto.url, collector)
    receiver.start()
    assert receiver.wait_connected(10)
    receiver.stop()  # the session stays, subscribed
    payloads = [f"queued {i}".encode() for i in range(300)]
    subprocess_publish_many(mosquitto.port, payloads)
    receiver = make_input(mosquitto.url, collector)
    started.append(receiver)
    receiver.start()
    wait_for(lambda: len(collector.payloads()) == 300)
    assert collector.payloads() == payloads


def subprocess_publish_many(port: int, payloads: list[bytes]) -> None:
    """Many messages with one ``mosquitto_pub -l`` (one line each)."""
    import subprocess

    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", TOPIC, "-l"],
        input=b"\n".join(payloads) + b"\n",
        check=True,
        timeout=30,
    )


@pytest.mark.integration
def test_it_waits_for_a_broker_that_is_not_there_yet(
    tmp_path: Path, started: list[MqttInput]
) -> None:
    port = free_port()
    collector = Collector()
    receiver = make_input(f"mqtt://127.0.0.1:{port}", collector)
    started.append(receiver)
    receiver.start()
    assert not receiver.wait_connected(1.5)
    broker = Mosquitto(tmp_path / "late", port=port)
    broker.start()
    try:
        assert receiver.wait_connected(40)
        mosquitto_pub(port, TOPIC, b"hello")
        wait_for(lambda: collector.payloads() == [b"hello"])
    finally:
        receiver.stop()
        broker.stop()


def test_stop_returns_promptly_when_never_connected() -> None:
    receiver = make_input(f"mqtt://127.0.0.1:{free_port()}", Collector())
    receiver.start()
    time.sleep(0.3)
    began = time.monotonic()
    receiver.stop()
    assert time.monotonic() - began < 5
    assert not receiver.connected


@pytest.mark.integration
def test_reading_pauses_while_the_pipeline_holds_the_receive_maximum(
    mosquitto: Mosquitto, started: list[MqttInput]
) -> None:
    """Memory stays bounded even when the broker sends beyond the receive maximum.

    Mosquitto 2.0.11 does, once acks flow: it moves its whole queue in flight. The
    input stops reading while the pipeline holds ``receive_maximum`` messages, so at
    most one socket read (≤ 1 MiB, ~120 of these 8 KiB messages) comes on top.
    """
    collector = Collector()
    acked = [0]

    def held() -> int:
        return len(collector.payloads()) - acked[0]

    settings = Settings(mqtt_url=mosquitto.url, mqtt_client_id="t-paused", receive_maximum=50)
    receiver = MqttInput(settings, collector.deliver, collector.changed, held=held)
    receiver.start()
    assert receiver.wait_connected(10)
    receiver.stop()
    subprocess_publish_many(mosquitto.port, [b"%04d" % i + b"x" * 8192 for i in range(1000)])
    receiver = MqttInput(settings, collector.deliver, collector.changed, held=held)
    started.append(receiver)
    receiver.start()
    wait_for(lambda: len(collector.payloads()) >= 50)
    for item in collector.inbounds[:20]:  # acks flow: Mosquitto 2.0.11 now sends everything
        item.ack()
    acked[0] = 20
    time.sleep(2.0)
    assert len(collector.payloads()) < 50 + 20 + 200

    def ack_everything_so_far() -> bool:  # room again: it reads on
        count = len(collector.payloads())
        for item in collector.inbounds[acked[0] : count]:
            item.ack()
        acked[0] = count
        return count == 1000

    wait_for(ack_everything_so_far)
    assert [p[:4] for p in collector.payloads()] == [b"%04d" % i for i in range(1000)]


@pytest.mark.integration
def test_reading_pauses_while_the_pipeline_holds_max_held_bytes(
    mosquitto: Mosquitto, started: list[MqttInput]
) -> None:
    """Big messages: the size bound pauses reading long before the receive maximum would.

    64 KiB messages, a receive maximum of 10,000 and ``max_held_bytes`` of 1 MiB: the
    input stops reading at 16 held messages, plus at most one read (≤ 1 MiB) on top.
    """
    collector = Collector()
    acked = [0]

    def held() -> int:
        return len(collector.payloads()) - acked[0]

    def held_bytes() -> int:
        return sum(len(p) for p in collector.payloads()[acked[0] :])

    settings = Settings(mqtt_url=mosquitto.url, mqtt_client_id="t-bytes",
                        receive_maximum=10_000, max_held_bytes=1024 * 1024)
    receiver = MqttInput(settings, collector.deliver, collector.changed,
                         held=held, held_bytes=held_bytes)
    receiver.start()
    assert receiver.wait_connected(10)
    receiver.stop()
    subprocess_publish_many(mosquitto.port, [b"%04d" % i + b"x" * 65536 for i in range(200)])
    receiver = MqttInput(settings, collector.deliver, collector.changed,
                         held=held, held_bytes=held_bytes)
    started.append(receiver)
    receiver.start()
    wait_for(lambda: len(collector.payloads()) >= 16)  # it did read
    time.sleep(2.0)
    assert len(collector.payloads()) <= 16 + 17, len(collector.payloads())

    def ack_everything_so_far() -> bool:  # the positive control: room again, it reads on
        count = len(collector.payloads())
        for item in collector.inbounds[acked[0] : count]:
            item.ack()
        acked[0] = count
        return count == 200

    wait_for(ack_everything_so_far)
    assert [p[:4] for p in collector.payloads()] == [b"%04d" % i for i in range(200)]


@pytest.mark.integration
@pytest.mark.slow
def test_a_broker_that_stops_answering_is_noticed_and_rejoined(
    mosquitto: Mosquitto, started: list[MqttInput], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hung broker (SIGSTOP: the TCP connection stays up, nothing answers) is detected
    by the missing PINGRESP, and the input reconnects once the broker answers again."""
    monkeypatch.setattr(mqtt_input, "KEEPALIVE_S", 2)
    monkeypatch.setattr(mqtt_input, "CONNECT_TIMEOUT_S", 2.0)
    collector = Collector()
    receiver = running(mosquitto.url, collector, started)
    assert mosquitto.process is not None
    mosquitto.process.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: not receiver.connected, timeout=15)
    finally:
        mosquitto.process.send_signal(signal.SIGCONT)
    assert receiver.wait_connected(30)
    mosquitto_pub(mosquitto.port, TOPIC, b"after the hang")
    wait_for(lambda: collector.payloads() == [b"after the hang"])


@pytest.mark.integration
def test_stop_and_start_again_keep_no_descriptor(
    mosquitto: Mosquitto, started: list[MqttInput]
) -> None:
    before = len(os.listdir("/proc/self/fd"))
    collector = Collector()
    receiver = make_input(mosquitto.url, collector)
    for _ in range(3):
        receiver.start()
        assert receiver.wait_connected(10)
        receiver.stop()
    assert len(os.listdir("/proc/self/fd")) == before
    started.append(receiver)
    receiver.start()  # and it still works
    assert receiver.wait_connected(10)
    mosquitto_pub(mosquitto.port, TOPIC, b"again")
    wait_for(lambda: collector.payloads() == [b"again"])


@pytest.mark.integration
def test_a_failure_downstream_reconnects_and_the_message_comes_again(
    mosquitto: Mosquitto, started: list[MqttInput]
) -> None:
    """A bug after a read must not end the input silently: it reconnects, nothing is lost."""
    collector = Collector()
    failures = []

    def deliver(batch: list[Inbound]) -> None:
        if not failures:
            failures.append(batch)
            raise RuntimeError("a bug downstream")
        collector.deliver(batch)

    settings = Settings(mqtt_url=mosquitto.url, mqtt_client_id="t-failing")
    receiver = MqttInput(settings, deliver, collector.changed)
    started.append(receiver)
    receiver.start()
    assert receiver.wait_connected(10)
    mosquitto_pub(mosquitto.port, TOPIC, b"survives")
    wait_for(lambda: collector.payloads() == [b"survives"])
    assert len(failures) == 1 and failures[0][0].stale()


@pytest.mark.integration
@pytest.mark.slow
def test_a_long_pause_keeps_the_connection(
    mosquitto: Mosquitto, started: list[MqttInput], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paused (InfluxDB down, the pipeline full), the input still pings, so the broker keeps
    the connection: otherwise every keepalive × 1.5 would cost a reconnect and a redelivery
    of the whole receive maximum."""
    monkeypatch.setattr(mqtt_input, "KEEPALIVE_S", 2)
    collector = Collector()
    full = [False]
    settings = Settings(mqtt_url=mosquitto.url, mqtt_client_id="t-long-pause")
    receiver = MqttInput(
        settings, collector.deliver, collector.changed, held=lambda: 10**9 if full[0] else 0
    )
    started.append(receiver)
    receiver.start()
    assert receiver.wait_connected(10)
    full[0] = True
    time.sleep(8)  # four keepalive periods without reading
    full[0] = False
    mosquitto_pub(mosquitto.port, TOPIC, b"still here")
    wait_for(lambda: collector.payloads() == [b"still here"])
    assert collector.changes == 1, "the connection was lost while paused"
