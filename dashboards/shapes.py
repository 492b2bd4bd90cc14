"""What each panel query must return for its panel to draw, checked on a real result.

Grafana cannot run in the tests, so "the panel works" is approximated by: the
InfluxQL that Grafana would send (see panel_queries) returns data of the shape
the panel type and its transformations need. The expectation is read from the
committed dashboard JSON itself — panel type, ``resultFormat``, the query's
``GROUP BY`` tags and selected columns, the fields transformations refer to —
so a panel edited into something that cannot draw fails without a hand-kept list.

- gauge: exactly one series whose last value is a number within the panel's min/max
  (or null, shown as the panel's ``noValue``, where the caller expects n/a);
- stat: exactly one series whose last row holds numbers (or nulls, shown as ``noValue``);
- timeseries: every series has rows at real times (``GROUP BY time``) and numbers;
- table-like (table, bargauge, barchart, piechart, geomap): every series carries the
  grouped tags (they become columns) and the selected columns; a column may be null in
  some series (an n/a figure) but not in all of them;
- geomap: the rows with ``lat``/``lon`` hold coordinates;
- transformations: a join field, matrix row/column/value fields, filter fields and
  calculation operands exist in the data they act on; joined queries share keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NUMERIC_FUNCTIONS = frozenset({"sum", "mean", "count", "spread", "non_negative_difference",
                               "difference", "median", "max", "min"})
_ALIAS = re.compile(r'\s+AS\s+"((?:[^"\\]|\\.)+)"\s*$', re.IGNORECASE)
_FUNCTION = re.compile(r"^(\w+)\(")
_IDENT = re.compile(r'^"((?:[^"\\]|\\.)+)"$')


@dataclass(frozen=True)
class Column:
    """A selected column: its name in the result and whether it must be numeric."""

    name: str
    numeric: bool


@dataclass(frozen=True)
class Expectation:
    panel_type: str
    result_format: str
    group_tags: tuple[str, ...]
    columns: tuple[Column, ...]
    timed: bool


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside parentheses and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            if char == quote and text[i - 1] != "\\":
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _outer(query: str, keyword: str, after: int = 0) -> int:
    """Index of ``keyword`` (e.g. `` FROM ``) at parenthesis depth 0, or -1."""
    depth, quote = 0, ""
    upper = query.upper()
    for i in range(after, len(query)):
        char = query[i]
        if quote:
            if char == quote and query[i - 1] != "\\":
                quote = ""
            continue
        if char in "\"'/" and not (char == "/" and depth > 0):
            if char != "/":
                quote = char
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0 and upper.startswith(keyword, i):
            return i
    return -1


def selected_columns(query: str) -> tuple[Column, ...]:
    """The outer SELECT's result columns (aliases, field names or function names)."""
    end = _outer(query, " FROM ")
    columns = []
    for part in _split_top(query[len("SELECT "):end]):
        alias = _ALIAS.search(part)
        function = _FUNCTION.match(part)
        name = alias.group(1) if alias else (
            function.group(1) if function else part.strip('"'))
        outer_function = function.group(1).lower() if function else ""
        columns.append(Column(name, outer_function in NUMERIC_FUNCTIONS))
    return tuple(columns)


def group_by(query: str) -> tuple[tuple[str, ...], bool]:
    """The outer query's GROUP BY tags, and whether it groups by time."""
    start = query.upper().rfind(" GROUP BY ")
    if start < 0 or query.count("(", start) != query.count(")", start):
        return (), False  # the only GROUP BY is inside a subquery
    clause = re.split(r"\s+(?:fill\(|ORDER\s+BY\s|LIMIT\s|SLIMIT\s|OFFSET\s)",
                      query[start + len(" GROUP BY "):], flags=re.IGNORECASE)[0]
    tags, timed = [], False
    for part in _split_top(clause):
        if part.lower().startswith("time("):
            timed = True
        else:
            match = _IDENT.match(part)
            tags.append(match.group(1) if match else part)
    return tuple(tags), timed


