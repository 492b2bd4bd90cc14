"""The MQTT 5 packets a QoS 1 subscriber needs, encoded and decoded (OASIS MQTT 5.0, §2–3).

Only the subscriber's side: CONNECT, SUBSCRIBE, PUBACK, PINGREQ and DISCONNECT
out; CONNACK, SUBACK, PUBLISH, PINGRESP and DISCONNECT in. Incoming PUBLISH
packets are split out of a received chunk many at a time
(:func:`split_publishes`), which is what makes this cheaper than a
general-purpose client: no object, callback or property parse per message
beyond what ingest uses (topic, payload, QoS, packet id).
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

PROP_SESSION_EXPIRY = 0x11
PROP_ASSIGNED_CLIENT_ID = 0x12
PROP_SERVER_KEEP_ALIVE = 0x13
PROP_REASON_STRING = 0x1F
PROP_RECEIVE_MAXIMUM = 0x21
PROP_MAXIMUM_PACKET_SIZE = 0x27

REASON_PROTOCOL_ERROR = 0x82
REASON_SESSION_TAKEN_OVER = 0x8E
REASON_PACKET_TOO_LARGE = 0x95

RETAIN_HANDLING_IF_NEW = 1
"""Subscription option (§3.8.3.1): retained messages only when the subscription is new."""

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
"""Normal disconnection (reason 0): the session stays, with its expiry interval."""

MAX_REMAINING_LENGTH = 268_435_455


class ProtocolError(Exception):
    """The server sent something a conforming MQTT 5 server does not.

    ``reason`` is the DISCONNECT reason code the client answers it with.
    """

    reason = REASON_PROTOCOL_ERROR


class PacketTooLarge(ProtocolError):
    """A packet longer than the Maximum Packet Size we announced: refused unread."""

    reason = REASON_PACKET_TOO_LARGE


def disconnect_packet(reason: int) -> bytes:
    """DISCONNECT (§3.14) with ``reason``; the session stays, with its expiry interval."""
    return packet(DISCONNECT, 0, bytes([reason])) if reason else DISCONNECT_PACKET


def varint(value: int) -> bytes:
    """A Variable Byte Integer (§1.5.5)."""
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def read_varint(data: bytes | bytearray, at: int) -> tuple[int, int] | None:
    """(value, index after it), None if ``data`` ends first; raises if longer than 4 bytes."""
    value = shift = 0
    for i in range(at, min(at + 4, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    if len(data) - at >= 4:
        raise ProtocolError("variable byte integer longer than 4 bytes")
    return None


def utf8(text: str) -> bytes:
    """A UTF-8 Encoded String (§1.5.4): two-byte length, then the bytes."""
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65,535 bytes")
    return struct.pack(">H", len(raw)) + raw


def binary(data: bytes) -> bytes:
    """Binary Data (§1.5.6)."""
    if len(data) > 0xFFFF:
        raise ValueError("binary data longer than 65,535 bytes")
    return struct.pack(">H", len(data)) + data


def packet(kind: int, flags: int, body: bytes) -> bytes:
    """A control packet: fixed header (type, flags, remaining length) and ``body``."""
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    keepalive: int,
    clean_start: bool,
    session_expiry: int,
    receive_maximum: int,
    username: str | None = None,
    password: str | None = None,
    maximum_packet_size: int | None = None,
) -> bytes:
    """CONNECT (§3.1) with the session expiry, receive maximum and maximum packet size.

    With a Maximum Packet Size the server must not send us a larger packet (§3.1.2.11.4):
    it drops it instead.
    """
    flags = 0x02 if clean_start else 0
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    properties = (
        bytes([PROP_SESSION_EXPIRY]) + struct.pack(">I", session_expiry)
        + bytes([PROP_RECEIVE_MAXIMUM]) + struct.pack(">H", receive_maximum)
    )
    if maximum_packet_size is not None:
        properties += bytes([PROP_MAXIMUM_PACKET_SIZE]) + struct.pack(">I", maximum_packet_size)
    body = (
        utf8("MQTT") + bytes([5, flags]) + struct.pack(">H", keepalive)
        + varint(len(properties)) + properties + utf8(client_id)
    )
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += binary(password.encode("utf-8"))
    return packet(CONNECT, 0, body)


def subscribe_packet(
    packet_id: int, filters: list[str], qos: int, retain_handling: int = 0
) -> bytes:
    """SUBSCRIBE (§3.8): every filter at ``qos`` with ``retain_handling`` (§3.8.3.1)."""
    body = struct.pack(">H", packet_id) + b"\x00"
    options = bytes([qos | retain_handling << 4])
    for item in filters:
        body += utf8(item) + options
    return packet(SUBSCRIBE, 0x2, body)


def pubacks(packet_ids: list[int]) -> bytes:
    """PUBACKs (§3.4) for ``packet_ids``, success and no properties: four bytes each."""
    return struct.pack(f">{len(packet_ids)}I", *[0x4002_0000 | pid for pid in packet_ids])


def properties(data: bytes, at: int) -> tuple[dict[int, int | bytes], int]:
    """The properties at ``at`` as {identifier: int or raw bytes}, and the index after them.

    Enough of §2.2.2.2 for CONNACK, SUBACK and DISCONNECT: integers are decoded,
    strings, binary data and pairs kept raw.
    """
    found = read_varint(data, at)
    if found is None:
        raise ProtocolError("truncated properties")
    length, at = found
    end = at + length
    if end > len(data):
        raise ProtocolError("properties run past the packet")
    out: dict[int, int | bytes] = {}
    while at < end:
        ident = data[at]
        at += 1
        if ident in (0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A):  # byte
            out[ident] = data[at]
            at += 1
        elif ident in (0x13, 0x21, 0x22, 0x23):  # two-byte integer
            out[ident] = int.from_bytes(data[at : at + 2], "big")
            at += 2
        elif ident in (0x02, 0x11, 0x18, 0x27):  # four-byte integer
            out[ident] = int.from_bytes(data[at : at + 4], "big")
            at += 4
        elif ident == 0x0B:  # subscription identifier: variable byte integer
            value = read_varint(data, at)
            if value is None:
                raise ProtocolError("truncated property")
            out[ident], at = value
        elif ident == 0x26:  # user property: a string pair
            for _ in range(2):
                size = int.from_bytes(data[at : at + 2], "big")
                at += 2 + size
        else:  # strings and binary data
            size = int.from_bytes(data[at : at + 2], "big")
            out[ident] = data[at + 2 : at + 2 + size]
            at += 2 + size
    if at != end:
        raise ProtocolError("malformed properties")
    return out, end


@dataclass(slots=True)
class Connack:
    session_present: bool
    reason: int
    properties: dict[int, int | bytes] = field(default_factory=dict)


def parse_connack(body: bytes) -> Connack:
    if len(body) < 2:
        raise ProtocolError("CONNACK too short")
    props, _ = properties(body, 2) if len(body) > 2 else ({}, 2)
    return Connack(bool(body[0] & 1), body[1], props)


def parse_suback(body: bytes) -> tuple[int, list[int]]:
    """(packet id, reason codes) of a SUBACK (§3.9)."""
    if len(body) < 3:
        raise ProtocolError("SUBACK too short")
    _, at = properties(body, 2)
    return int.from_bytes(body[:2], "big"), list(body[at:])


REASON_STRING_MAX = 200
"""Characters of a server's reason string that reach the log."""


