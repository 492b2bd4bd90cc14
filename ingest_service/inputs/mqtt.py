"""Stage 1: the MQTT input. QoS 1, a persistent session, and acknowledgements on our terms.

A message is acknowledged only once the pipeline stored it. What keeps that safe:

- Memory is bounded by the receive maximum twice over. We ask the broker for it
  (MQTT v5 *Receive Maximum*: at most that many unacknowledged messages out to
  us), and we stop reading the socket while the pipeline holds that many
  (``held``), because a broker may not keep its word: Mosquitto 2.0.11 sends its
  whole queue once acks flow (measured: 210,000 messages held from a 300,000
  backlog). While paused, TCP holds the broker back; acks and pings still go out.
- A packet id is only meaningful on the connection it arrived on. After a
  reconnect the broker redelivers what we did not ack, and an old id may name a
  new message. So every message holds its :class:`Connection`, an ack goes into
  that connection's list, and only that connection's socket ever sends it: the
  acks of a lost connection are dropped with it (the redelivered copies get
  acked instead).
- Messages of a lost connection are redelivered on the next one, so the pipeline
  is told to drop the ones it still holds (``on_connection_change``); otherwise
  every reconnect during an InfluxDB outage would add another receive-maximum of
  messages to memory.

Why not paho-mqtt here (the edge agent and the simulators use it): profiled at
the broker's speed, paho's loop cost ~35 µs of CPU per message (an object, a
``Properties`` parse, locks and a callback each), more than all of ingest's own
work. This input reads a whole chunk of the socket at a time, splits the PUBLISH
packets out of it in one loop (:mod:`.mqtt_wire`), hands them to the pipeline as
one batch, and sends a batch's PUBACKs in one write (docs/performance.md).
One thread owns the socket and does all its reads and writes (TLS included);
the pipeline's acks reach it through a list and a wake-up pipe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from functools import partial

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_when_event_set,
    wait_exponential_jitter,
)

from farm_contract.settings import Settings
from farm_contract.topics import CHIRPSTACK_UPLINK_FILTER, QOS, device_filters
from ingest_service.inputs import mqtt_wire as wire
from ingest_service.model import Inbound

log = logging.getLogger(__name__)

KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0
READ_CHUNK = 1 << 20
PAUSED_POLL_S = 0.05
SUBSCRIBE_PACKET_ID = 1


def subscription_filters(settings: Settings) -> list[str]:
    """Device topics, ChirpStack uplinks, and the shared-subscription form when sharing."""
    filters = device_filters(settings.topic_prefix)
    if settings.subscribe_chirpstack:
        filters.append(CHIRPSTACK_UPLINK_FILTER)
    if settings.mqtt_share_group:
        filters = [f"$share/{settings.mqtt_share_group}/{item}" for item in filters]
    return filters


class ConnectFailed(Exception):
    """The broker could not be reached, or refused us; tried again after a pause."""


class Connection:
    """One network connection to the broker, and the acks waiting to be sent on it."""

    def __init__(self, sock: socket.socket, wake: Callable[[], None]) -> None:
        self.sock = sock
        self._wake = wake
        self._lock = threading.Lock()
        self._acks: list[int] = []
        self.closed = False

    def ack(self, packet_id: int) -> None:
        """Queue a PUBACK; dropped if this connection is gone (the broker redelivers)."""
        with self._lock:
            if self.closed:
                return
            self._acks.append(packet_id)
            first = len(self._acks) == 1
        if first:
            self._wake()

    def stale(self) -> bool:
        return self.closed

    def take_acks(self) -> list[int]:
        with self._lock:
            acks, self._acks = self._acks, []
        return acks

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._acks = []
        with contextlib.suppress(OSError):
            self.sock.close()


def _no_ack() -> None:
    return None


def _never_stale() -> bool:
    return False


class MqttInput:
    """Subscribes to the contract's topics; delivers messages in batches of :class:`Inbound`."""

    def __init__(
        self,
        settings: Settings,
        deliver: Callable[[list[Inbound]], None],
        on_connection_change: Callable[[], None] | None = None,
        held: Callable[[], int] | None = None,
    ) -> None:
        self._settings = settings
        self._deliver = deliver
        self._held = held or (lambda: 0)
        self._on_connection_change = on_connection_change
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        self._connection: Connection | None = None
        self._topics: dict[bytes, str] = {}

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background, and keep reconnecting until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        if self._wake_r < 0:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="mqtt-input", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        """True once connected and subscribed (within ``timeout`` seconds)."""
        return self._connected.wait(timeout)

    def stop(self) -> None:
        """Send the acks in hand, disconnect cleanly; unacknowledged messages stay queued."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(CONNECT_TIMEOUT_S + 5)
            if self._thread.is_alive():
                log.warning("the MQTT input thread did not stop in time")
                return  # it still holds the wake-up pipe
            self._thread = None
        self._connected.clear()
        if self._wake_r >= 0:  # every connection is closed now: nothing wakes us any more
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def _wake(self) -> None:
        if self._wake_w < 0:
            return
        with contextlib.suppress(OSError):  # a full pipe: the thread is being woken anyway
            os.write(self._wake_w, b"w")

    def _pause(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _changed(self) -> None:
        if self._on_connection_change is not None:
            self._on_connection_change()

    def _run(self) -> None:
        retrying = Retrying(
            retry=retry_if_exception_type(ConnectFailed),
            wait=wait_exponential_jitter(initial=1, max=30),
            stop=stop_when_event_set(self._stop),
            sleep=self._pause,
            reraise=True,
        )
        while not self._stop.is_set():
            try:
                for attempt in retrying:
                    with attempt:
                        sock, connack, early = self._connect()
            except ConnectFailed:
                return  # stopped while waiting to reconnect
            connection = Connection(sock, self._wake)
            self._connection = connection
            self._changed()
            log.info("connected to MQTT broker (session present: %s)", connack.session_present)
            try:
                self._serve(connection, connack, early)
            except (OSError, wire.ProtocolError) as exc:
                if not self._stop.is_set():
                    log.warning("disconnected from MQTT broker: %s", exc)
            except Exception:  # a bug must not end the input silently: reconnect, redelivered
                log.exception("MQTT input failed; reconnecting")
                self._pause(1.0)
            finally:
                self._connected.clear()
                connection.close()
                self._connection = None
                self._changed()

    def _open(self) -> socket.socket:
        endpoint = self._settings.mqtt
        sock = socket.create_connection((endpoint.host, endpoint.port), CONNECT_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if endpoint.tls:
            ca = str(self._settings.mqtt_ca_file) if self._settings.mqtt_ca_file else None
            context = ssl.create_default_context(cafile=ca)
            sock = context.wrap_socket(sock, server_hostname=endpoint.host)
        return sock

    def _connect(self) -> tuple[socket.socket, wire.Connack, bytes]:
        """Open, CONNECT, and read the CONNACK; raise :class:`ConnectFailed` if anything fails."""
        endpoint = self._settings.mqtt
        try:
            sock = self._open()
        except (OSError, ssl.SSLError) as exc:
            log.warning("cannot reach MQTT broker %s:%s: %s", endpoint.host, endpoint.port, exc)
            raise ConnectFailed(str(exc)) from None
        try:
            sock.sendall(
                wire.connect_packet(
                    self._settings.mqtt_client_id,
                    keepalive=KEEPALIVE_S,
                    clean_start=False,
                    session_expiry=self._settings.mqtt_session_expiry_s,
                    receive_maximum=self._settings.receive_maximum,
                    username=endpoint.username or None,
                    password=endpoint.password if endpoint.username else None,
                )
            )
            kind, body, early = self._read_one(sock)
            if kind != wire.CONNACK:
                raise wire.ProtocolError(f"expected CONNACK, got packet type {kind}")
            connack = wire.parse_connack(body)
        except (OSError, wire.ProtocolError, ValueError, IndexError, struct.error) as exc:
            sock.close()  # ValueError, struct.error: a client id or password too long for MQTT
            log.warning("MQTT connection failed: %s", exc)
            raise ConnectFailed(str(exc)) from None
        if connack.reason >= 0x80:
            sock.close()
            reason = wire.reason_text(body, 1)
            log.error("MQTT broker refused the connection: %s", reason)
            raise ConnectFailed(reason)
        return sock, connack, early

    @staticmethod
    def _read_one(sock: socket.socket) -> tuple[int, bytes, bytes]:
        """Read the first packet (the handshake's answer): type, body, and the bytes after it.

        With a persistent session the broker may send queued PUBLISH packets right
        after the CONNACK; they are in the bytes after it.
        """
        data = b""
        while True:
            if len(data) >= 2:
                found = wire.read_varint(data, 1)
                if found is not None and found[1] + found[0] <= len(data):
                    length, start = found
                    return data[0] >> 4, data[start : start + length], data[start + length :]
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the broker")
            data += chunk

    def _serve(self, connection: Connection, connack: wire.Connack, early: bytes) -> None:
        """Subscribe, then read, deliver, ack and ping until the connection ends or we stop."""
        sock = connection.sock
        keepalive = connack.properties.get(wire.PROP_SERVER_KEEP_ALIVE, KEEPALIVE_S)
        assert isinstance(keepalive, int)
        sock.settimeout(max(keepalive, 1))
        sock.sendall(
            wire.subscribe_packet(SUBSCRIBE_PACKET_ID, subscription_filters(self._settings), QOS)
        )
        last_sent = last_heard = time.monotonic()
        ping_out = False
        pending, fresh = early, bool(early)  # queued messages may come right behind the CONNACK
        tls = isinstance(sock, ssl.SSLSocket)
        while True:
            if self._stop.is_set():
                self._flush(connection)
                sock.sendall(wire.DISCONNECT_PACKET)
                return
            paused = self._held() >= self._settings.receive_maximum
            watched: list[socket.socket | int] = [self._wake_r] if paused else [sock, self._wake_r]
            timeout = 0 if fresh and not paused else PAUSED_POLL_S if paused else 1.0
            readable, _, _ = select.select(watched, [], [], timeout)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            if self._flush(connection):
                last_sent = time.monotonic()
            if paused:
                last_heard = time.monotonic()  # not reading is our choice, not the broker's silence
            if sock in readable:
                chunk = sock.recv(READ_CHUNK)
                if not chunk:
                    raise ConnectionError("connection closed by the broker")
                while tls and sock.pending():  # type: ignore[attr-defined]
                    chunk += sock.recv(READ_CHUNK)
                last_heard = time.monotonic()
                pending, fresh = pending + chunk if pending else chunk, True
            if fresh and not paused:
                fresh = False
                publishes: list[wire.Publish] = []
                others: list[wire.Other] = []
                used = wire.split_packets(pending, publishes, others, self._topics)
                pending = pending[used:]
                if publishes:
                    self._deliver(self._inbounds(connection, publishes))
                for kind, _flags, body in others:
                    if kind == wire.PINGRESP:
                        ping_out = False
                    elif kind == wire.SUBACK:
                        self._subscribed(body)
                    elif kind == wire.DISCONNECT:
                        raise ConnectionError(
                            f"broker disconnected us: {wire.reason_text(body, 0)}"
                        )
                    else:
                        log.warning("ignored an unexpected MQTT packet of type %d", kind)
            now = time.monotonic()
            if ping_out and now - last_heard > keepalive:
                raise TimeoutError(f"no answer from the broker for {keepalive} s")
            # While paused, PINGRESPs wait unread in the socket: ping on regardless, or the
            # broker would drop us after 1.5 keepalives without a packet.
            if (paused or not ping_out) and now - last_sent >= keepalive / 2:
                sock.sendall(wire.PINGREQ_PACKET)
                last_sent = now
                ping_out = True

    def _subscribed(self, body: bytes) -> None:
        _packet_id, reasons = wire.parse_suback(body)
        filters = subscription_filters(self._settings)
        refused = [f for f, code in zip(filters, reasons, strict=False) if code >= 0x80]
        for item in refused:
            log.error("MQTT broker refused the subscription to %s", item)
        if len(refused) < len(filters):
            self._connected.set()

    def _flush(self, connection: Connection) -> bool:
        """Send the acks the pipeline queued on this connection; True if any."""
        acks = connection.take_acks()
        if acks:
            connection.sock.sendall(wire.pubacks(acks))
        return bool(acks)

    @staticmethod
    def _inbounds(connection: Connection, publishes: list[wire.Publish]) -> list[Inbound]:
        received = time.time_ns()
        ack, stale = connection.ack, connection.stale
        return [
            Inbound(topic, payload, received, partial(ack, packet_id), stale)
            if qos
            else Inbound(topic, payload, received, _no_ack, _never_stale)
            for topic, payload, qos, packet_id in publishes
        ]