def expectation(panel: Mapping[str, Any], target: Mapping[str, Any]) -> Expectation:
    query = str(target["query"])
    tags, timed = group_by(query)
    return Expectation(
        panel_type=str(panel["type"]),
        result_format=str(target.get("resultFormat", "time_series")),
        group_tags=tags, columns=selected_columns(query), timed=timed,
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _real_time(value: object) -> bool:
    """A row time (epoch number, or RFC 3339 without ``epoch``) after 1970-01-01."""
    if _is_number(value):
        return bool(value)
    return isinstance(value, str) and bool(value) and not value.startswith("1970-01-01T00:00:00")


def _rows(series: Mapping[str, Any]) -> list[dict[str, Any]]:
    columns = series["columns"]
    tags = series.get("tags") or {}
    return [{**tags, **dict(zip(columns, values, strict=True))} for values in series["values"]]


def check(
    expected: Expectation, result: Mapping[str, Any], panel: Mapping[str, Any] | None = None,
    *, allow_null: bool = False,
) -> list[str]:
    """Problems with one query's InfluxDB result (``results[0]``); empty when it fits.

    A column may be null in some series (an n/a figure), not in all of them, unless
    ``allow_null`` (the caller expects n/a there, e.g. a county without straw sites).
    """
    if "error" in result:
        return [f"InfluxDB error: {result['error']}"]
    series: Sequence[Mapping[str, Any]] = result.get("series") or []
    if not series:
        return ["no data"]
    problems: list[str] = []
    present: set[str] = set()
    for one in series:
        tags = one.get("tags") or {}
        label = f"series {tags}" if tags else "series"
        missing_tags = [t for t in expected.group_tags if t not in tags]
        if missing_tags:
            problems.append(f"{label}: grouped tags {missing_tags} missing")
        rows = _rows(one)
        if not rows:
            problems.append(f"{label}: no rows")
            continue
        for column in expected.columns:
            if column.name not in one["columns"]:
                problems.append(f"{label}: column {column.name!r} missing")
                continue
            values = [row[column.name] for row in rows if row[column.name] is not None]
            if values:
                present.add(column.name)
            if column.numeric and not all(_is_number(v) for v in values):
                problems.append(f"{label}: column {column.name!r} is not numeric")
        if expected.timed and not all(_real_time(r["time"]) for r in rows):
            problems.append(f"{label}: grouped by time but rows lack real times")
    if not allow_null:
        problems += [f"column {c.name!r} is null in every series" for c in expected.columns
                     if c.name not in present and all(c.name in one["columns"] for one in series)]
    problems += _check_panel_type(expected, series, panel or {}, allow_null)
    return problems


def _check_panel_type(
    expected: Expectation, series: Sequence[Mapping[str, Any]], panel: Mapping[str, Any],
    allow_null: bool,
) -> list[str]:
    kind = expected.panel_type
    if kind == "gauge":
        if len(series) != 1:
            return [f"gauge needs one series, got {len(series)}"]
        last = series[0]["values"][-1][-1]
        defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
        low, high = defaults.get("min", float("-inf")), defaults.get("max", float("inf"))
        if last is None and defaults.get("noValue") and not allow_null:
            return ["gauge shows its noValue (null): pass allow_null where n/a is expected"]
        if last is None and defaults.get("noValue"):
            return []
        rates = defaults.get("unit") == "percentunit"  # a rate may exceed 100 %, flagged
        if not _is_number(last) or not low <= last <= (float("inf") if rates else high):
            return [f"gauge's last value {last!r} is not a number in [{low}, {high}]"]
    if kind == "stat":
        if len(series) != 1:
            return [f"stat needs one series, got {len(series)}"]
        last = series[0]["values"][-1][1:]
        if not all(v is None or _is_number(v) for v in last):
            return [f"stat's last row {last!r} is not numbers"]
    if kind == "timeseries":
        if expected.result_format != "time_series":
            return ["a time series panel needs resultFormat time_series"]
        for one in series:
            numbers = [v for row in one["values"] for v in row[1:] if _is_number(v)]
            if not numbers:
                return [f"series {one.get('tags')} has no numbers to plot"]
    if kind == "geomap":
        names = {c.name for c in expected.columns}
        if {"lat", "lon"} <= names:
            for row in (r for one in series for r in _rows(one)):
                lat, lon = row["lat"], row["lon"]
                if not (_is_number(lat) and _is_number(lon)
                        and -90 <= lat <= 90 and -180 <= lon <= 180):
                    return [f"row without coordinates: {row}"]
    if kind in ("table", "bargauge", "barchart", "piechart", "geomap") and (
            expected.result_format != "table"):
        return [f"a {kind} panel reads tables; resultFormat is {expected.result_format}"]
    return []


def available_fields(result: Mapping[str, Any]) -> set[str]:
    """Column names Grafana's table frame of a result has (tags included)."""
    names: set[str] = set()
    for one in result.get("series") or []:
        names.update(one["columns"])
        names.update((one.get("tags") or {}).keys())
    return names


def join_keys(result: Mapping[str, Any], field_name: str) -> set[str]:
    return {str(row.get(field_name)) for one in result.get("series") or []
            for row in _rows(one)}


def check_transformations(
    panel: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """Problems with the fields a panel's transformations use, given each refId's result."""
    problems: list[str] = []
    fields = set().union(*(available_fields(r) for r in results.values())) if results else set()
    fields.add("Time")
    for step in panel.get("transformations", []):
        options = step.get("options") or {}
        kind = step["id"]
        if kind == "joinByField":
            key = options["byField"]
            keys = [join_keys(r, key) for r in results.values()]
            if any(key not in available_fields(r) for r in results.values()):
                problems.append(f"join field {key!r} missing from a query")
            elif len(keys) > 1 and not set.intersection(*keys):
                problems.append(f"joined queries share no {key!r}")
            for name in list(fields):
                fields.update({f"{name} 1", f"{name} 2", f"{name} 3"})
        elif kind == "groupingToMatrix":
            needed = [options["rowField"], options["columnField"], options["valueField"]]
            problems += [f"matrix field {n!r} missing" for n in needed if n not in fields]
            fields.update(v for r in results.values() for v in
                          join_keys(r, options["columnField"]))
            fields.add(f"{options['rowField']}\\{options['columnField']}")
        elif kind == "filterByValue":
            problems += [f"filter field {f['fieldName']!r} missing"
                         for f in options["filters"] if f["fieldName"] not in fields]
        elif kind == "calculateField":
            binary = options.get("binary") or {}
            for operand in (binary.get("left"), binary.get("right")):
                if operand is not None and operand not in fields:
                    problems.append(f"calculation operand {operand!r} missing")
            fields.add(options["alias"])
    return problems


MAX_ROWS = 5000
"""Rows a panel query may return (all series together): a few thousand at most."""
_GATE = re.compile(r"(\d+) (<=|>=|<|>) (\d+)|'([^']*)' (=|!=) '([^']*)'")


def active(query: str) -> bool:
    """Whether a filled-in query's leading gates (see dashboards/resolution.py) all hold.

    Gates are literal comparisons at the start of the outer WHERE, joined by AND;
    InfluxQL reduces them before reading data, so a query whose gate is false returns
    nothing by design.
    """
    where = query.upper().find(" WHERE ")
    rest = query[where + len(" WHERE "):] if where >= 0 else ""
    while (match := _GATE.match(rest)) and rest[match.end():].startswith(" AND "):
        if match.group(1) is not None:
            left, op, right = int(match.group(1)), match.group(2), int(match.group(3))
            holds = {"<=": left <= right, ">=": left >= right, "<": left < right,
                     ">": left > right}[op]
        else:
            holds = (match.group(4) == match.group(6)) == (match.group(5) == "=")
        if not holds:
            return False
        rest = rest[match.end() + len(" AND "):]
    return True


def row_count(result: Mapping[str, Any]) -> int:
    return sum(len(one.get("values") or []) for one in result.get("series") or [])
