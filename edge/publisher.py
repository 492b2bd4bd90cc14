"""One device's MQTT connection: contract topics, its own ``seq``, birth and last will.

Every message goes through :meth:`DevicePublisher._send`, the one place a
store-and-forward outbox will slot in later. paho's network thread reconnects
with exponential back-off and re-sends unacknowledged QoS 1 messages; this class
counts PUBACKs so a caller can wait until "everything sent is at the broker".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from farm_contract import payloads
from farm_contract.payloads import DeviceState, EventType
from farm_contract.settings import parse_mqtt_url
from farm_contract.topics import QOS, MessageKind, device_topic

log = logging.getLogger(__name__)

AGENT = "farm-edge/0.1"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Sent:
    """A message handed to the client: its kind, seq (None for raw) and exact bytes."""

    kind: MessageKind
    seq: int | None
    payload: bytes


class DevicePublisher:
    """Publish one device's telemetry, events and status over its own MQTT client.

    ``seq`` starts at ``first_seq`` and rises by one per telemetry or event
    message. ``max_pending`` bounds unacknowledged messages: publishing blocks
    (back-pressure) rather than buffering a whole year in memory.
    """

    def __init__(
        self,
        device_id: str,
        site_id: str,
        mqtt_url: str,
        *,
        prefix: str = "farm",
        username: str | None = None,
        password: str | None = None,
        first_seq: int = 0,
        metadata: dict[str, Any] | None = None,
        clock: Callable[[], datetime] = utc_now,
        max_pending: int = 2000,
        ca_file: Path | None = None,
        keepalive: int = 60,
        reconnect_max_s: int = 60,
    ) -> None:
        self.device_id = device_id
        self.site_id = site_id
        self.prefix = prefix
        self.metadata = dict(metadata or {})
        self.clock = clock
        self.max_pending = max_pending
        self._topics = {
            kind: device_topic(prefix, site_id, device_id, kind) for kind in MessageKind
        }
        self._endpoint = parse_mqtt_url(mqtt_url)
        self._keepalive = keepalive
        self._seq = first_seq
        self._lock = threading.Condition()
        self._published = 0
        self._acked = 0
        self.refused = 0
        """PUBACKs carrying a failure reason code (e.g. not authorised)."""
        self.sent_by_kind: Counter[MessageKind] = Counter()
        """Messages handed to the client, by kind (status included)."""
        self._connected = threading.Event()
        self._closing = False
        self._started = False

        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=device_id,
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(username or device_id, password or self._endpoint.password)
        if self._endpoint.tls:
            client.tls_set(ca_certs=str(ca_file) if ca_file else None)
        client.reconnect_delay_set(min_delay=1, max_delay=reconnect_max_s)
        client.max_inflight_messages_set(64)
        client.will_set(
            self._topics[MessageKind.STATUS],
            self._status(DeviceState.OFFLINE, reason="connection lost"),
            qos=QOS, retain=True,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, wait_s: float | None = None) -> None:
        """Connect in the background; with ``wait_s``, block until connected or raise."""
        self._client.connect_async(self._endpoint.host, self._endpoint.port, self._keepalive)
        self._client.loop_start()
        self._started = True
        if wait_s is not None and not self._connected.wait(wait_s):
            raise ConnectionError(
                f"{self.device_id}: no connection to {self._endpoint.host}:"
                f"{self._endpoint.port} within {wait_s:g}s"
            )

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def close(self, timeout: float = 10.0, *, offline: bool = True) -> bool:
        """Publish ``offline`` (retained), wait for PUBACKs, disconnect, stop the thread.

        Returns whether every message was acknowledged before disconnecting.
        """
        if not self._started:
            return True
        if offline and self.connected:
            self._send(MessageKind.STATUS, self._status(DeviceState.OFFLINE, reason="shutdown"),
                       retain=True)
        acked = self.wait_all_acked(timeout)
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._client.disconnect()
        self._client.loop_stop()
        self._started = False
        return acked

    # -- publishing -----------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self._seq

    def telemetry(self, ts: datetime, readings: dict[str, bool | int | float]) -> Sent:
        """Publish one telemetry record with the next ``seq``."""
        seq = self._take_seq()
        payload = payloads.telemetry(seq, ts, readings)
        self._send(MessageKind.TELEMETRY, payload)
        return Sent(MessageKind.TELEMETRY, seq, payload)

    def event(self, ts: datetime, type: EventType | str, **fields: Any) -> Sent:
        """Publish one event with the next ``seq``."""
        seq = self._take_seq()
        payload = payloads.event(seq, ts, type, **fields)
        self._send(MessageKind.EVENT, payload)
        return Sent(MessageKind.EVENT, seq, payload)

    def raw(self, kind: MessageKind, payload: bytes) -> Sent:
        """Publish bytes as they are (fault injection, re-sending a duplicate)."""
        self._send(kind, payload)
        return Sent(kind, None, payload)

    def take_seq(self) -> int:
        """Consume a ``seq`` for a message built elsewhere (e.g. a deliberately bad one)."""
        return self._take_seq()

    def _take_seq(self) -> int:
        with self._lock:
            seq = self._seq
            self._seq += 1
            return seq

    def _send(
        self, kind: MessageKind, payload: bytes, *, retain: bool = False, block: bool = True,
    ) -> None:
        """The single path every message takes (where an outbox will go).

        ``block=False`` skips back-pressure: paho's own thread must never wait for
        the acknowledgements it is the one to process.
        """
        with self._lock:
            while (block and self._published - self._acked >= self.max_pending
                   and not self._closing):
                self._lock.wait(0.5)
            self._published += 1
        try:
            info = self._client.publish(self._topics[kind], payload, qos=QOS, retain=retain)
        except Exception:
            with self._lock:
                self._published -= 1
            raise
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            with self._lock:
                self._published -= 1
            raise RuntimeError(f"{self.device_id}: publish failed: {mqtt.error_string(info.rc)}")
        with self._lock:
            self.sent_by_kind[kind] += 1

    @property
    def pending(self) -> int:
        """Messages handed to the client and not yet acknowledged by the broker."""
        with self._lock:
            return self._published - self._acked

    @property
    def acked(self) -> int:
        with self._lock:
            return self._acked

    def wait_all_acked(self, timeout: float | None = None) -> bool:
        """Block until the broker has acknowledged everything published so far."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._published > self._acked:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(remaining if remaining is not None else 1.0)
            return True

    # -- paho callbacks (network thread) -----------------------------------------------------

    def _status(self, state: DeviceState, **extra: Any) -> bytes:
        return payloads.status(
            state, self.clock(), device_id=self.device_id, site_id=self.site_id, agent=AGENT,
            **self.metadata, **extra,
        )

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            log.error("%s: broker refused the connection: %s", self.device_id, reason_code)
            return
        log.info("%s: connected", self.device_id)
        self._connected.set()
        self._send(MessageKind.STATUS, self._status(DeviceState.ONLINE), retain=True, block=False)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self._connected.clear()
        if not self._closing:
            log.warning("%s: disconnected (%s); reconnecting", self.device_id, reason_code)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        with self._lock:
            self._acked += 1
            if reason_code.is_failure:
                self.refused += 1
                log.warning("%s: broker refused message %d: %s", self.device_id, mid, reason_code)
            self._lock.notify_all()
