"""One device's MQTT connection, kept up by our own loop.

paho's own reconnect delay has no jitter; ours is exponential with full jitter,
so a county's devices coming back after a broker restart spread their reconnects
out. The link counts what it handed to the client and what the broker
acknowledged; what to send and when is a sender's business (``edge.mqtt.sender``).
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge.mqtt.status import DeviceStatus
from farm_contract.mqtt_url import MqttEndpoint
from farm_contract.payloads import DeviceState
from farm_contract.topics import QOS, MessageKind, device_topic

log = logging.getLogger(__name__)

CLASH_WINDOW_S = 30.0
CLASH_DROPS = 3
"""This many accepted connections in a row dropped within the window name a client-id clash."""


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential back-off with full jitter: uniform in ``[0, min(max_s, min_s·2^attempt)]``.

    Full jitter (rather than ±10 %) is what spreads thousands of devices that
    all lost the broker at the same instant over the whole window.
    """
    ceiling = min(max_s, min_s * 2.0 ** max(0, attempt))
    return rng.uniform(0.0, ceiling)


class LinkListener(Protocol):
    """Told (on paho's network thread) when the link comes up and when a PUBACK arrives."""

    def link_up(self) -> None: ...

    def acknowledged(self, generation: int, mid: int, ok: bool) -> None: ...


