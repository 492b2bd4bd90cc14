"""InfluxDB line protocol, escaped so that no tag or string value can break a line."""

from __future__ import annotations

from collections.abc import Iterable

from ingest_service.model import FieldValue, Point

_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\ ", "\r": r"\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\ ", "\r": r"\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


def escape_tag(value: str) -> str:
    """Escape a tag key or value (and field keys). Newlines cannot be escaped: they become spaces.

    A trailing backslash would escape the separator after it, so it is dropped.
    """
    return value.rstrip("\\").translate(_KEY_ESCAPES)


def _field(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    return '"' + value.translate(_STRING_ESCAPES) + '"'


def encode_point(point: Point) -> str:
    """One point as one line (no newline)."""
    parts = [point.measurement.translate(_MEASUREMENT_ESCAPES)]
    for key in sorted(point.tags):
        value = point.tags[key]
        if value.rstrip("\\"):
            parts.append(f"{escape_tag(key)}={escape_tag(value)}")
    fields = ",".join(f"{escape_tag(key)}={_field(value)}" for key, value in point.fields.items())
    return f"{','.join(parts)} {fields} {point.time_ns}"


def encode(points: Iterable[Point]) -> bytes:
    """Points as a line-protocol body.

    JSON can carry lone surrogates (``"\\ud800"``) that UTF-8 cannot; they become
    ``?`` rather than an exception that would hold the whole batch back.
    """
    body = "\n".join(encode_point(point) for point in points if point.fields)
    return body.encode("utf-8", errors="replace")
