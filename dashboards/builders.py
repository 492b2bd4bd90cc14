"""Grafana dashboard pieces as plain Python data: queries, panels, variables, links.

Every dashboard of dashboards/ is built from these functions, so a change of
style (thresholds, legends, table options) is made once. Nothing here knows the
farm schema; the dashboards themselves (city.py, drip.py, …) do. The output is
plain JSON data with fixed ids and layout, so regenerating is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]

DATASOURCE_UID = "farm-influx"
DATASOURCE: Json = {"type": "influxdb", "uid": DATASOURCE_UID}
SCHEMA_VERSION = 39
GRID_WIDTH = 24
DASHBOARD_TAG = "farm"
"""Every farm dashboard carries it; the dashboard links list the others by it."""

TIMEZONE = "Asia/Shanghai"
"""Datong's zone: every dashboard's time zone (an IANA name Grafana accepts besides
``browser`` and ``utc``), so "this year" and day buckets are Datong's for every viewer."""

ALL = "$__all"
"""Grafana's stored value of a variable's "All" option."""


# --- queries ----------------------------------------------------------------------


def ident(name: str) -> str:
    """An InfluxQL identifier (measurement, tag or field name), double-quoted."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value: str) -> str:
    """An InfluxQL string literal, single-quoted."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def target(
    query: str, ref_id: str = "A", alias: str = "", result_format: str = "time_series",
) -> Json:
    """A raw InfluxQL query of a panel."""
    out: Json = {
        "datasource": DATASOURCE,
        "query": query,
        "rawQuery": True,
        "refId": ref_id,
        "resultFormat": result_format,
    }
    if alias:
        out["alias"] = alias
    return out


def table_target(query: str, ref_id: str = "A") -> Json:
    """A raw InfluxQL query whose result Grafana reads as one table (tags become columns)."""
    return target(query, ref_id, result_format="table")


def ref_ids(count: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(count)]


# --- panels -----------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A panel's place on Grafana's 24-column grid."""

    x: int
    y: int
    w: int
    h: int

    def grid_pos(self) -> Json:
        return {"h": self.h, "w": self.w, "x": self.x, "y": self.y}


def thresholds(target_value: float | None, warn_below: float = 0.1) -> Json:
    """Red below target − warn_below, orange up to the target, green from it on."""
    if target_value is None:
        return {"mode": "absolute", "steps": [{"color": "green", "value": None}]}
    return {
        "mode": "absolute",
        "steps": [
            {"color": "red", "value": None},
            {"color": "orange", "value": round(max(0.0, target_value - warn_below), 6)},
            {"color": "green", "value": target_value},
        ],
    }


def steps(*pairs: tuple[str, float | None]) -> Json:
    """Absolute thresholds from ``(colour, from value)`` pairs; the first starts at None."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in pairs]}


def panel(
    kind: str, title: str, box: Box, targets: Sequence[Json], *,
    description: str = "", defaults: Json | None = None, options: Json | None = None,
    overrides: Sequence[Json] = (), transformations: Sequence[Json] = (),
    interval: str = "",
) -> Json:
    """Any panel; ``id`` is set when the dashboard is put together.

    ``interval`` is the panel's minimum ``$__interval`` (e.g. ``1d`` for daily bars).
    """
    out: Json = {
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults or {}, "overrides": list(overrides)},
        "gridPos": box.grid_pos(),
        "options": options or {},
        "targets": list(targets),
        "title": title,
        "type": kind,
    }
    if description:
        out["description"] = description
    if transformations:
        out["transformations"] = list(transformations)
    if interval:
        out["interval"] = interval
    return out


def ratio_defaults(target_value: float | None) -> Json:
    return {
        "decimals": 1,
        "max": 1,
        "min": 0,
        "thresholds": thresholds(target_value),
        "unit": "percentunit",
    }


def _reduce_last(values: bool = False) -> Json:
    return {"calcs": ["lastNotNull"], "fields": "", "values": values}


NO_DATA = "无数据 n/a"
"""What a panel shows where a figure is n/a (denominator 0): never 0, never "not met"."""


def data_link(title: str, url: str) -> Json:
    """A link on a panel's values (click a gauge or a cell), e.g. to a drill-down."""
    return {"targetBlank": False, "title": title, "url": url}


def gauge(
    title: str, box: Box, query: str, target_value: float, description: str = "",
    links: Sequence[Json] = (),
) -> Json:
    """A 0–1 ratio as a gauge, green from ``target_value`` on; null shows :data:`NO_DATA`."""
    defaults = {**ratio_defaults(target_value), "noValue": NO_DATA}
    if links:
        defaults["links"] = list(links)
    return panel(
        "gauge", title, box, [target(query)], description=description,
        defaults=defaults,
        options={
            "minVizHeight": 75,
            "minVizWidth": 75,
            "orientation": "auto",
            "reduceOptions": _reduce_last(),
            "showThresholdLabels": False,
            "showThresholdMarkers": True,
        },
    )


