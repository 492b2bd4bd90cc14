"""The plain data that flows between the ingest stages."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

FieldValue = float | int | bool | str

MAX_TOPIC_CHARS = 256
"""A rejection keeps this much of its topic (a contract topic is at most ~150 characters)."""
MAX_DETAIL_CHARS = 1000
"""A rejection keeps this much of its detail."""

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def printable(text: str, limit: int) -> str:
    """``text`` with control characters (and lone surrogates) escaped, cut to ``limit``.

    For text a device chose that ends up in a rejection or a log line: a newline or
    an ANSI escape there must not forge a line or repaint a terminal, and a 60 KB
    topic must not be stored 60 KB long. Cut text ends in ``…``.
    """
    text = _CONTROL.sub(_escape, text[: limit * 4]) if _CONTROL.search(text) else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