def reason_code(body: bytes, at: int) -> int:
    """A DISCONNECT's or CONNACK's reason code (0 when the packet has none)."""
    return body[at] if len(body) > at else 0


def printable(text: str, limit: int = REASON_STRING_MAX) -> str:
    """``text`` fit for one log line: control and line-separator characters as ``?``, cut."""
    cut = text[:limit]
    safe = cut if cut.isprintable() else "".join(c if c.isprintable() else "?" for c in cut)
    return safe + "…" if len(text) > limit else safe


def reason_text(body: bytes, at: int) -> str:
    """A DISCONNECT's or CONNACK's reason code and (sanitised) reason string, for the log."""
    if len(body) <= at:
        return "0x00"
    code = body[at]
    text = f"0x{code:02x} ({REASONS.get(code, 'unknown')})"
    if len(body) > at + 1:
        props, _ = properties(body, at + 1)
        reason = props.get(PROP_REASON_STRING)
        if isinstance(reason, bytes):
            text += ": " + printable(reason.decode("utf-8", errors="replace"))
    return text


REASONS = {
    0x00: "success", 0x04: "disconnect with will", 0x80: "unspecified error",
    0x81: "malformed packet", 0x82: "protocol error", 0x83: "implementation specific error",
    0x84: "unsupported protocol version", 0x85: "client identifier not valid",
    0x86: "bad user name or password", 0x87: "not authorized", 0x88: "server unavailable",
    0x89: "server busy", 0x8A: "banned", 0x8B: "server shutting down",
    0x8C: "bad authentication method", 0x8D: "keep alive timeout", 0x8E: "session taken over",
    0x8F: "topic filter invalid", 0x90: "topic name invalid", 0x93: "receive maximum exceeded",
    0x95: "packet too large", 0x97: "quota exceeded", 0x99: "payload format invalid",
    0x9B: "QoS not supported",
    0x9C: "use another server", 0x9D: "server moved", 0x9F: "connection rate exceeded",
}