def stat(
    title: str, box: Box, query: str, description: str = "", defaults: Json | None = None,
    overrides: Sequence[Json] = (),
) -> Json:
    """Big numbers of one series' last row, one per selected field; null shows
    :data:`NO_DATA`."""
    return panel(
        "stat", title, box, [target(query)], description=description,
        defaults={"noValue": NO_DATA, **(defaults or {})}, overrides=overrides,
        options={
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": _reduce_last(),
            "textMode": "value_and_name",
        },
    )


def row(title: str, y: int) -> Json:
    """A row header: the panels below it, up to the next row, form a section."""
    return {"collapsed": False, "gridPos": Box(0, y, GRID_WIDTH, 1).grid_pos(), "panels": [],
            "title": title, "type": "row"}


def timeseries(
    title: str, box: Box, targets: Sequence[Json], *, unit: str = "", description: str = "",
    target_line: float | None = None, bars: bool = False, stacked: bool = False,
    ratio: bool = False, threshold_steps: Json | None = None, interval: str = "",
    overrides: Sequence[Json] = (),
) -> Json:
    """A time series panel.

    ``target_line`` draws the target as a dashed threshold line; ``threshold_steps``
    draws any thresholds (e.g. a lagoon's warning and overflow levels) as lines.
    """
    shown = target_line is not None or threshold_steps is not None
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 80 if bars else 10,
        "lineWidth": 1 if bars else 2,
        "pointSize": 4,
        "showPoints": "auto",
        "spanNulls": True,
        "stacking": {"group": "A", "mode": "normal" if stacked else "none"},
        "thresholdsStyle": {"mode": "dashed" if shown else "off"},
    }
    defaults: Json = ratio_defaults(target_line) if ratio else {
        "thresholds": threshold_steps or thresholds(target_line)}
    defaults = {**defaults, "custom": custom}
    if unit:
        defaults["unit"] = unit
    return panel(
        "timeseries", title, box, targets, description=description, defaults=defaults,
        options={
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom",
                       "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        interval=interval, overrides=overrides,
    )


def organize(hide: Iterable[str] = (), rename: Mapping[str, str] | None = None,
             order: Sequence[str] = ()) -> Json:
    """Grafana's "Organize fields" transformation: hide, rename and order columns."""
    return {
        "id": "organize",
        "options": {
            "excludeByName": {name: True for name in hide},
            "indexByName": {name: i for i, name in enumerate(order)},
            "renameByName": dict(rename or {}),
        },
    }


def join_by(field_name: str) -> Json:
    """Grafana's "Join by field" transformation (outer join): one row per ``field_name``."""
    return {"id": "joinByField", "options": {"byField": field_name, "mode": "outer"}}


def sort_by(field_name: str, desc: bool = False) -> Json:
    return {"id": "sortBy", "options": {"fields": {}, "sort": [
        {"desc": desc, "field": field_name}]}}


def divide(left: str, right: str, alias: str) -> Json:
    """Grafana's "Add field from calculation", binary ``left / right`` → ``alias``."""
    return {
        "id": "calculateField",
        "options": {
            "alias": alias,
            "binary": {"left": left, "operator": "/", "right": right},
            "mode": "binary",
            "reduce": {"reducer": "sum"},
        },
    }


def keep_rows(field_name: str, value: str) -> Json:
    """Grafana's "Filter data by values": keep the rows whose ``field_name`` equals ``value``."""
    return {
        "id": "filterByValue",
        "options": {
            "filters": [{"config": {"id": "equal", "options": {"value": value}},
                         "fieldName": field_name}],
            "match": "any",
            "type": "include",
        },
    }


def matrix(rows: str, columns: str, values: str) -> Json:
    """Grafana's "Grouping to matrix": a long table (row, column, value) as a grid."""
    return {"id": "groupingToMatrix", "options": {
        "columnField": columns, "rowField": rows, "valueField": values}}


def table(
    title: str, box: Box, targets: Sequence[Json], *, description: str = "",
    hide: Iterable[str] = ("Time",), rename: Mapping[str, str] | None = None,
    defaults: Json | None = None, overrides: Sequence[Json] = (),
    before: Sequence[Json] = (), sort: tuple[str, bool] | None = None,
) -> Json:
    """A table of ``resultFormat: table`` targets.

    ``before`` transformations run first (joins, calculations); then ``hide``
    drops columns, ``rename`` gives them bilingual headers and ``sort`` orders rows
    by a (renamed) column, descending when its flag is true.
    """
    steps_: list[Json] = [*before, organize(hide, rename)]
    if sort is not None:
        steps_.append(sort_by(*sort))
    return panel(
        "table", title, box, [{**t, "resultFormat": "table"} for t in targets],
        description=description, defaults=defaults, overrides=overrides,
        options={"cellHeight": "sm", "showHeader": True},
        transformations=steps_,
    )


def colored_cells(column: str, unit: str = "", decimals: int | None = None) -> Json:
    """A table override: colour ``column``'s cells by the panel's thresholds."""
    props: list[Json] = [{"id": "custom.cellOptions",
                          "value": {"mode": "basic", "type": "color-background"}}]
    if unit:
        props.append({"id": "unit", "value": unit})
    if decimals is not None:
        props.append({"id": "decimals", "value": decimals})
    return {"matcher": {"id": "byName", "options": column}, "properties": props}


def field_override(column: str, **properties: Any) -> Json:
    """A table or chart override setting ``properties`` (Grafana property ids) on ``column``."""
    return {"matcher": {"id": "byName", "options": column},
            "properties": [{"id": k.replace("__", "."), "value": v}
                           for k, v in sorted(properties.items())]}


def bool_mappings(true_text: str, false_text: str, null_text: str) -> list[Json]:
    """Value mappings that show a boolean as words with colours (green / red / grey)."""
    return [
        {"options": {"false": {"color": "red", "index": 1, "text": false_text},
                     "true": {"color": "green", "index": 0, "text": true_text}},
         "type": "value"},
        {"options": {"match": "null", "result": {"color": "text", "index": 2,
                                                 "text": null_text}},
         "type": "special"},
    ]


def bargauge(
    title: str, box: Box, targets: Sequence[Json], *, description: str = "",
    defaults: Json | None = None, transformations: Sequence[Json] = (),
) -> Json:
    """Horizontal bars, one per row of a table query (values: true) — a ranking."""
    return panel(
        "bargauge", title, box, [{**t, "resultFormat": "table"} for t in targets],
        description=description, defaults=defaults, transformations=transformations,
        options={"displayMode": "gradient", "orientation": "horizontal",
                 "reduceOptions": _reduce_last(values=True), "showUnfilled": True,
                 "valueMode": "color"},
    )


def barchart(
    title: str, box: Box, targets: Sequence[Json], *, x_field: str, description: str = "",
    defaults: Json | None = None, transformations: Sequence[Json] = (), stacked: bool = False,
    overrides: Sequence[Json] = (),
) -> Json:
    """Grouped (or stacked) bars of a table query, one group per ``x_field`` value."""
    return panel(
        "barchart", title, box, [{**t, "resultFormat": "table"} for t in targets],
        description=description, defaults=defaults, transformations=transformations,
        overrides=overrides,
        options={"barWidth": 0.8, "groupWidth": 0.7, "legend": {
            "displayMode": "list", "placement": "bottom", "showLegend": True},
            "orientation": "auto", "showValue": "auto",
            "stacking": "normal" if stacked else "none", "xField": x_field,
            "xTickLabelRotation": 0},
    )


def piechart(
    title: str, box: Box, targets: Sequence[Json], *, description: str = "",
    defaults: Json | None = None,
) -> Json:
    """A donut of a table query's rows (one slice per row)."""
    return panel(
        "piechart", title, box, [{**t, "resultFormat": "table"} for t in targets],
        description=description, defaults=defaults,
        options={"displayLabels": ["name", "percent"],
                 "legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                            "values": ["value", "percent"]},
                 "pieType": "donut", "reduceOptions": _reduce_last(values=True)},
    )


def geojson_layer(name: str, src: str, *, text_field: str = "name") -> Json:
    """A geomap layer drawn from a static GeoJSON file (``src``: a URL Grafana serves,
    e.g. ``public/maps/…``), each point labelled with its ``text_field`` property.

    It needs no query and no internet: it is the map when there are no tiles."""
    return {
        "config": {
            "rules": [],
            "src": src,
            "style": {
                "color": {"fixed": "blue"},
                "opacity": 0.5,
                "size": {"fixed": 6},
                "symbol": {"fixed": "img/icons/marker/square.svg", "mode": "fixed"},
                "text": {"field": text_field, "fixed": "", "mode": "field"},
                "textConfig": {"fontSize": 12, "offsetY": 14, "textAlign": "center"},
            },
        },
        "name": name,
        "opacity": 1,
        "tooltip": False,
        "type": "geojson",
    }


def geomap(
    title: str, box: Box, targets: Sequence[Json], *, color_field: str, center: tuple[float, float],
    zoom: float, description: str = "", transformations: Sequence[Json] = (),
    defaults: Json | None = None, below: Sequence[Json] = (),
) -> Json:
    """Markers at each row's ``lat``/``lon``, coloured by ``color_field``, drawn over the
    ``below`` layers (e.g. :func:`geojson_layer`: Grafana draws its layers in list order).

    The basemap is Grafana's "default" one, which follows the server's
    ``[geomap] default_baselayer_config`` (docker-compose.yml sets it; offline by default).
    """
    layer: Json = {
        "config": {
            "showLegend": True,
            "style": {
                "color": {"field": color_field, "fixed": "dark-green"},
                "opacity": 0.85,
                "size": {"fixed": 8},
                "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"},
                "text": {"field": "name", "fixed": "", "mode": "field"},
                "textConfig": {"fontSize": 10, "offsetY": -12, "textAlign": "center"},
            },
        },
        "location": {"latitude": "lat", "longitude": "lon", "mode": "coords"},
        "name": "Sites / 站点",
        "tooltip": True,
        "type": "markers",
    }
    return panel(
        "geomap", title, box, [{**t, "resultFormat": "table"} for t in targets],
        description=description, defaults=defaults, transformations=transformations,
        options={
            "basemap": {"config": {}, "name": "Basemap", "type": "default"},
            "controls": {"mouseWheelZoom": True, "showAttribution": True, "showZoom": True},
            "layers": [*below, layer],
            "tooltip": {"mode": "details"},
            "view": {"id": "coords", "lat": center[0], "lon": center[1], "zoom": zoom},
        },
    )


