"""One device's MQTT connection: contract topics, its own ``seq``, birth and last will.

Two ways to send, one class:

- **With an outbox** (the field agent): :meth:`DevicePublisher.telemetry` and
  :meth:`DevicePublisher.event` only store the record in the durable
  :class:`~edge.outbox.Outbox`; a sender thread moves records to the broker and
  deletes them when their PUBACK arrives. Records taken since the link came up
  go out at once ("live"); older ones (the backlog of an outage, or of a
  restart) are replayed oldest first in contract ``batch`` messages at a
  bounded rate. Each connection starts from the outbox again, so nothing
  depends on the MQTT client's in-memory queue surviving.
- **Without** (the simulators' fleets, thousands of messages in fast time):
  messages go straight to the client, which queues and re-sends unacknowledged
  QoS 1 messages itself; ``max_pending`` gives back-pressure.

Either way the connection is kept by our own loop with exponential back-off
and full jitter (paho's own reconnect delay has no jitter), so a county's
devices coming back after a broker restart spread their reconnects out.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge.outbox import Outbox, Record
from farm_contract import payloads
from farm_contract.mqtt_url import parse_mqtt_url
from farm_contract.payloads import MAX_BATCH, MAX_PAYLOAD_BYTES, DeviceState, EventType
from farm_contract.topics import QOS, MessageKind, device_topic

log = logging.getLogger(__name__)

AGENT = "farm-edge/0.2"
_V1 = b'{"v":1,'


def utc_now() -> datetime:
    return datetime.now(UTC)


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential back-off with full jitter: uniform in ``[0, min(max_s, min_s·2^attempt)]``.

    Full jitter (rather than ±10 %) is what spreads thousands of devices that
    all lost the broker at the same instant over the whole window.
    """
    ceiling = min(max_s, min_s * 2.0 ** max(0, attempt))
    return rng.uniform(0.0, ceiling)


@dataclass(frozen=True, slots=True)
class Sent:
    """A message accepted for sending: kind, seq and exact bytes.

    ``seq`` is None for raw messages, and for a record a full outbox with the
    ``reject_new`` policy refused (then ``payload`` is empty; the loss is counted).
    """

    kind: MessageKind
    seq: int | None
    payload: bytes


def record_body(payload: bytes) -> bytes:
    """A single message's payload without ``v``: the element of a ``batch``."""
    if not payload.startswith(_V1):
        raise ValueError("payload does not start with {\"v\":1,")
    return b"{" + payload[len(_V1):]


def single_payload(body: bytes) -> bytes:
    return _V1 + body[1:]


def batch_payloads(bodies: list[bytes], max_records: int = MAX_BATCH,
                   max_bytes: int = MAX_PAYLOAD_BYTES) -> list[tuple[bytes, int]]:
    """Pack record bodies, in order, into as few messages as the contract allows.

    Returns ``(payload, records)`` pairs: a lone record goes as a plain message,
    more as ``{"v":1,"batch":[…]}`` of at most ``max_records`` and ``max_bytes``.
    """
    out: list[tuple[bytes, int]] = []
    overhead = len(b'{"v":1,"batch":[]}')
    start = 0
    while start < len(bodies):
        size, end = overhead + len(bodies[start]), start + 1
        while (end < len(bodies) and end - start < max_records
               and size + 1 + len(bodies[end]) <= max_bytes):
            size += 1 + len(bodies[end])
            end += 1
        chunk = bodies[start:end]
        if len(chunk) == 1:
            out.append((single_payload(chunk[0]), 1))
        else:
            out.append((b'{"v":1,"batch":[' + b",".join(chunk) + b"]}", len(chunk)))
        start = end
    return out


