"""Ingest's MQTT input against a broker that misbehaves (issue 10, findings 3, 5 and 9).

A real Mosquitto never sends these bytes, so a fake broker on loopback sends them
(the developers' guide allows a fake broker for broker-side bytes only): a
remaining length of 200 MB, a Server Keep Alive of 0, a handshake that never
ends, a QoS 2 PUBLISH to a QoS 1 subscriber, and a DISCONNECT whose reason
string would forge log lines. The codec's own bounds (packet size, the topic
cache by bytes) are checked without any server.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.servers import LOOPBACK
from farm_contract.topics import TopicError, parse_chirpstack_topic, parse_device_topic
from ingest_service.inputs import mqtt as mqtt_input
from ingest_service.inputs import mqtt_wire as wire
from ingest_service.inputs.mqtt import MqttInput
from ingest_service.model import Inbound
from ingest_service.settings import Settings
from tests.helpers import wait_for

TOPIC = "farm/v1/site-1/dev-1/telemetry"
CONNACK = wire.packet(wire.CONNACK, 0, b"\x00\x00\x00")
SUBACK = wire.packet(wire.SUBACK, 0, b"\x00\x01\x00\x01\x01")


def publish_packet(topic: str, payload: bytes, qos: int, packet_id: int) -> bytes:
    body = wire.utf8(topic) + (struct.pack(">H", packet_id) if qos else b"") + b"\x00" + payload
    return wire.packet(wire.PUBLISH, qos << 1, body)


def packets(data: bytes) -> list[tuple[int, bytes]]:
    """(type, whole packet) of every complete packet in ``data``."""
    out = []
    at = 0
    while at < len(data):
        found = wire.read_varint(data, at + 1)
        if found is None or found[1] + found[0] > len(data):
            break
        end = found[1] + found[0]
        out.append((data[at] >> 4, data[at:end]))
        at = end
    return out


class FakeBroker:
    """Accepts connections and answers each with ``script(conn)``; keeps what clients sent."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.script = script
        self.server = socket.create_server((LOOPBACK, 0))
        self.port = self.server.getsockname()[1]
        self.received = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.server.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        reader = threading.Thread(target=self._read, args=(conn,), daemon=True)
        reader.start()
        with contextlib.suppress(OSError):
            self.script(conn)

    def _read(self, conn: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self.received += chunk

    def sent_by_client(self) -> list[tuple[int, bytes]]:
        with self._lock:
            return packets(bytes(self.received))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.server.close()


class Collector:
    def __init__(self) -> None:
        self.inbounds: list[Inbound] = []

    def deliver(self, batch: list[Inbound]) -> None:
        self.inbounds.extend(batch)


@pytest.fixture
def inputs() -> Iterator[list[MqttInput]]:
    made: list[MqttInput] = []
    yield made
    for item in made:
        item.stop()


def start_input(port: int, inputs: list[MqttInput], collector: Collector) -> MqttInput:
    settings = Settings(mqtt_url=f"mqtt://{LOOPBACK}:{port}", mqtt_client_id="t-hostile")
    receiver = MqttInput(settings, collector.deliver)
    inputs.append(receiver)
    receiver.start()
    return receiver


def hold_open(conn: socket.socket, seconds: float = 30) -> None:
    time.sleep(seconds)
    conn.close()


# --- the codec's bounds -----------------------------------------------------------------


def test_a_huge_announced_packet_is_refused_before_it_is_buffered() -> None:
    header = bytes([wire.PUBLISH << 4 | 2]) + wire.varint(200_000_000)
    with pytest.raises(wire.PacketTooLarge) as caught:
        wire.split_packets(header + b"\x00\x04farm", [], [], max_size=512 * 1024)
    assert caught.value.reason == wire.REASON_PACKET_TOO_LARGE
    # one byte under the limit is waited for, not refused
    fits = bytes([wire.PUBLISH << 4 | 2]) + wire.varint(512 * 1024 - 4)
    assert wire.split_packets(fits, [], [], max_size=512 * 1024) == 0


def test_a_qos_2_publish_is_a_protocol_error_not_a_message() -> None:
    publishes: list[wire.Publish] = []
    with pytest.raises(wire.ProtocolError) as caught:
        wire.split_packets(publish_packet(TOPIC, b"{}", 2, 7), publishes, [])
    assert caught.value.reason == wire.REASON_PROTOCOL_ERROR
    assert publishes == []


def test_a_reason_string_cannot_forge_log_lines() -> None:
    forged = "bye\n2026-01-01 INFO ingest: all good\r\x1b[2J\u2028" + "x" * 1000
    props = bytes([wire.PROP_REASON_STRING]) + wire.utf8(forged)
    text = wire.reason_text(b"\x8e" + wire.varint(len(props)) + props, 0)
    assert text.startswith("0x8e (session taken over): bye?2026-01-01")
    assert text.isprintable()
    assert len(text) < wire.REASON_STRING_MAX + 40


def test_subscribe_asks_for_retained_messages_only_on_a_new_subscription() -> None:
    packet = wire.subscribe_packet(1, ["farm/v1/#"], 1, wire.RETAIN_HANDLING_IF_NEW)
    assert packet[-1] == 0x11  # retain handling 1 (bits 4-5), QoS 1


def test_the_topic_cache_is_bounded_by_bytes() -> None:
    """1,000 distinct 60 KB topics (finding 3: +200 MiB before) stay within the byte bound."""
    cache = wire.TopicCache()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            site = (b"%04d" % i) * 15_000
            data = publish_packet("farm/v1/" + site.decode() + "/d1/telemetry", b"{}", 1, 1)
            publishes: list[wire.Publish] = []
            wire.split_packets(data, publishes, [], cache)
            assert len(publishes) == 1
            del publishes, data
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.size <= wire.TOPIC_CACHE_BYTES
    assert grown <= wire.TOPIC_CACHE_BYTES + (1 << 20), f"grew {grown / 2**20:.0f} MiB"
    # an ordinary fleet's topics still share one string each
    cache.clear()
    first: list[wire.Publish] = []
    second: list[wire.Publish] = []
    wire.split_packets(publish_packet(TOPIC, b"1", 1, 1), first, [], cache)
    wire.split_packets(publish_packet(TOPIC, b"2", 1, 2), second, [], cache)
    assert first[0][0] is second[0][0]


def test_connect_announces_the_maximum_packet_size() -> None:
    packet = wire.connect_packet(
        "svc.ingest", keepalive=30, clean_start=False, session_expiry=60,
        receive_maximum=100, maximum_packet_size=524_288,
    )
    _, at = wire.read_varint(packet, 1) or (0, 0)
    props, _ = wire.properties(packet[at:], 10)
    assert props[wire.PROP_MAXIMUM_PACKET_SIZE] == 524_288


# --- the input against a fake broker ------------------------------------------------------


def test_a_peer_announcing_200_mb_is_disconnected_with_packet_too_large(
    inputs: list[MqttInput],
) -> None:
    def script(conn: socket.socket) -> None:
        conn.sendall(CONNACK + SUBACK)
        conn.sendall(bytes([wire.PUBLISH << 4 | 2]) + wire.varint(200_000_000))
        for _ in range(100):  # trickle the start of it, as the hostile peer did
            conn.sendall(b"\x00" * 65536)
        hold_open(conn, 5)

    broker = FakeBroker(script)
    try:
        receiver = start_input(broker.port, inputs, Collector())
        wait_for(lambda: (wire.DISCONNECT, b"\xe0\x01\x95") in broker.sent_by_client(), 10)
        assert receiver.events().get("packet_too_large") == 1
    finally:
        broker.close()


def test_a_huge_connack_is_refused_unread(inputs: list[MqttInput]) -> None:
    """The handshake's read is bounded too: a CONNACK announcing 200 MB is not waited for."""
    def script(conn: socket.socket) -> None:
        conn.sendall(bytes([wire.CONNACK << 4]) + wire.varint(200_000_000) + b"\x00" * 65536)
        hold_open(conn, 10)

    broker = FakeBroker(script)
    try:
        receiver = start_input(broker.port, inputs, Collector())
        wait_for(lambda: broker.connections >= 2, timeout=8)  # refused at once, tried again
        assert not receiver.connected
    finally:
        broker.close()


def test_server_keep_alive_0_means_no_pings(inputs: list[MqttInput]) -> None:
    """Finding 9: 105k PINGREQs in 5 s before."""
    props = bytes([wire.PROP_SERVER_KEEP_ALIVE]) + b"\x00\x00"
    connack = wire.packet(wire.CONNACK, 0, b"\x00\x00" + wire.varint(len(props)) + props)

    def script(conn: socket.socket) -> None:
        conn.sendall(connack + SUBACK)
        hold_open(conn)

    broker = FakeBroker(script)
    try:
        receiver = start_input(broker.port, inputs, Collector())
        assert receiver.wait_connected(5)
        time.sleep(2)
        kinds = [kind for kind, _ in broker.sent_by_client()]
        assert kinds.count(wire.PINGREQ) == 0, f"{kinds.count(wire.PINGREQ)} PINGREQs"
        assert kinds == [wire.CONNECT, wire.SUBSCRIBE]
        assert receiver.connected
    finally:
        broker.close()


def test_a_handshake_that_drips_is_abandoned_at_the_deadline(
    inputs: list[MqttInput], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer sending a byte of its CONNACK now and then never completes the handshake; each
    byte used to restart the 10 s read timeout, so the input waited for ever."""
    monkeypatch.setattr(mqtt_input, "CONNECT_TIMEOUT_S", 1.0)

    def script(conn: socket.socket) -> None:
        conn.sendall(bytes([wire.CONNACK << 4, 100]))  # a CONNACK of 100 bytes, ...
        for _ in range(100):
            time.sleep(0.3)
            conn.sendall(b"\x00")  # ... sent a byte at a time

    broker = FakeBroker(script)
    try:
        receiver = start_input(broker.port, inputs, Collector())
        wait_for(lambda: broker.connections >= 2, timeout=6)  # gave up, and tries again
        assert not receiver.connected
    finally:
        broker.close()


def test_a_qos_2_publish_is_refused_with_a_disconnect_never_a_puback(
    inputs: list[MqttInput],
) -> None:
    def script(conn: socket.socket) -> None:
        conn.sendall(CONNACK + SUBACK + publish_packet(TOPIC, b'{"v":1}', 2, 9))
        hold_open(conn, 5)

    broker = FakeBroker(script)
    collector = Collector()
    try:
        receiver = start_input(broker.port, inputs, collector)
        wait_for(lambda: (wire.DISCONNECT, b"\xe0\x01\x82") in broker.sent_by_client(), 10)
        kinds = [kind for kind, _ in broker.sent_by_client()]
        assert wire.PUBACK not in kinds
        assert collector.inbounds == []
        assert receiver.events().get("protocol_error") == 1
    finally:
        broker.close()


def test_a_disconnect_reason_string_is_logged_on_one_line_and_counted(
    inputs: list[MqttInput], caplog: pytest.LogCaptureFixture
) -> None:
    forged = "taken\nERROR ingest_service: database dropped"
    props = bytes([wire.PROP_REASON_STRING]) + wire.utf8(forged)
    disconnect = wire.packet(wire.DISCONNECT, 0, b"\x8e" + wire.varint(len(props)) + props)

    def script(conn: socket.socket) -> None:
        conn.sendall(CONNACK + SUBACK)
        time.sleep(0.3)
        conn.sendall(disconnect)
        conn.close()

    broker = FakeBroker(script)
    caplog.set_level(logging.INFO, logger="ingest_service.inputs.mqtt")
    try:
        receiver = start_input(broker.port, inputs, Collector())
        wait_for(lambda: receiver.events().get("session_taken_over") == 1, 10)
        taken = [r.getMessage() for r in caplog.records if mqtt_input.SESSION_TAKEN_OVER
                 in r.getMessage()]
        assert taken and all("\n" not in message for message in taken)
        assert "taken?ERROR ingest_service" in taken[0]
    finally:
        broker.close()


def test_reconnects_after_a_drop_back_off_with_jitter(inputs: list[MqttInput]) -> None:
    """A broker that drops every connection at once sees a few connections, not thousands
    (12,505 in 6 s between two clients fighting over one client id, before)."""

    def script(conn: socket.socket) -> None:
        conn.sendall(CONNACK + SUBACK)
        time.sleep(0.05)
        conn.close()

    broker = FakeBroker(script)
    try:
        start_input(broker.port, inputs, Collector())
        time.sleep(4)
        assert 2 <= broker.connections <= 6, broker.connections
    finally:
        broker.close()
    delays = [mqtt_input.reconnect_delay(3) for _ in range(200)]
    assert 2.0 <= min(delays) < max(delays) <= 4.0  # 0.5 s × 2³, jittered over its upper half


# --- any bytes at all -----------------------------------------------------------------------


@given(
    stream=st.lists(
        st.one_of(
            st.builds(lambda t, p, q, i: publish_packet(t, p, q, i),
                      st.text(max_size=40), st.binary(max_size=300),
                      st.integers(0, 1), st.integers(1, 65535)),
            st.binary(max_size=12),  # hostile: headers, huge lengths, junk
        ),
        max_size=8,
    ),
    cuts=st.lists(st.integers(1, 400), max_size=6),
)
@settings(max_examples=300, deadline=None)
def test_any_bytes_in_any_chunks_are_split_or_refused_within_the_bound(
    stream: list[bytes], cuts: list[int]
) -> None:
    """Fed in arbitrary chunks, the codec either splits packets or raises ProtocolError;
    what it leaves waiting never announces more than the maximum packet size, so the
    input never buffers more than that for one packet."""
    data = b"".join(stream)
    max_size = 256
    cache = wire.TopicCache(max_bytes=4096)
    pending = b""
    at = 0
    try:
        for cut in [*cuts, len(data)]:
            pending += data[at : at + cut]
            at += cut
            publishes: list[wire.Publish] = []
            used = wire.split_packets(pending, publishes, [], cache, max_size)
            pending = pending[used:]
            assert all(qos in (0, 1) for _, _, qos, _ in publishes)
            size = wire.packet_size(pending)
            assert size is None or size <= max_size
            assert cache.size <= 4096
    except wire.ProtocolError:
        return


@pytest.mark.parametrize("topic", [
    "farm/v1/s1/d1/Telemetry", "farm/v1/s1/d1/telemetry/", "farm/v1/s1/d1/events",
    "farm/v1/s1/d1/telemetry/extra", "farm/v1/S 1/d1/telemetry",
])
def test_device_near_misses_parse_as_bad_topic(topic: str) -> None:
    with pytest.raises(TopicError) as caught:
        parse_device_topic(topic, "farm")
    assert caught.value.reason == "bad_topic"


@pytest.mark.parametrize("topic", [
    "application/a/device/0011223344556677/event/up/",
    "application/a/device/0011223344556677/event/join",
    "application/a/device/0011223344556677/event/Up",
])
def test_chirpstack_near_misses_parse_as_bad_topic(topic: str) -> None:
    with pytest.raises(TopicError) as caught:
        parse_chirpstack_topic(topic)
    assert caught.value.reason == "bad_topic"
