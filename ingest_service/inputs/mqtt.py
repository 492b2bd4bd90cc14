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
import random
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

from farm_contract.topics import QOS, ingest_filters
from ingest_service.inputs import mqtt_wire as wire
from ingest_service.model import Inbound
from ingest_service.settings import Settings

log = logging.getLogger(__name__)

KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0
"""The whole handshake (TCP, TLS, CONNECT/CONNACK) must be done within this."""
READ_CHUNK = 1 << 20
PAUSED_POLL_S = 0.05
SUBSCRIBE_PACKET_ID = 1
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 30.0
STABLE_CONNECTION_S = 60.0
"""A connection that lasted this long resets the reconnect back-off."""
SESSION_TAKEN_OVER = "client id taken over by another connection"
CLOSED_WITHOUT_REASON = (
    "connection closed by the broker without a DISCONNECT (Mosquitto 2.0.11 ends a session "
    f"that way when {SESSION_TAKEN_OVER}: is a second worker using this account?)"
)


def subscription_filters(settings: Settings) -> list[str]:
    """Everything under the prefix and every ChirpStack device event (contract topics and
    near-misses alike: the pipeline rejects the latter as ``bad_topic``), in the
    shared-subscription form when sharing."""
    filters = ingest_filters(settings.topic_prefix, settings.subscribe_chirpstack)
    if settings.mqtt_share_group:
        filters = [f"$share/{settings.mqtt_share_group}/{item}" for item in filters]
    return filters


class ConnectFailed(Exception):
    """The broker could not be reached, or refused us; tried again after a pause."""


class BrokerClosed(ConnectionError):
    """The broker closed the connection without a DISCONNECT packet."""


class BrokerDisconnected(ConnectionError):
    """The broker sent DISCONNECT with ``reason`` (0x8E: another connection took our id)."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _left(deadline: float) -> float:
    """Seconds until ``deadline``; a :class:`TimeoutError` once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the MQTT handshake took too long")
    return left


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


