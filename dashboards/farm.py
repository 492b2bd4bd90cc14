"""What every farm dashboard shares: the county and site variables and their filters.

The ``county`` variable is the same on every dashboard — the ``county`` tag values
of the ``indicator`` measurement, i.e. the registry's counties plus ``all`` (the
whole city) — so a dashboard link carries the choice over unchanged. ``all``
is a real tag value only on indicator points; elsewhere it must match every
county, which :func:`county_filter` does with a literal comparison that
InfluxQL reduces before it reads any data (``'all' = 'all'`` is true).

The ``site`` variable lists the sites of the chosen county (from the ``site``
measurement, the registry facts ingest writes) and has an "All" option whose
value is the regex ``.*``.
"""

from __future__ import annotations

from dashboards.builders import Json, ident, literal, query_variable
from farm_contract import schema
from farm_contract.schema import SITE as SITE_MEASUREMENT

COUNTY = "county"
SITE = "site"
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


def county_variable() -> Json:
    return query_variable(
        COUNTY, "County / 区县 (all = city 全市)",
        f"SHOW TAG VALUES FROM {ident(schema.INDICATOR)} WITH KEY = {ident('county')}",
        schema.CITY_COUNTY_TAG,
    )


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
