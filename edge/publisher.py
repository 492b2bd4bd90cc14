"""One device's MQTT publisher: contract topics, its own ``seq``, birth and last will.

:class:`DevicePublisher` joins two parts (``edge/mqtt/``):

- a :class:`~edge.mqtt.link.DeviceLink`: the connection, kept by our own loop
  with exponential back-off and full jitter, with the retained birth and last will;
- a sender, which decides what goes over the link and when:

  - **with an outbox** (the field agent), an
    :class:`~edge.mqtt.outbox_sender.OutboxSender`: records are stored durably
    and a thread sends them, live ones at once and a backlog replayed in batches
    at a bounded rate, deleting each when its PUBACK arrives;
  - **without** (the simulators' fleets, thousands of messages in fast time), a
    :class:`~edge.mqtt.direct.DirectSender`: straight to the client, which
    re-sends unacknowledged QoS 1 messages itself; ``max_pending`` gives back-pressure.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.mqtt.direct import DirectSender
from edge.mqtt.encoding import Sent, batch_payloads, record_body, single_payload
from edge.mqtt.link import DeviceLink, backoff_delay
from edge.mqtt.outbox_sender import OutboxSender
from edge.mqtt.sender import Sender
from edge.mqtt.status import AGENT, DeviceStatus, utc_now
from edge.outbox import Outbox
from farm_contract import payloads
from farm_contract.mqtt_url import parse_mqtt_url
from farm_contract.payloads import MAX_BATCH, DeviceState, EventType
from farm_contract.topics import MessageKind

__all__ = [
    "AGENT", "DevicePublisher", "Sent", "backoff_delay", "batch_payloads", "record_body",
    "single_payload", "utc_now",
]


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
        self.outbox = outbox
        self.link = DeviceLink(
            DeviceStatus(device_id, site_id, self.metadata, clock, outbox),
            parse_mqtt_url(mqtt_url),
            prefix=prefix, username=username, password=password,
            ca_file=ca_file, cert_file=cert_file, key_file=key_file, keepalive=keepalive,
            reconnect_min_s=reconnect_min_s, reconnect_max_s=reconnect_max_s,
            # the outbox sender's messages, plus room for status messages
            max_inflight=64 if outbox is None else max_inflight + 4,
            client_resends=outbox is None, rng=rng,
        )
        self.sender: Sender
        if outbox is None:
            self.sender = DirectSender(self.link, first_seq=first_seq, max_pending=max_pending)
        else:
            self.sender = OutboxSender(
                self.link, outbox, replay_records_per_s=replay_records_per_s,
                batch_records=max(1, min(batch_records, MAX_BATCH)), max_inflight=max_inflight,
            )
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, wait_s: float | None = None) -> None:
        """Connect in the background; with ``wait_s``, block until connected or raise."""
        self._started = True
        self.link.start()
        self.sender.start()
        if wait_s is not None and not self.link.wait_connected(wait_s):
            endpoint = self.link.endpoint
            raise ConnectionError(
                f"{self.device_id}: no connection to {endpoint.host}:{endpoint.port} "
                f"within {wait_s:g}s"
            )

    @property
    def connected(self) -> bool:
        return self.link.connected

    def wait_connected(self, timeout: float) -> bool:
        return self.link.wait_connected(timeout)

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
            self.link.publish_status(DeviceState.OFFLINE, reason="shutdown")
            acked = self.wait_all_acked(max(0.5, deadline - time.monotonic())) and acked
        self.sender.stop()
        self.link.stop()
        self._started = False
        return acked

    # -- publishing -----------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self.sender.next_seq

    def telemetry(self, ts: datetime, readings: dict[str, bool | int | float]) -> Sent:
        """Publish (or, with an outbox, store for sending) one telemetry record."""
        return self.sender.record(MessageKind.TELEMETRY,
                                  lambda seq: payloads.telemetry(seq, ts, readings))

    def event(self, ts: datetime, type: EventType | str, **fields: Any) -> Sent:
        """Publish (or, with an outbox, store for sending) one event."""
        return self.sender.record(MessageKind.EVENT,
                                  lambda seq: payloads.event(seq, ts, type, **fields))

    def raw(self, kind: MessageKind, payload: bytes) -> Sent:
        """Publish bytes as they are, never through the outbox (fault injection)."""
        self.sender.raw(kind, payload)
        return Sent(kind, None, payload)

    def take_seq(self) -> int:
        """Consume a ``seq`` for a message built elsewhere (e.g. a deliberately bad one)."""
        return self.sender.take_seq()

    @property
    def pending(self) -> int:
        """Records not yet acknowledged: in the outbox, or (without one) handed to the client."""
        return self.sender.pending

    @property
    def acked(self) -> int:
        return self.link.acked

    def wait_all_acked(self, timeout: float | None = None) -> bool:
        """Block until the broker has acknowledged everything published (or stored) so far."""
        return self.sender.wait_all_acked(timeout)

    # -- counts ---------------------------------------------------------------------------

    @property
    def refused(self) -> int:
        """PUBACKs carrying a failure reason code (e.g. not authorised)."""
        return self.link.refused

    @property
    def sent_by_kind(self) -> Counter[MessageKind]:
        """Messages handed to the client, by kind (status included)."""
        return self.link.sent_by_kind

    @property
    def connects(self) -> int:
        """Successful connections so far (1 + reconnects)."""
        return self.link.connects

    @property
    def replayed(self) -> int:
        """Outbox records sent as part of a backlog replay."""
        return self.sender.replayed if isinstance(self.sender, OutboxSender) else 0