# --- variables, links, annotations, the dashboard -----------------------------------


def query_variable(
    name: str, label: str, query: str, default: str, *, include_all: bool = False,
    sort: int = 1,
) -> Json:
    """A single-valued template variable filled by an InfluxQL query when the dashboard loads.

    With ``include_all`` it gets an "All" option whose value is the regex ``.*``
    (so ``=~ /^$name$/`` matches everything) and starts on it. ``sort`` is Grafana's
    option order (1 alphabetical, 4 numerical descending); a ``default`` that is not
    among the options makes Grafana start on the first one.
    """
    current = ({"selected": True, "text": "All", "value": ALL} if include_all
               else {"selected": True, "text": default, "value": default})
    out: Json = {
        "current": current,
        "datasource": DATASOURCE,
        "definition": query,
        "includeAll": include_all,
        "label": label,
        "multi": False,
        "name": name,
        "options": [],
        "query": query,
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "sort": sort,
        "type": "query",
    }
    if include_all:
        out["allValue"] = ".*"
    return out


def custom_variable(name: str, label: str, values: Sequence[str], default: str) -> Json:
    """A single-valued variable with a fixed list of values (e.g. the indicator ids)."""
    return {
        "current": {"selected": True, "text": default, "value": default},
        "includeAll": False,
        "label": label,
        "multi": False,
        "name": name,
        "options": [{"selected": v == default, "text": v, "value": v} for v in values],
        "query": ",".join(values),
        "skipUrlSync": False,
        "type": "custom",
    }


