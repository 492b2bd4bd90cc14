"""The plain data that flows between the ingest stages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

FieldValue = float | int | bool | str


@dataclass(slots=True)
class Inbound:
    """One message from an input. ``ack`` confirms it to the broker once it is stored.

    ``stale`` turns true when the connection the message came on is gone: its ack
    would be dropped and the broker redelivers it, so holding it only costs memory.
    """

    topic: str
    payload: bytes
    received_ns: int
    ack: Callable[[], None] = field(default=lambda: None, repr=False)
    stale: Callable[[], bool] = field(default=lambda: False, repr=False)


@dataclass(slots=True)
class Point:
    """One InfluxDB point. Numeric fields are floats except ``seq`` (an integer).

    ``series`` is the point's escaped line-protocol series key (measurement and
    tags), when the producer already has it: ingest computes it once per device
    rather than once per point. It must be what
    :func:`~ingest_service.outputs.lineprotocol.series_key` gives for
    ``measurement`` and ``tags``.
    """

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    time_ns: int
    series: str | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class Rejection:
    """Why (part of) a message was not stored; kept so an operator can query it."""

    reason: str
    detail: str
    topic: str
    payload: bytes
    time_ns: int
