"""Stage 2: check a message against the wire contract (topic and payload), registry-free.

A ``batch`` is checked record by record: a bad record is set aside with its own
problem (its index in the detail) and the good ones go on, so a replay with one
broken record does not cost its neighbours (the message is acknowledged either way,
and the edge outbox drops it: a bad record would be refused again on every resend).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from farm_contract.payloads import (
    MAX_BATCH,
    EventMessage,
    EventRecord,
    PayloadError,
    StatusMessage,
    TelemetryMessage,
    TelemetryRecord,
    decode_json,
)
from farm_contract.topics import MessageKind, TopicError, parse_device_topic


class Rejected(Exception):
    """A whole message refused; ``reason`` is a stable code, ``detail`` says what is wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Parsed:
    """A contract-valid message, not yet checked against the registry.

    Native devices name themselves in the topic (``site_id``, ``device_id``);
    LoRaWAN uplinks name only their ``dev_eui``, looked up in the registry later.
    """

    kind: MessageKind
    site_id: str | None = None
    device_id: str | None = None
    dev_eui: str | None = None
    telemetry: list[TelemetryRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    status: StatusMessage | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(reason, detail) of records refused on their own, e.g. one bad record of a batch."""


def describe(error: ValidationError) -> str:
    """A one-line account of what pydantic found wrong, for an operator to read."""
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item["loc"] if part not in ("event",))
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    more = error.error_count() - 5
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


R = TypeVar("R", bound=BaseModel)


def _batch_records(
    data: dict[str, Any], record: type[R], single_fields: tuple[str, ...]
) -> tuple[list[R], list[tuple[str, str]]] | None:
    """A batch's valid records and a problem per invalid one; None if not a batch envelope.

    The envelope itself (``v`` 1, a list of 1 to :data:`MAX_BATCH` records, no
    single-message fields beside it) must be right, or the message model words
    the error for the whole message.
    """
    batch = data.get("batch")
    if type(batch) is not list or not 1 <= len(batch) <= MAX_BATCH:
        return None
    if type(data.get("v")) is not int or data.get("v") != 1:
        return None
    if any(name in data for name in single_fields):
        return None
    records: list[R] = []
    problems: list[tuple[str, str]] = []
    for index, item in enumerate(batch):
        try:
            records.append(record.model_validate(item))
        except ValidationError as exc:
            problems.append(("invalid_payload", f"batch[{index}]: {describe(exc)}"))
    return records, problems


def decode(payload: bytes) -> object:
    """Decode the JSON body or raise :class:`Rejected`."""
    try:
        return decode_json(payload)
    except PayloadError as exc:
        raise Rejected(exc.reason, exc.detail) from None


def parse_device_message(topic: str, payload: bytes, prefix: str) -> Parsed:
    """Parse a ``{prefix}/v1/{site_id}/{device_id}/{kind}`` message or raise :class:`Rejected`."""
    try:
        where = parse_device_topic(topic, prefix)
    except TopicError as exc:
        raise Rejected(exc.reason, exc.detail) from None
    data = decode(payload)
    if not isinstance(data, dict):
        raise Rejected("invalid_payload", "payload must be a JSON object")
    parsed = Parsed(where.kind, site_id=where.site_id, device_id=where.device_id)
    try:
        if where.kind is MessageKind.TELEMETRY:
            split = _batch_records(data, TelemetryRecord, ("seq", "ts", "readings"))
            if split is None:
                parsed.telemetry = TelemetryMessage.model_validate(data).records()
            else:
                parsed.telemetry, parsed.problems = split
        elif where.kind is MessageKind.EVENT:
            events = _batch_records(data, EventRecord, ())
            if events is None:
                parsed.events = EventMessage.model_validate(data).records()
            else:
                parsed.events, parsed.problems = events
        else:
            parsed.status = StatusMessage.model_validate(data)
    except ValidationError as exc:
        raise Rejected("invalid_payload", describe(exc)) from None
    return parsed
