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


def series_key(measurement: str, tags: dict[str, str]) -> str:
    """Measurement and tags (sorted, escaped, empty values left out): the start of a line."""
    parts = [measurement.translate(_MEASUREMENT_ESCAPES)]
    for key in sorted(tags):
        value = tags[key]
        if value.rstrip("\\"):
            parts.append(f"{escape_tag(key)}={escape_tag(value)}")
    return ",".join(parts)


_FIELD_KEYS: dict[str, str] = {}
"""Escaped field keys. Fields are catalog metrics and the schema's own names, so few."""
_FIELD_KEYS_MAX = 4096


def _field_key(key: str) -> str:
    escaped = _FIELD_KEYS.get(key)
    if escaped is None:
        escaped = escape_tag(key)
        if len(_FIELD_KEYS) < _FIELD_KEYS_MAX:
            _FIELD_KEYS[key] = escaped
    return escaped


def encode_point(point: Point) -> str:
    """One point as one line (no newline)."""
    series = point.series
    if series is None:
        series = series_key(point.measurement, point.tags)
    fields = ",".join(
        f"{_field_key(key)}={value!r}" if type(value) is float else
        f"{_field_key(key)}={_field(value)}"
        for key, value in point.fields.items()
    )
    return f"{series} {fields} {point.time_ns}"


def encode(points: Iterable[Point]) -> bytes:
    """Points as a line-protocol body.

    JSON can carry lone surrogates (``"\\ud800"``) that UTF-8 cannot; they become
    ``?`` rather than an exception that would hold the whole batch back.
    """
    body = "\n".join(encode_point(point) for point in points if point.fields)
    return body.encode("utf-8", errors="replace")
