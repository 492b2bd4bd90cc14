"""Records straight to the MQTT client: the simulators' fleets, thousands of messages fast.

paho queues unacknowledged QoS 1 messages and sends them again after a
reconnect; ``max_pending`` unacknowledged messages make the caller wait.
"""

from __future__ import annotations

import threading

from edge.mqtt.encoding import Sent
from edge.mqtt.link import DeviceLink
from edge.mqtt.sender import BuildPayload
from farm_contract.topics import MessageKind


class DirectSender:
    """Numbers records from ``first_seq`` (in memory) and publishes each at once."""

    def __init__(self, link: DeviceLink, *, first_seq: int = 0, max_pending: int = 2000) -> None:
        self.link = link
        self.max_pending = max_pending
        self._seq = first_seq
        self._seq_lock = threading.Lock()

    @property
    def next_seq(self) -> int:
        return self._seq

    @property
    def pending(self) -> int:
        return self.link.unacked

    def take_seq(self) -> int:
        with self._seq_lock:
            seq = self._seq
            self._seq += 1
            return seq

    def record(self, kind: MessageKind, build: BuildPayload) -> Sent:
        seq = self.take_seq()
        payload = build(seq)
        self.raw(kind, payload)
        return Sent(kind, seq, payload)

    def raw(self, kind: MessageKind, payload: bytes) -> None:
        self.link.publish(kind, payload, max_pending=self.max_pending)

    def wait_all_acked(self, timeout: float | None) -> bool:
        return self.link.wait_acked(timeout)

    def start(self) -> None:
        """Nothing to run: the caller's thread publishes."""

    def stop(self) -> None:
        """Nothing to stop: paho holds what is unacknowledged."""