class DeviceLink:
    """The device's MQTT client, its reconnect loop, and counts of messages and PUBACKs.

    ``client_resends``: whether paho keeps unacknowledged messages across a
    reconnect and sends them again (what the direct sender relies on). Without
    it each connection starts empty and a new ``generation``: the caller (the
    outbox) is then the one queue and sends again whatever was in flight.
    """

    def __init__(
        self,
        status: DeviceStatus,
        endpoint: MqttEndpoint,
        *,
        prefix: str = "farm",
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        keepalive: int = 60,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        max_inflight: int = 64,
        client_resends: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self.status = status
        self.device_id = status.device_id
        self.endpoint = endpoint
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self._keepalive = keepalive
        self._client_resends = client_resends
        self._rng = rng or random.Random()
        self._topics = {
            kind: device_topic(prefix, status.site_id, status.device_id, kind)
            for kind in MessageKind
        }
        self._lock = threading.Condition()
        self._published = 0
        self._acked = 0
        self.refused = 0
        """PUBACKs carrying a failure reason code (e.g. not authorised)."""
        self.sent_by_kind: Counter[MessageKind] = Counter()
        """Messages handed to the client, by kind (status included)."""
        self.connects = 0
        self._connected_at = 0.0
        self._short_drops = 0
        """Connections in a row the broker closed soon after accepting them."""
        """Successful connections so far (1 + reconnects)."""
        self.generation = 0
        """Connections that started with an empty client queue (``client_resends=False``)."""
        self._listener: LinkListener | None = None
        self._connected = threading.Event()
        self._closing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=status.device_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        self._login = username or status.device_id
        """The client id as the broker sees it (it binds client ids to usernames)."""
        client.username_pw_set(self._login, password or endpoint.password)
        if endpoint.tls:
            try:
                client.tls_set(
                    ca_certs=str(ca_file) if ca_file else None,
                    certfile=str(cert_file) if cert_file else None,
                    keyfile=str(key_file) if key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError) as exc:
                # ssl names neither the file nor which one; edge.config checks them
                # at load, this is for callers that build a link themselves.
                files = ", ".join(f"{name} {path}" for name, path in (
                    ("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file),
                ) if path is not None)
                raise ValueError(f"{status.device_id}: TLS setup failed ({files or 'system CAs'}):"
                                 f" {exc}") from exc
        client.max_inflight_messages_set(max_inflight)
        client.will_set(
            self._topics[MessageKind.STATUS],
            status.payload(DeviceState.OFFLINE, reason="connection lost"),
            qos=QOS, retain=True,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

    def listen(self, listener: LinkListener) -> None:
        self._listener = listener

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background, and keep reconnecting until :meth:`stop`."""
        self._stop.clear()
        self._closing = False
        self._thread = threading.Thread(target=self._keep, name=f"mqtt-{self.device_id}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Disconnect and end the reconnect loop (releasing anyone held by back-pressure)."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._stop.set()
        self._client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None) -> bool:
        return self._connected.wait(timeout)

    def _keep(self) -> None:
        """Keep the connection: connect, run the network loop until it drops, back off, again."""
        attempt = 0
        first = True
        while not self._stop.is_set():
            try:
                if first:
                    self._client.connect(self.endpoint.host, self.endpoint.port,
                                         self._keepalive, clean_start=True)
                    first = False
                else:
                    self._client.reconnect()
            except (OSError, ValueError) as exc:
                delay = backoff_delay(attempt, self.reconnect_min_s, self.reconnect_max_s,
                                      self._rng)
                attempt += 1
                log.info("%s: cannot reach %s:%d (%s); retrying in %.1fs", self.device_id,
                         self.endpoint.host, self.endpoint.port, exc, delay)
                self._stop.wait(delay)
                continue
            if self._stop.is_set():  # stop() came while we were connecting
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

    def publish(self, kind: MessageKind, payload: bytes, *, retain: bool = False,
                max_pending: int | None = None) -> int:
        """Hand one message to the client; returns its MQTT message id.

        With ``max_pending``, first wait while that many messages are unacknowledged
        (back-pressure). Never from paho's own thread: it is the one to process the
        acknowledgements it would wait for.
        """
        with self._lock:
            while (max_pending is not None and self._published - self._acked >= max_pending
                   and not self._closing):
                self._lock.wait(0.5)
            self._published += 1
        try:
            info = self._client.publish(self._topics[kind], payload, qos=QOS, retain=retain)
        except Exception:
            with self._lock:
                self._published -= 1
            raise
        # NO_CONN / CONN_LOST: paho keeps the QoS 1 message and sends it after reconnecting
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_CONN_LOST):
            with self._lock:
                self._published -= 1
            raise RuntimeError(f"{self.device_id}: publish failed: {mqtt.error_string(info.rc)}")
        with self._lock:
            self.sent_by_kind[kind] += 1
        return int(info.mid)

    def publish_status(self, state: DeviceState, **extra: Any) -> int:
        """The retained status message (birth, or ``offline`` at shutdown)."""
        return self.publish(MessageKind.STATUS, self.status.payload(state, **extra), retain=True)

    @property
    def unacked(self) -> int:
        """Messages handed to the client and not yet acknowledged."""
        with self._lock:
            return self._published - self._acked

    @property
    def acked(self) -> int:
        with self._lock:
            return self._acked

    def wait_acked(self, timeout: float | None = None,
                   held: Callable[[], bool] = lambda: False) -> bool:
        """Block until everything handed over is acknowledged and ``held()`` is false."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._published > self._acked or held():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.2) if remaining is not None else 0.2)
            return True

    def wake_waiters(self) -> None:
        """Let :meth:`wait_acked` look again (``held()`` may have changed)."""
        with self._lock:
            self._lock.notify_all()

    # -- paho callbacks (network thread) -----------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            log.error("%s: broker refused the connection: %s", self.device_id, reason_code)
            return
        if not self._client_resends:
            # The caller is the one queue: what the client held from the last
            # connection is sent again from there, not replayed by paho too.
            dropped = client.drop_out_messages()
            with self._lock:
                self._published -= len(dropped)
                self.generation += 1
                self._lock.notify_all()
        self.connects += 1
        self._connected_at = time.monotonic()
        log.info("%s: connected", self.device_id)
        self._connected.set()
        self.publish_status(DeviceState.ONLINE)
        if self._listener is not None:
            self._listener.link_up()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self._connected.clear()
        if self._closing:
            return
        # Mosquitto closes the older of two connections with one client id without a
        # word (2.0.11: no DISCONNECT packet, paho says "Unspecified error"), so a clash
        # shows only as accepted connections dropped again and again soon after.
        lasted = time.monotonic() - self._connected_at
        self._short_drops = self._short_drops + 1 if lasted < CLASH_WINDOW_S else 0
        if self._short_drops >= CLASH_DROPS:
            log.warning(
                "%s: disconnected (%s) %d times in a row within %.0f s of connecting: client "
                "id %s connected elsewhere: another process uses this device's credentials",
                self.device_id, reason_code, self._short_drops, CLASH_WINDOW_S,
                self._login,
            )
        else:
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
            generation = self.generation
            self._lock.notify_all()
        if self._listener is not None:
            self._listener.acknowledged(generation, mid, not reason_code.is_failure)
