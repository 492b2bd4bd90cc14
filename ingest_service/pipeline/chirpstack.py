"""ChirpStack v4 uplinks: LoRaWAN devices that reach us through a network server.

ChirpStack's MQTT integration publishes each uplink on
``application/{application_id}/device/{dev_eui}/event/up`` as JSON with
``deviceInfo.devEui``, ``time``, ``fCnt`` and, when the device profile has a
codec, the decoded ``object``. We read ``object`` as readings and ``time`` as
the timestamp; the frame counter ``fCnt`` serves as ``seq``, so a redelivered
uplink is stored once.

A codec may nest its output (``{"soil": {"temp_c": 4.5}}``): nested objects are
flattened to dotted names (``soil.temp_c``), each checked against the catalog like
any reading. No catalog metric has a dot, so a nested field is refused on its own
(``unknown_metric``) while the flat readings beside it are stored.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from farm_contract.payloads import TelemetryRecord
from farm_contract.topics import DEV_EUI_RE, MessageKind, TopicError, parse_chirpstack_topic
from ingest_service.pipeline.parse import Parsed, Rejected, decode, describe

MAX_NESTING = 8
"""Deeper objects stay whole (and are refused as one reading)."""


def flatten(values: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": 2}`` → ``{"a.b": 1, "c": 2}``; an empty object stays a value."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = prefix + key
        if type(value) is dict and value and depth < MAX_NESTING:
            flat.update(flatten(value, name + ".", depth + 1))
        else:
            flat[name] = value
    return flat


def parse_uplink(topic: str, payload: bytes) -> Parsed:
    """Parse a ChirpStack v4 ``event/up`` message or raise :class:`Rejected`."""
    try:
        where = parse_chirpstack_topic(topic)
    except TopicError as exc:
        raise Rejected(exc.reason, exc.detail) from None
    data = decode(payload)
    if not isinstance(data, dict):
        raise Rejected("invalid_payload", "uplink must be a JSON object")
    info = data.get("deviceInfo")
    dev_eui = info.get("devEui") if isinstance(info, dict) else None
    if not isinstance(dev_eui, str) or not DEV_EUI_RE.match(dev_eui):
        raise Rejected("invalid_payload", "uplink has no valid deviceInfo.devEui")
    if dev_eui.lower() != where.dev_eui:
        raise Rejected("invalid_payload", "deviceInfo.devEui does not match the topic")
    readings = data.get("object")
    if not isinstance(readings, dict) or not readings:
        raise Rejected(
            "invalid_payload", "uplink has no decoded object (set a codec in the device profile)"
        )
    if "time" not in data:
        raise Rejected("invalid_payload", "uplink has no time")
    try:
        record = TelemetryRecord.model_validate(
            {"seq": data.get("fCnt", 0), "ts": data["time"], "readings": flatten(readings)}
        )
    except ValidationError as exc:
        raise Rejected("invalid_payload", describe(exc)) from None
    return Parsed(MessageKind.TELEMETRY, dev_eui=dev_eui.lower(), telemetry=[record])
