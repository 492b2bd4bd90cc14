"""What :class:`edge.publisher.DevicePublisher` asks of a sender (outbox or direct)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from edge.mqtt.encoding import Sent
from farm_contract.topics import MessageKind

BuildPayload = Callable[[int], bytes]
"""A record's contract payload, given the ``seq`` it was assigned."""


class Sender(Protocol):
    """Takes records (each with a fresh ``seq``) and gets them over the link."""

    @property
    def next_seq(self) -> int: ...

    @property
    def pending(self) -> int:
        """Records not yet acknowledged by the broker."""
        ...

    def take_seq(self) -> int: ...

    def record(self, kind: MessageKind, build: BuildPayload) -> Sent: ...

    def raw(self, kind: MessageKind, payload: bytes) -> None:
        """Publish bytes as they are (fault injection), never through an outbox."""
        ...

    def wait_all_acked(self, timeout: float | None) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...
