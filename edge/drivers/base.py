"""The driver interface the agent polls.

A driver hides the hardware (Modbus, GPIO, a LoRa gateway, or a simulation)
behind two calls driven by the agent's clock, so the same agent loop runs in
real time and in fast simulated time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, runtime_checkable

Readings = dict[str, float | bool]
"""Metric name (from ``farm_contract.catalog``) → value."""

DriverEvent = dict[str, Any]
"""A discrete event: ``type`` (an ``EventType`` value), optional ``ts`` (aware
datetime; the agent uses ``now`` when absent) and the type's fields."""


@runtime_checkable
class Driver(Protocol):
    """What the agent needs from a driver."""

    def read(self, now: datetime) -> Readings:
        """Readings taken at ``now`` (an aware datetime)."""
        ...

    def events(self, now: datetime) -> list[DriverEvent]:
        """Events that happened since the previous call, up to and including ``now``."""
        ...

    def close(self) -> None:
        """Release the hardware (serial ports, sockets)."""
        ...
