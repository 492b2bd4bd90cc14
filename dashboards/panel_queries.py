"""The InfluxQL a Grafana dashboard sends, with its variables filled in as Grafana does.

Tests use it to run every panel query of a dashboard against a real InfluxDB::

    from dashboards.panel_queries import panel_queries
    for title, ref_id, query in panel_queries(board, {"county": "all"}, start, end):
        influxd.query(query, db="farm")

What is substituted, following Grafana's InfluxDB (InfluxQL) datasource:

- ``$timeFilter`` → ``time >= 1700000000000ms and time <= 1700003600000ms``;
- ``$__interval`` / ``$interval`` → Grafana's auto interval (time range ÷ max data
  points, rounded to a "nice" step, at least the minimum interval), e.g. ``1h``;
  ``$__interval_ms``, ``$__from``, ``$__to``, ``$__range``, ``$__range_s``,
  ``$__range_ms`` likewise;
- template variables as ``$name``, ``${name}``, ``${name:raw}``,
  ``${name:regex}`` and ``[[name]]``. Inside an InfluxQL regex (``=~ /…/`` or
  ``!~ /…/``) the value is regex-escaped, as Grafana does; a list of values
  (multi-value variable) becomes ``(a|b)`` there and ``a,b`` elsewhere. A
  variable not given in ``variables`` takes the dashboard's current value.
- a variable's "All" option (stored as ``$__all``) becomes its custom ``allValue``
  (e.g. ``.*``) unescaped, as Grafana does; without an ``allValue`` Grafana would
  need the variable's options, which only a live datasource knows, so that raises.

A ``$name`` that is neither a built-in nor a variable raises ``KeyError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

VariableValue = str | Sequence[str]

# Grafana's variable syntaxes: $name, [[name]] / [[name:fmt]], ${name} / ${name:fmt}.
_VARIABLE = re.compile(
    r"\$(?P<plain>\w+)"
    r"|\[\[(?P<bracket>\w+?)(?::(?P<bracket_fmt>\w+))?\]\]"
    r"|\$\{(?P<braced>\w+)(?::(?P<braced_fmt>[^}]+))?\}"
)
# An InfluxQL regex literal after =~ or !~ (as Grafana's datasource finds them).
_REGEX_LITERAL = re.compile(r"[=!]~\s*/((?:[^\r\n\[/\\]|\\.|\[(?:[^\r\n\]\\]|\\.)*\])+)/")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")

# Grafana's kbn.roundInterval: (upper bound ms, interval ms).
_ROUND_STEPS: tuple[tuple[int, int], ...] = (
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500),
    (1_500, 1_000), (3_500, 2_000), (7_500, 5_000), (12_500, 10_000), (17_500, 15_000),
    (25_000, 20_000), (45_000, 30_000), (90_000, 60_000), (210_000, 120_000),
    (450_000, 300_000), (750_000, 600_000), (1_050_000, 900_000), (1_500_000, 1_200_000),
    (2_700_000, 1_800_000), (5_400_000, 3_600_000), (9_000_000, 7_200_000),
    (16_200_000, 10_800_000), (32_400_000, 21_600_000), (86_400_000, 43_200_000),
    (604_800_000, 86_400_000), (1_814_400_000, 604_800_000),
    (3_628_800_000, 2_592_000_000),
)
_YEAR_MS = 31_536_000_000
_UNITS_MS: tuple[tuple[str, int], ...] = (
    ("y", _YEAR_MS), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000),
    ("ms", 1),
)
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w|y)$")


def round_interval(interval_ms: float) -> int:
    """Grafana's nice interval for a raw one (kbn.roundInterval)."""
    for upper, step in _ROUND_STEPS:
        if interval_ms < upper:
            return step
    return _YEAR_MS


def format_interval(interval_ms: int) -> str:
    """An InfluxQL duration literal in the largest whole unit, e.g. ``1h``, ``500ms``."""
    for unit, size in _UNITS_MS:
        if interval_ms >= size and interval_ms % size == 0:
            return f"{interval_ms // size}{unit}"
    return f"{interval_ms}ms"


def parse_interval(text: str) -> int:
    """``10s``, ``1m``, ``2h``… in milliseconds."""
    match = _DURATION.match(text.strip().lstrip(">"))
    if not match:
        raise ValueError(f"not an interval: {text!r}")
    size = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 604_800_000, "y": _YEAR_MS}[match.group(2)]
    return int(match.group(1)) * size


def auto_interval_ms(
    from_ms: int, to_ms: int, max_data_points: int, min_interval: str | None = None,
) -> int:
    """Grafana's ``$__interval`` for a time range (rangeutil.calculateInterval)."""
    interval = round_interval((to_ms - from_ms) / max(1, max_data_points))
    if min_interval:
        interval = max(interval, parse_interval(min_interval))
    return interval


def epoch_ms(moment: datetime | int) -> int:
    """Milliseconds since the epoch; a naive datetime is taken as UTC."""
    if isinstance(moment, int):
        return moment
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def escape_regex(value: str) -> str:
    """Grafana's escapeRegex, for values put inside an InfluxQL ``/…/`` regex."""
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def load(dashboard_json: Mapping[str, Any] | str | Path) -> Mapping[str, Any]:
    """A dashboard as a mapping, from a mapping, JSON text or a JSON file."""
    if isinstance(dashboard_json, Path):
        dashboard_json = dashboard_json.read_text(encoding="utf-8")
    if isinstance(dashboard_json, str):
        loaded: dict[str, Any] = json.loads(dashboard_json)
        return loaded
    return dashboard_json