def reconnect_delay(drops: int) -> float:
    """Seconds to wait before reconnecting after the ``drops``-th drop in a row: exponential,
    capped, and jittered (half to all of it), so clients that fight over one client id
    or reconnect after a broker restart do not do so in lockstep."""
    ceiling = min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2 ** min(drops, 16))
    return random.uniform(ceiling / 2, ceiling)


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
        held_bytes: Callable[[], int] | None = None,
    ) -> None:
        self._settings = settings
        self._deliver = deliver
        self._held = held or (lambda: 0)
        self._held_bytes = held_bytes or (lambda: 0)
        self._on_connection_change = on_connection_change
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        self._topics = wire.TopicCache()
        self._events: dict[str, int] = {}

    def events(self) -> dict[str, int]:
        """How often each connection event happened (``farm_mqtt_connection_events``)."""
        return dict(self._events)

    def _count(self, event: str) -> None:
        self._events[event] = self._events.get(event, 0) + 1

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
        drops = 0
        while not self._stop.is_set():
            try:
                for attempt in retrying:
                    with attempt:
                        sock, connack, early = self._connect()
            except ConnectFailed:
                return  # stopped while waiting to reconnect
            connection = Connection(sock, self._wake)
            self._changed()
            log.info("connected to MQTT broker (session present: %s)", connack.session_present)
            since = time.monotonic()
            try:
                self._serve(connection, connack, early)
            except wire.ProtocolError as exc:
                self._count("packet_too_large" if isinstance(exc, wire.PacketTooLarge)
                            else "protocol_error")
                log.error("MQTT broker broke the protocol, disconnecting (reason 0x%02x): %s",
                          exc.reason, exc)
                with contextlib.suppress(OSError):
                    sock.sendall(wire.disconnect_packet(exc.reason))
            except BrokerDisconnected as exc:
                if exc.reason == wire.REASON_SESSION_TAKEN_OVER:
                    self._count("session_taken_over")
                    log.error("MQTT %s (client id %r): %s", SESSION_TAKEN_OVER,
                              self._settings.mqtt_client_id, exc)
                else:
                    self._count("disconnected")
                    log.warning("disconnected from MQTT broker: %s", exc)
            except BrokerClosed:
                self._count("closed_by_broker")
                log.warning("%s (client id %r)", CLOSED_WITHOUT_REASON,
                            self._settings.mqtt_client_id)
            except OSError as exc:
                if not self._stop.is_set():
                    self._count("connection_lost")
                    log.warning("disconnected from MQTT broker: %s", exc)
            except Exception:  # a bug must not end the input silently: reconnect, redelivered
                log.exception("MQTT input failed; reconnecting")
            finally:
                self._connected.clear()
                connection.close()
                self._changed()
            if self._stop.is_set():
                return
            drops = 0 if time.monotonic() - since >= STABLE_CONNECTION_S else drops + 1
            delay = reconnect_delay(drops)
            log.info("reconnecting to the MQTT broker in %.1f s", delay)
            self._pause(delay)

    def _open(self, deadline: float) -> socket.socket:
        endpoint = self._settings.mqtt
        sock = socket.create_connection((endpoint.host, endpoint.port), _left(deadline))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if endpoint.tls:
            ca = str(self._settings.mqtt_ca_file) if self._settings.mqtt_ca_file else None
            context = ssl.create_default_context(cafile=ca)
            sock.settimeout(_left(deadline))  # CPython bounds the whole TLS handshake by it
            try:
                sock = context.wrap_socket(sock, server_hostname=endpoint.host)
            except BaseException:
                sock.close()
                raise
        return sock

    def _connect(self) -> tuple[socket.socket, wire.Connack, bytes]:
        """Open, CONNECT, and read the CONNACK within :data:`CONNECT_TIMEOUT_S` in all;
        raise :class:`ConnectFailed` if anything fails."""
        endpoint = self._settings.mqtt
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        try:
            sock = self._open(deadline)
        except (OSError, ssl.SSLError) as exc:
            log.warning("cannot reach MQTT broker %s:%s: %s", endpoint.host, endpoint.port, exc)
            raise ConnectFailed(str(exc)) from None
        try:
            sock.settimeout(_left(deadline))
            sock.sendall(
                wire.connect_packet(
                    self._settings.mqtt_client_id,
                    keepalive=KEEPALIVE_S,
                    clean_start=False,
                    session_expiry=self._settings.mqtt_session_expiry_s,
                    receive_maximum=self._settings.receive_maximum,
                    username=endpoint.username or None,
                    password=endpoint.password if endpoint.username else None,
                    maximum_packet_size=self._settings.mqtt_max_packet_size,
                )
            )
            kind, body, early = self._read_one(sock, deadline, self._settings.mqtt_max_packet_size)
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
            self._count("refused")
            log.error("MQTT broker refused the connection: %s", reason)
            raise ConnectFailed(reason)
        return sock, connack, early

    @staticmethod
    def _read_one(sock: socket.socket, deadline: float, max_size: int) -> tuple[int, bytes, bytes]:
        """Read the first packet (the handshake's answer) by ``deadline``: type, body, and
        the bytes after it.

        With a persistent session the broker may send queued PUBLISH packets right
        after the CONNACK; they are in the bytes after it. The CONNACK itself may be
        no larger than ``max_size``; nothing bigger is buffered.
        """
        data = bytearray()
        while True:
            found = wire.read_varint(data, 1) if len(data) >= 2 else None
            if found is not None:
                length, start = found
                if start + length > max_size:
                    raise wire.PacketTooLarge(f"a first packet of {start + length} bytes")
                if start + length <= len(data):
                    end = start + length
                    return data[0] >> 4, bytes(data[start:end]), bytes(data[end:])
            sock.settimeout(_left(deadline))
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the broker")
            data += chunk

    def _serve(self, connection: Connection, connack: wire.Connack, early: bytes) -> None:
        """Subscribe, then read, deliver, ack and ping until the connection ends or we stop."""
        sock = connection.sock
        keepalive = connack.properties.get(wire.PROP_SERVER_KEEP_ALIVE, KEEPALIVE_S)
        assert isinstance(keepalive, int)
        # Server Keep Alive 0: the broker wants no keep-alive at all, so no pings (§3.1.2.10).
        sock.settimeout(keepalive or KEEPALIVE_S)
        sock.sendall(
            wire.subscribe_packet(
                SUBSCRIBE_PACKET_ID, subscription_filters(self._settings), QOS,
                # Retained messages (devices' status) only for a new subscription: a
                # reconnect to the persistent session does not get them all again.
                wire.RETAIN_HANDLING_IF_NEW,
            )
        )
        max_size = self._settings.mqtt_max_packet_size
        last_sent = last_heard = time.monotonic()
        ping_out = False
        pending, fresh = early, bool(early)  # queued messages may come right behind the CONNACK
        # A packet cut short waits in ``pending``; what comes after it is kept in ``parts``
        # until the packet is whole (``needed`` bytes), and joined once: linear, not the
        # quadratic ``pending + chunk`` per read.
        parts: list[bytes] = []
        held = needed = 0
        tls = isinstance(sock, ssl.SSLSocket)
        while True:
            if self._stop.is_set():
                self._flush(connection)
                sock.sendall(wire.DISCONNECT_PACKET)
                return
            paused = (
                self._held() >= self._settings.receive_maximum
                or self._held_bytes() >= self._settings.max_held_bytes
            )
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
                    raise BrokerClosed("connection closed by the broker")
                if tls and sock.pending():  # type: ignore[attr-defined]
                    more = [chunk]
                    while sock.pending():  # type: ignore[attr-defined]
                        more.append(sock.recv(READ_CHUNK))
                    chunk = b"".join(more)
                last_heard = time.monotonic()
                if not pending:
                    pending, fresh = chunk, True
                else:
                    parts.append(chunk)
                    held += len(chunk)
                    if len(pending) + held >= needed:
                        pending, fresh = b"".join([pending, *parts]), True
                        parts.clear()
                        held = 0
            if fresh and not paused:
                fresh = False
                publishes: list[wire.Publish] = []
                others: list[wire.Other] = []
                used = wire.split_packets(pending, publishes, others, self._topics, max_size)
                pending = pending[used:]
                # The rest is one packet cut short: wait for all of it (or for its header).
                needed = (wire.packet_size(pending) or len(pending) + 1) if pending else 0
                if publishes:
                    self._deliver(self._inbounds(connection, publishes))
                for kind, _flags, body in others:
                    if kind == wire.PINGRESP:
                        ping_out = False
                    elif kind == wire.SUBACK:
                        self._subscribed(body)
                    elif kind == wire.DISCONNECT:
                        raise BrokerDisconnected(
                            wire.reason_code(body, 0),
                            f"broker disconnected us: {wire.reason_text(body, 0)}",
                        )
                    else:
                        log.warning("ignored an unexpected MQTT packet of type %d", kind)
            if not keepalive:
                continue
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