Publish = tuple[str, bytes, int, int]
"""An incoming PUBLISH: topic, payload, QoS, packet id (0 for QoS 0)."""

Other = tuple[int, int, bytes]
"""Any other incoming packet: type, flags, body."""


TOPIC_CACHE_MAX = 100_000
TOPIC_CACHE_BYTES = 32 << 20
"""What the cached topics may take, counted as their ``bytes`` and ``str`` objects plus
:data:`TOPIC_ENTRY_OVERHEAD` each. A real fleet's 100,000 topics of ~40 characters
take ~19 MiB; 60 KB hostile topics fill it after ~270 entries, and it starts again."""
TOPIC_ENTRY_OVERHEAD = 64
"""A dict entry's share of the hash table (three words plus the index, with slack)."""


class TopicCache(dict[bytes, str]):
    """Decoded topics by their raw bytes, bounded by entries and by bytes.

    When a new topic does not fit, the cache is emptied and starts again: hostile
    topics can cost a cache miss, never memory beyond :data:`TOPIC_CACHE_BYTES`
    (+ the table of :data:`TOPIC_CACHE_MAX` entries). Lookups are the plain
    ``dict.get``; only a miss pays for the accounting.
    """

    __slots__ = ("max_bytes", "max_entries", "size")

    def __init__(
        self, max_bytes: int = TOPIC_CACHE_BYTES, max_entries: int = TOPIC_CACHE_MAX
    ) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.size = 0

    def remember(self, raw: bytes, topic: str) -> None:
        cost = sys.getsizeof(raw) + sys.getsizeof(topic) + TOPIC_ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        if self.size + cost > self.max_bytes or len(self) >= self.max_entries:
            self.clear()
        self[raw] = topic
        self.size += cost

    def clear(self) -> None:
        super().clear()
        self.size = 0


def packet_size(data: bytes | bytearray) -> int | None:
    """The whole size of the packet ``data`` starts with, None while its header is cut short."""
    found = read_varint(data, 1) if len(data) >= 2 else None
    return None if found is None else found[1] + found[0]


def split_packets(
    data: bytes,
    publishes: list[Publish],
    others: list[Other],
    topics: TopicCache | None = None,
    max_size: int = MAX_REMAINING_LENGTH,
) -> int:
    """Split the complete packets at the start of ``data``; return how many bytes they took.

    PUBLISH packets are appended to ``publishes`` (the hot path, kept lean: a topic
    that is not valid UTF-8 is decoded with replacement characters, so it can be
    rejected downstream like any bad topic), every other packet to ``others``.
    An incomplete packet at the end is left for the next call, unless its header
    announces a packet of more than ``max_size`` bytes: then :class:`PacketTooLarge` is
    raised at once, before any of it is buffered. A QoS 2 PUBLISH is a
    :class:`ProtocolError` (ingest subscribes at QoS 1; a server must not send
    more, §3.8.4). ``topics`` caches decoded topics, so the messages of one
    device share one string (bounded: :class:`TopicCache`).
    """
    if topics is None:
        topics = TopicCache()
    remember = topics.remember
    at = 0
    size = len(data)
    append = publishes.append
    while at + 2 <= size:
        first = data[at]
        length = data[at + 1]
        start = at + 2
        if length >= 0x80:
            found = read_varint(data, at + 1)
            if found is None:
                break
            length, start = found
            if start - at + length > max_size:
                raise PacketTooLarge(
                    f"a packet of {start - at + length} bytes; our maximum is {max_size}"
                )
        end = start + length
        if end > size:
            break
        if first >> 4 == PUBLISH:
            try:
                topic_end = start + 2 + (data[start] << 8 | data[start + 1])
                raw = data[start + 2 : topic_end]
                topic = topics.get(raw)
                if topic is None:
                    topic = raw.decode("utf-8", "replace")
                    remember(raw, topic)
                qos = (first >> 1) & 3
                if qos:
                    packet_id = data[topic_end] << 8 | data[topic_end + 1]
                    at_props = topic_end + 2
                else:
                    packet_id = 0
                    at_props = topic_end
                props = data[at_props]
                if props < 0x80:
                    payload_at = at_props + 1 + props
                else:
                    found = read_varint(data, at_props)
                    if found is None:
                        raise ProtocolError("truncated PUBLISH properties")
                    payload_at = found[1] + found[0]
                if payload_at > end or qos > 1:
                    raise ProtocolError(
                        "malformed PUBLISH" if qos < 2 else f"a QoS {qos} PUBLISH; we asked for 1"
                    )
                append((topic, data[payload_at:end], qos, packet_id))
            except IndexError:
                raise ProtocolError("malformed PUBLISH") from None
        else:
            others.append((first >> 4, first & 0x0F, data[start:end]))
        at = end
    return at
