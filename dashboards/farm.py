"""What every farm dashboard shares: the county and site variables and their filters.

The ``county`` variable is the same on every dashboard — the ``county`` tag values
of the ``indicator`` measurement, i.e. the registry's counties plus ``all`` (the
whole city) — so a dashboard link carries the choice over unchanged. ``all``
is a real tag value only on indicator points; elsewhere it must match every
county, which :func:`county_filter` does with a literal comparison that
InfluxQL reduces before it reads any data (``'all' = 'all'`` is true).

The ``year`` variable lists the ``period`` tag values of ``indicator`` (every year the
service published, newest first, starting on the newest); ``county`` lists the counties
of that year's published rows, so it follows the registry the figures were computed with.
Indicator panels read the latest published row of ``$year`` (:func:`latest_published`),
whatever the time range: a figure that became n/a shows empty, never an older value
and never 0.

The ``site`` variable lists the sites of the chosen county (from the ``site``
measurement, the registry facts ingest writes) and has an "All" option whose
value is the regex ``.*``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dashboards.builders import Json, ident, literal, query_variable
from farm_contract import schema
from farm_contract.schema import SITE as SITE_MEASUREMENT

COUNTY = "county"
SITE = "site"
YEAR = "year"
PERIOD = "period"
"""The tag of ``indicator`` / ``indicator_member`` points holding the year (contract §9)."""
ALWAYS_PRESENT = "denominator"
"""A field every ``indicator`` and ``indicator_member`` point has: selecting it with a
nullable one keeps the latest row even where that one is null (n/a)."""
DATONG = (40.08, 113.3)
"""Roughly the middle of Datong's counties, where the maps open."""


def county_filter() -> str:
    """``$county`` picks one county; ``all`` picks every county."""
    return (f"({ident('county')} =~ /^${COUNTY}$/ OR "
            f"{literal('$' + COUNTY)} = {literal(schema.CITY_COUNTY_TAG)})")


def site_filter() -> str:
    """``$site`` picks one site; its "All" option (``.*``) every site."""
    return f"{ident('site_id')} =~ /^${SITE}$/"


def scope_filter(site_type: str | None = None) -> str:
    """County and site filters, and the site type when given, joined by AND."""
    parts = [county_filter(), site_filter()]
    if site_type is not None:
        parts.insert(0, f"{ident('site_type')} = {literal(site_type)}")
    return " AND ".join(parts)


def year_filter() -> str:
    """The rows of the year chosen by ``$year`` (a tag: the viewer's time zone plays no part)."""
    return f"{ident(PERIOD)} = {literal('$' + YEAR)}"


def year_variable() -> Json:
    """Every published year, newest first; Grafana starts on the newest."""
    return query_variable(
        YEAR, "Year / 年度",
        f"SHOW TAG VALUES FROM {ident(schema.INDICATOR)} WITH KEY = {ident(PERIOD)}",
        "", sort=4,
    )


def county_variable() -> Json:
    """The counties of ``$year``'s published rows and ``all``; it must follow ``year``."""
    return query_variable(
        COUNTY, "County / 区县 (all = city 全市)",
        f"SHOW TAG VALUES FROM {ident(schema.INDICATOR)} WITH KEY = {ident('county')}"
        f" WHERE {year_filter()}",
        schema.CITY_COUNTY_TAG,
    )


def scope_variables() -> list[Json]:
    """``year`` then ``county``, in that order (Grafana fills them in list order)."""
    return [year_variable(), county_variable()]


def latest_published(
    measurement: str, columns: Mapping[str, str], where: str, group: Sequence[str] = (),
    always: str = ALWAYS_PRESENT,
) -> str:
    """The latest published row of each series: the figure as the service last computed it.

    ``columns`` maps a field to its name in the result. An inner query takes each
    series' latest point with :data:`ALWAYS_PRESENT`, so a field left out of that point
    (n/a) comes back null instead of an older point's value, as ``last()`` would give.
    No time bound: ``where`` picks the year (``$year``), and a viewer who sets the time
    range to that year (to read its events) must still see its figures, which were
    published later. ``always`` is a field every point of ``measurement`` has.
    """
    grouped = f" GROUP BY {', '.join(ident(g) for g in group)}" if group else ""
    inner_fields = list(columns)
    if always not in inner_fields:
        inner_fields.append(always)
    inner = (f"SELECT {', '.join(ident(f) for f in inner_fields)} FROM {ident(measurement)}"
             f" WHERE {where}{grouped} ORDER BY time DESC LIMIT 1")
    outer = ", ".join(ident(f) if f == name else f"{ident(f)} AS {ident(name)}"
                      for f, name in columns.items())
    return f"SELECT {outer} FROM ({inner}){grouped} ORDER BY time DESC"


def site_variable(site_type: str | None, label: str = "Site / 站点") -> Json:
    """The sites of ``$county`` (of one type, when given), with an "All" option."""
    where = county_filter()
    if site_type is not None:
        where = f"{ident('site_type')} = {literal(site_type)} AND {where}"
    return query_variable(
        SITE, label,
        f"SHOW TAG VALUES FROM {ident(SITE_MEASUREMENT)} WITH KEY = {ident('site_id')}"
        f" WHERE {where}",
        "", include_all=True,
    )
