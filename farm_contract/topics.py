"""MQTT topics (contract §1): building and parsing them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ID_RE = re.compile(ID_PATTERN.removesuffix("$") + r"\Z")
"""``ID_PATTERN`` for Python's ``re``, whose ``$`` also matches before a final newline
(``"dev-1\n"`` would pass). Pydantic fields use ``ID_PATTERN`` itself: its regex
engine's ``$`` is the very end."""
DEV_EUI_RE = re.compile(r"^[0-9a-fA-F]{16}$")

CHIRPSTACK_UPLINK_FILTER = "application/+/device/+/event/up"
CHIRPSTACK_EVENTS_FILTER = "application/+/device/+/event/#"
"""What ingest subscribes to: an uplink topic that is not exactly ``…/event/up`` but gets
past the broker's ACL reaches ingest as a ``bad_topic`` rejection instead of vanishing."""


class MessageKind(StrEnum):
    """The last level of a device topic."""

    TELEMETRY = "telemetry"
    EVENT = "event"
    STATUS = "status"


QOS = 1
"""Every device topic is published at QoS 1."""


class TopicError(ValueError):
    """A topic that is not a contract topic; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def is_valid_id(value: str) -> bool:
    """True when ``value`` is a valid ``site_id`` or ``device_id``."""
    return ID_RE.match(value) is not None


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A parsed ``{prefix}/v1/{site_id}/{device_id}/{kind}`` topic."""

    prefix: str
    site_id: str
    device_id: str
    kind: MessageKind

    def __str__(self) -> str:
        return device_topic(self.prefix, self.site_id, self.device_id, self.kind)


def device_topic(prefix: str, site_id: str, device_id: str, kind: MessageKind | str) -> str:
    """The topic a device publishes ``kind`` messages on."""
    for name, value in (("site_id", site_id), ("device_id", device_id)):
        if not is_valid_id(value):
            raise ValueError(f"{name} {value!r} does not match {ID_PATTERN}")
    return f"{prefix}/v1/{site_id}/{device_id}/{MessageKind(kind).value}"


def ingest_filters(prefix: str, chirpstack: bool = True) -> list[str]:
    """What ingest subscribes to: wider than the contract's topics, so anything else a
    device gets past the broker (a bad site segment, a near-miss) is seen and rejected
    as ``bad_topic`` rather than lost without a trace."""
    filters = [f"{prefix}/v1/#"]
    if chirpstack:
        filters.append(CHIRPSTACK_EVENTS_FILTER)
    return filters


def device_acl_patterns(prefix: str) -> list[str]:
    """Mosquitto ACL patterns: a device may write exactly its own (``%u``) contract topics.

    ``broker/acl`` is the file the broker reads; tests/test_broker_config.py checks
    that its patterns are these, so the ACL cannot drift from the topics above.
    """
    return [f"{prefix}/v1/+/%u/{kind.value}" for kind in MessageKind]


def parse_device_topic(topic: str, prefix: str) -> DeviceTopic:
    """Parse a device topic or raise :class:`TopicError` saying what is wrong."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != prefix or parts[1] != "v1":
        raise TopicError("bad_topic", f"expected {prefix}/v1/<site_id>/<device_id>/<kind>")
    _, _, site_id, device_id, kind = parts
    if not is_valid_id(site_id):
        raise TopicError("bad_topic", f"site_id {site_id!r} does not match {ID_PATTERN}")
    if not is_valid_id(device_id):
        raise TopicError("bad_topic", f"device_id {device_id!r} does not match {ID_PATTERN}")
    try:
        message_kind = MessageKind(kind)
    except ValueError:
        raise TopicError(
            "bad_topic", f"unknown message kind {kind!r}; expected telemetry, event or status"
        ) from None
    return DeviceTopic(prefix, site_id, device_id, message_kind)


@dataclass(frozen=True, slots=True)
class ChirpStackTopic:
    """A parsed ChirpStack v4 uplink topic ``application/{app_id}/device/{dev_eui}/event/up``."""

    application_id: str
    dev_eui: str


def parse_chirpstack_topic(topic: str) -> ChirpStackTopic:
    """Parse a ChirpStack uplink topic or raise :class:`TopicError`."""
    parts = topic.split("/")
    if (
        len(parts) != 6
        or parts[0] != "application"
        or parts[2] != "device"
        or parts[4:] != ["event", "up"]
    ):
        raise TopicError("bad_topic", "expected application/<app_id>/device/<dev_eui>/event/up")
    return ChirpStackTopic(parts[1], parts[3].lower())
