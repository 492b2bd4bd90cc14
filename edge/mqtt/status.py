"""The device's retained status messages: birth (``online``), last will, shutdown (``offline``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edge.outbox import Outbox
from farm_contract import payloads
from farm_contract.payloads import DeviceState

AGENT = "farm-edge/0.2"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """Who the device is, for its status messages.

    With an outbox, every status also reports its pending and dropped records,
    so operators see a loss as soon as the device is back online.
    """

    device_id: str
    site_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    clock: Callable[[], datetime] = utc_now
    outbox: Outbox | None = None

    def payload(self, state: DeviceState, **extra: Any) -> bytes:
        if self.outbox is not None:
            stats = self.outbox.stats()
            extra = {"outbox_pending": stats.pending, "outbox_dropped": stats.dropped, **extra}
        return payloads.status(
            state, self.clock(), device_id=self.device_id, site_id=self.site_id, agent=AGENT,
            **self.metadata, **extra,
        )
