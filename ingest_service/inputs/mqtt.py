"""Stage 1: the MQTT input. QoS 1, a persistent session, and acknowledgements on our terms.

paho-mqtt acknowledges a message as soon as ``on_message`` returns unless the
client is made with ``manual_ack=True``. We ack only once the pipeline stored
the message. Two details keep that safe:

- Flow control comes from MQTT v5 *Receive Maximum*: the broker never has more
  than that many unacknowledged messages out to us, so the pipeline's queue is
  bounded without ever blocking paho's network thread (which would miss pings).
- A packet id is only meaningful on the connection it arrived on. After a
  reconnect the broker redelivers what we did not ack, and an old id may name a
  new message; so each message remembers its connection and an ack for an older
  connection is dropped (the redelivered copy gets acked instead). The check and
  the ack happen under the lock that ``on_disconnect`` takes to bump the
  connection number, and paho empties its outgoing queue on reconnect, so an ack
  can never slip from one connection into the next.
- Messages of a lost connection are redelivered on the next one, so the pipeline
  is told to drop the ones it still holds (``on_connection_change``); otherwise
  every reconnect during an InfluxDB outage would add another receive-maximum of
  messages to memory.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from farm_contract.settings import Settings
from farm_contract.topics import CHIRPSTACK_UPLINK_FILTER, QOS, device_filters
from ingest_service.model import Inbound

log = logging.getLogger(__name__)


def subscription_filters(settings: Settings) -> list[str]:
    """Device topics, ChirpStack uplinks, and the shared-subscription form when sharing."""
    filters = device_filters(settings.topic_prefix)
    if settings.subscribe_chirpstack:
        filters.append(CHIRPSTACK_UPLINK_FILTER)
    if settings.mqtt_share_group:
        filters = [f"$share/{settings.mqtt_share_group}/{item}" for item in filters]
    return filters


class MqttInput:
    """Subscribes to the contract's topics and delivers each message as an :class:`Inbound`."""

    def __init__(
        self,
        settings: Settings,
        deliver: Callable[[Inbound], None],
        on_connection_change: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._deliver = deliver
        self._on_connection_change = on_connection_change
        self._connection = 0
        self._connected = threading.Event()
        self._lock = threading.Lock()
        endpoint = settings.mqtt
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.mqtt_client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if endpoint.username:
            client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            ca = str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None
            client.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background; paho keeps reconnecting until :meth:`stop`."""
        endpoint = self._settings.mqtt
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._settings.mqtt_session_expiry_s
        properties.ReceiveMaximum = self._settings.receive_maximum
        self._client.connect_async(
            endpoint.host, endpoint.port, keepalive=30, clean_start=False, properties=properties
        )
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self) -> None:
        """Disconnect cleanly; unacknowledged messages stay in the broker's session."""
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("MQTT broker refused the connection: %s", reason)
            return
        with self._lock:
            self._connection += 1
        if self._on_connection_change is not None:
            self._on_connection_change()
        log.info("connected to MQTT broker (session present: %s)", flags.session_present)
        client.subscribe([(item, QOS) for item in subscription_filters(self._settings)])
        self._connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        with self._lock:
            self._connection += 1
        if self._on_connection_change is not None:
            self._on_connection_change()
        log.warning("disconnected from MQTT broker: %s", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        connection = self._connection
        mid, qos = message.mid, message.qos

        def ack() -> None:
            if qos == 0:
                return
            with self._lock:  # no reconnect between the check and the queued PUBACK
                if connection != self._connection:
                    return  # an older connection's id may name another message now
                client.ack(mid, qos)

        def stale() -> bool:
            return qos > 0 and connection != self._connection

        self._deliver(
            Inbound(message.topic, bytes(message.payload), time.time_ns(), ack, stale)
        )