def iter_panels(panels: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Every panel, including those inside (collapsed) rows; rows themselves are skipped."""
    for panel in panels:
        if panel.get("type") == "row":
            yield from iter_panels(panel.get("panels", []))
        else:
            yield panel


def current_values(dashboard: Mapping[str, Any]) -> dict[str, VariableValue]:
    """The dashboard's template variables at their saved current values."""
    values: dict[str, VariableValue] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        current = variable.get("current") or {}
        if "value" in current:
            values[variable["name"]] = current["value"]
    return values


ALL_VALUE = "$__all"


def all_values(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Each variable's custom "All" value (``allValue``), for those that have one."""
    return {
        str(variable["name"]): str(variable["allValue"])
        for variable in dashboard.get("templating", {}).get("list", [])
        if variable.get("includeAll") and variable.get("allValue")
    }


def _in_regex_literal(query: str, start: int, end: int) -> bool:
    return any(
        m.start(1) <= start and end <= m.end(1) for m in _REGEX_LITERAL.finditer(query)
    )


def _format(value: VariableValue, fmt: str | None, in_regex: bool) -> str:
    values = [value] if isinstance(value, str) else list(value)
    if fmt == "raw":
        return ",".join(values)
    if fmt == "regex" or in_regex:
        escaped = [escape_regex(v) for v in values]
        return escaped[0] if len(escaped) == 1 and isinstance(value, str) else (
            "(" + "|".join(escaped) + ")")
    if fmt not in (None, "csv"):
        raise ValueError(f"variable format {fmt!r} is not supported")
    return ",".join(values)


def interpolate(
    query: str, variables: Mapping[str, VariableValue], builtins: Mapping[str, str],
    all_value: Mapping[str, str] | None = None,
) -> str:
    """Replace every variable in ``query`` (one pass, as Grafana's template service).

    ``all_value`` maps a variable to its custom "All" value, used unescaped when the
    variable's value is ``$__all``.
    """

    def one(match: re.Match[str]) -> str:
        name = match.group("plain") or match.group("bracket") or match.group("braced")
        fmt = match.group("bracket_fmt") or match.group("braced_fmt")
        if name in builtins:
            return builtins[name]
        if name not in variables:
            raise KeyError(f"query uses ${name}, which is not a variable: {query}")
        if variables[name] == ALL_VALUE or variables[name] == [ALL_VALUE]:
            if all_value is None or name not in all_value:
                raise ValueError(f"${name} is 'All' but has no custom allValue: {query}")
            return all_value[name]
        return _format(variables[name], fmt, _in_regex_literal(query, *match.span()))

    return _VARIABLE.sub(one, query)


def builtin_variables(
    from_ms: int, to_ms: int, interval_ms: int,
) -> dict[str, str]:
    """Grafana's global variables that InfluxQL panels use."""
    interval = format_interval(interval_ms)
    range_ms = to_ms - from_ms
    return {
        "timeFilter": f"time >= {from_ms}ms and time <= {to_ms}ms",
        "__interval": interval,
        "interval": interval,
        "__interval_ms": str(interval_ms),
        "__from": str(from_ms),
        "__to": str(to_ms),
        "__range": format_interval(max(1, range_ms)),
        "__range_s": str(range_ms // 1000),
        "__range_ms": str(range_ms),
    }


def panel_queries(
    dashboard_json: Mapping[str, Any] | str | Path,
    variables: Mapping[str, VariableValue],
    time_from: datetime | int,
    time_to: datetime | int,
    *,
    max_data_points: int = 1000,
    min_interval: str | None = None,
    interval: str | None = None,
) -> list[tuple[str, str, str]]:
    """``(panel title, refId, InfluxQL)`` for every visible raw-query target of a dashboard.

    ``time_from``/``time_to`` are datetimes (naive = UTC) or epoch milliseconds.
    ``$__interval`` is Grafana's auto interval for ``max_data_points`` (a panel's
    own ``maxDataPoints`` wins) and at least ``min_interval`` (the panel's own
    ``interval``, or the datasource's "min time interval"); ``interval`` fixes it.
    """
    board = load(dashboard_json)
    values = {**current_values(board), **variables}
    everything = all_values(board)
    from_ms, to_ms = epoch_ms(time_from), epoch_ms(time_to)
    if to_ms < from_ms:
        raise ValueError("time_to is before time_from")
    out: list[tuple[str, str, str]] = []
    for panel in iter_panels(board.get("panels", [])):
        if interval:
            interval_ms = parse_interval(interval)
        else:
            interval_ms = auto_interval_ms(
                from_ms, to_ms, int(panel.get("maxDataPoints") or max_data_points),
                panel.get("interval") or min_interval,
            )
        builtins = builtin_variables(from_ms, to_ms, interval_ms)
        for target in panel.get("targets", []):
            if target.get("hide"):
                continue
            if not target.get("rawQuery"):
                raise ValueError(
                    f"panel {panel.get('title')!r} {target.get('refId')}: only raw InfluxQL "
                    "queries are supported"
                )
            query = interpolate(str(target["query"]), values, builtins, everything)
            out.append((str(panel.get("title", "")), str(target.get("refId", "")), query))
    return out


def variable_queries(
    dashboard_json: Mapping[str, Any] | str | Path,
    variables: Mapping[str, VariableValue] | None = None,
) -> list[tuple[str, str]]:
    """``(variable name, InfluxQL)`` of the dashboard's query variables."""
    board = load(dashboard_json)
    values = {**current_values(board), **(variables or {})}
    out = []
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            text = query if isinstance(query, str) else str(query.get("query", ""))
            out.append((str(variable["name"]), interpolate(text, values, {}, all_values(board))))
    return out