class DevicePublisher:
    """Publish one device's telemetry, events and status over its own MQTT client.

    ``seq`` rises by one per telemetry or event message; with an outbox it is
    the outbox's (durable) counter, otherwise it starts at ``first_seq``.
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
        cert_file: Path | None = None,
        key_file: Path | None = None,
        keepalive: int = 60,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        outbox: Outbox | None = None,
        replay_records_per_s: float = 500.0,
        batch_records: int = 500,
        max_inflight: int = 16,
        rng: random.Random | None = None,
    ) -> None:
        self.device_id = device_id
        self.site_id = site_id
        self.prefix = prefix
        self.metadata = dict(metadata or {})
        self.clock = clock
        self.max_pending = max_pending
        self.outbox = outbox
        self.replay_records_per_s = replay_records_per_s
        self.batch_records = max(1, min(batch_records, MAX_BATCH))
        self.max_inflight = max_inflight
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self._rng = rng or random.Random()
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
        self.connects = 0
        """Successful connections so far (1 + reconnects)."""
        self.replayed = 0
        """Outbox records sent as part of a backlog replay."""
        self._connected = threading.Event()
        self._closing = False
        self._started = False
        self._stop = threading.Event()
        self._generation = 0
        self._acks: deque[tuple[int, int, bool]] = deque()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=device_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.username_pw_set(username or device_id, password or self._endpoint.password)
        if self._endpoint.tls:
            client.tls_set(
                ca_certs=str(ca_file) if ca_file else None,
                certfile=str(cert_file) if cert_file else None,
                keyfile=str(key_file) if key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.max_inflight_messages_set(64 if outbox is None else max_inflight + 4)
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
        self._stop.clear()
        self._started = True
        self._threads = [threading.Thread(target=self._link, name=f"mqtt-{self.device_id}",
                                          daemon=True)]
        if self.outbox is not None:
            self._threads.append(threading.Thread(
                target=self._sender, name=f"outbox-{self.device_id}", daemon=True))
        for thread in self._threads:
            thread.start()
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
        """Drain what can be drained, publish ``offline`` (retained), disconnect, stop.

        Returns whether everything was acknowledged before disconnecting. With an
        outbox, whatever is left stays in it and is sent after the next start.
        """
        if not self._started:
            return True
        deadline = time.monotonic() + timeout
        acked = self.wait_all_acked(timeout) if self.connected else self.pending == 0
        if offline and self.connected:
            self._send(MessageKind.STATUS, self._status(DeviceState.OFFLINE, reason="shutdown"),
                       retain=True, block=False)
            acked = self.wait_all_acked(max(0.5, deadline - time.monotonic())) and acked
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._stop.set()
        self._wake.set()
        self._client.disconnect()
        for thread in self._threads:
            thread.join(timeout=10)
        self._started = False
        return acked

    def _link(self) -> None:
        """Keep the connection: connect, run the network loop until it drops, back off, again."""
        attempt = 0
        first = True
        while not self._stop.is_set():
            try:
                if first:
                    self._client.connect(self._endpoint.host, self._endpoint.port,
                                         self._keepalive, clean_start=True)
                    first = False
                else:
                    self._client.reconnect()
            except (OSError, ValueError) as exc:
                delay = backoff_delay(attempt, self.reconnect_min_s, self.reconnect_max_s,
                                      self._rng)
                attempt += 1
                log.info("%s: cannot reach %s:%d (%s); retrying in %.1fs", self.device_id,
                         self._endpoint.host, self._endpoint.port, exc, delay)
                self._stop.wait(delay)
                continue
            if self._stop.is_set():  # close() came while we were connecting
                self._client.disconnect()
                break
            connects = self.connects
            self._client.loop_forever()
            self._connected.clear()
            if self._stop.is_set():
                break
            attempt = 0 if self.connects > connects else attempt + 1
            delay = backoff_delay(attempt, self.reconnect_min_s, self.reconnect_max_s, self._rng)
            attempt += 1
            log.warning("%s: link lost; reconnecting in %.1fs", self.device_id, delay)
            self._stop.wait(delay)

    # -- publishing -----------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self.outbox.next_seq if self.outbox is not None else self._seq

    def telemetry(self, ts: datetime, readings: dict[str, bool | int | float]) -> Sent:
        """Publish (or, with an outbox, store for sending) one telemetry record."""
        return self._record(MessageKind.TELEMETRY,
                            lambda seq: payloads.telemetry(seq, ts, readings))

    def event(self, ts: datetime, type: EventType | str, **fields: Any) -> Sent:
        """Publish (or, with an outbox, store for sending) one event."""
        return self._record(MessageKind.EVENT,
                            lambda seq: payloads.event(seq, ts, type, **fields))

    def raw(self, kind: MessageKind, payload: bytes) -> Sent:
        """Publish bytes as they are, never through the outbox (fault injection)."""
        self._send(kind, payload)
        return Sent(kind, None, payload)

    def take_seq(self) -> int:
        """Consume a ``seq`` for a message built elsewhere (e.g. a deliberately bad one)."""
        if self.outbox is not None:
            return self.outbox.take_seq()
        return self._take_seq()

    def _record(self, kind: MessageKind, build: Callable[[int], bytes]) -> Sent:
        if self.outbox is not None:
            stored = self.outbox.append(kind.value, lambda seq: record_body(build(seq)))
            if stored is None:
                log.warning("%s: outbox full (%d records); new %s refused, %d lost so far",
                            self.device_id, len(self.outbox), kind.value, self.outbox.dropped)
                return Sent(kind, None, b"")
            self._wake.set()
            return Sent(kind, stored.seq, single_payload(stored.body))
        seq = self._take_seq()
        payload = build(seq)
        self._send(kind, payload)
        return Sent(kind, seq, payload)

    def _take_seq(self) -> int:
        with self._lock:
            seq = self._seq
            self._seq += 1
            return seq

    def _send(
        self, kind: MessageKind, payload: bytes, *, retain: bool = False, block: bool = True,
    ) -> int:
        """Hand one message to the client; returns its MQTT message id.

        ``block=False`` skips back-pressure: paho's own thread must never wait for
        the acknowledgements it is the one to process.
        """
        with self._lock:
            while (block and self.outbox is None
                   and self._published - self._acked >= self.max_pending
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
        return int(info.mid)

    @property
    def pending(self) -> int:
        """Records not yet acknowledged: in the outbox, or (without one) handed to the client."""
        if self.outbox is not None:
            return len(self.outbox)
        with self._lock:
            return self._published - self._acked

    @property
    def acked(self) -> int:
        with self._lock:
            return self._acked

    def wait_all_acked(self, timeout: float | None = None) -> bool:
        """Block until the broker has acknowledged everything published (or stored) so far."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._published > self._acked or (
                self.outbox is not None and len(self.outbox) > 0
            ):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.2) if remaining is not None else 0.2)
            return True

    # -- the outbox sender (its own thread) ---------------------------------------------------

    def _sender(self) -> None:
        """Move outbox records to the broker: live ones at once, the backlog rate-limited."""
        assert self.outbox is not None
        outbox = self.outbox
        generation = -1
        inflight: dict[int, list[int]] = {}
        backlog_mark = backlog_cursor = live_cursor = 0
        tokens, refilled = float(self.batch_records), time.monotonic()
        rate = self.replay_records_per_s
        while not self._stop.is_set():
            self._wake.wait(0.05)
            self._wake.clear()
            acked_ids: list[int] = []
            while self._acks:
                gen, mid, ok = self._acks.popleft()
                ids = inflight.pop(mid, None) if gen == generation else None
                if ids is None:
                    continue
                if not ok:
                    log.error("%s: broker refused %d record(s); dropping them", self.device_id,
                              len(ids))
                acked_ids += ids
            if acked_ids:
                outbox.ack(acked_ids)
                with self._lock:
                    self._lock.notify_all()
            if not self.connected:
                continue
            if generation != self._generation:
                generation = self._generation
                inflight.clear()
                backlog_mark = live_cursor = outbox.last_id()
                backlog_cursor = 0
                if len(outbox):
                    log.info("%s: replaying a backlog of %d record(s)", self.device_id,
                             len(outbox))
            now = time.monotonic()
            if rate > 0:
                tokens = min(float(self.batch_records), tokens + (now - refilled) * rate)
            refilled = now
            try:
                live = outbox.oldest(self.batch_records, after_id=live_cursor)
                if live and len(inflight) < self.max_inflight:
                    self._publish_records(live, inflight, generation)
                    live_cursor = live[-1].id
                while (backlog_cursor < backlog_mark and len(inflight) < self.max_inflight
                       and (rate <= 0 or tokens >= 1)):
                    want = self.batch_records if rate <= 0 else max(1, int(tokens))
                    records = outbox.oldest(want, after_id=backlog_cursor, upto_id=backlog_mark)
                    if not records:
                        backlog_cursor = backlog_mark
                        break
                    self._publish_records(records, inflight, generation)
                    backlog_cursor = records[-1].id
                    tokens -= len(records)
                    self.replayed += len(records)
                    if rate > 0 and tokens < 1:
                        break
            except RuntimeError:
                log.exception("%s: sending from the outbox failed", self.device_id)

    def _publish_records(self, records: list[Record], inflight: dict[int, list[int]],
                         generation: int) -> None:
        for kind in (MessageKind.TELEMETRY, MessageKind.EVENT):
            group = [r for r in records if r.kind == kind.value]
            start = 0
            for payload, count in batch_payloads([r.body for r in group], self.batch_records):
                ids = [r.id for r in group[start:start + count]]
                start += count
                if generation != self._generation:
                    return  # the link went down and up meanwhile: the new connection resends
                mid = self._send(kind, payload, block=False)
                inflight[mid] = ids

    # -- paho callbacks (network thread) -----------------------------------------------------

    def _status(self, state: DeviceState, **extra: Any) -> bytes:
        if self.outbox is not None:
            stats = self.outbox.stats()
            extra = {"outbox_pending": stats.pending, "outbox_dropped": stats.dropped, **extra}
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
        if self.outbox is not None:
            # The outbox is the one queue: what the client held from the last
            # connection is sent again from there, not replayed by paho too.
            dropped = client.drop_out_messages()
            with self._lock:
                self._published -= len(dropped)
                self._generation += 1
                self._lock.notify_all()
        self.connects += 1
        log.info("%s: connected", self.device_id)
        self._connected.set()
        self._send(MessageKind.STATUS, self._status(DeviceState.ONLINE), retain=True, block=False)
        self._wake.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self._connected.clear()
        if not self._closing:
            log.warning("%s: disconnected (%s)", self.device_id, reason_code)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        with self._lock:
            self._acked += 1
            if reason_code.is_failure:
                self.refused += 1
                log.warning("%s: broker refused message %d: %s", self.device_id, mid, reason_code)
            if self.outbox is not None:
                self._acks.append((self._generation, mid, not reason_code.is_failure))
            self._lock.notify_all()
        self._wake.set()