def dashboard_links() -> list[Json]:
    """A row of links to every farm dashboard, carrying the time range and the variables."""
    return [{
        "asDropdown": False,
        "icon": "external link",
        "includeVars": True,
        "keepTime": True,
        "tags": [DASHBOARD_TAG],
        "targetBlank": False,
        "title": "Farm dashboards / 农业看板",
        "type": "dashboards",
    }]


def annotation(name: str, query: str, color: str, tags_column: str = "") -> Json:
    """Events drawn on every time series of the dashboard (an InfluxQL annotation query)."""
    return {
        "datasource": DATASOURCE,
        "enable": True,
        "iconColor": color,
        "name": name,
        "query": query,
        "tagsColumn": tags_column,
        "textColumn": "",
        "titleColumn": "",
    }


def dashboard(
    uid: str, title: str, panels: Sequence[Json], *, variables: Sequence[Json] = (),
    description: str = "", tags: Sequence[str] = (DASHBOARD_TAG,), time_from: str = "now-7d",
    refresh: str = "1m", annotations: Sequence[Json] = (),
) -> Json:
    """A whole dashboard; panels get ids 1, 2, … in order."""
    numbered = [{**p, "id": i} for i, p in enumerate(panels, start=1)]
    return {
        "annotations": {"list": list(annotations)},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": dashboard_links(),
        "panels": numbered,
        "refresh": refresh,
        "schemaVersion": SCHEMA_VERSION,
        "tags": list(tags),
        "templating": {"list": list(variables)},
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": TIMEZONE,
        "title": title,
        "uid": uid,
        "version": 1,
    }
