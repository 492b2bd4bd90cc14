"""Records as contract messages: a lone record as a plain message, many as a ``batch``.

The outbox stores each record's body without ``v`` (the element of a ``batch``),
so a backlog is packed into batches byte for byte and a lone record gets ``v`` back.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm_contract.payloads import MAX_BATCH, MAX_PAYLOAD_BYTES
from farm_contract.topics import MessageKind

_V1 = b'{"v":1,'


@dataclass(frozen=True, slots=True)
class Sent:
    """A message accepted for sending: kind, seq and exact bytes.

    ``seq`` is None for raw messages, and for a record a full outbox with the
    ``reject_new`` policy refused (then ``payload`` is empty; the loss is counted).
    """

    kind: MessageKind
    seq: int | None
    payload: bytes


def record_body(payload: bytes) -> bytes:
    """A single message's payload without ``v``: the element of a ``batch``."""
    if not payload.startswith(_V1):
        raise ValueError("payload does not start with {\"v\":1,")
    return b"{" + payload[len(_V1):]


def single_payload(body: bytes) -> bytes:
    return _V1 + body[1:]


def batch_payloads(bodies: list[bytes], max_records: int = MAX_BATCH,
                   max_bytes: int = MAX_PAYLOAD_BYTES) -> list[tuple[bytes, int]]:
    """Pack record bodies, in order, into as few messages as the contract allows.

    Returns ``(payload, records)`` pairs: a lone record goes as a plain message,
    more as ``{"v":1,"batch":[…]}`` of at most ``max_records`` and ``max_bytes``.
    """
    out: list[tuple[bytes, int]] = []
    overhead = len(b'{"v":1,"batch":[]}')
    start = 0
    while start < len(bodies):
        size, end = overhead + len(bodies[start]), start + 1
        while (end < len(bodies) and end - start < max_records
               and size + 1 + len(bodies[end]) <= max_bytes):
            size += 1 + len(bodies[end])
            end += 1
        chunk = bodies[start:end]
        if len(chunk) == 1:
            out.append((single_payload(chunk[0]), 1))
        else:
            out.append((b'{"v":1,"batch":[' + b",".join(chunk) + b"]}", len(chunk)))
        start = end
    return out
