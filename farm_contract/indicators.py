"""The plan's indicators (contract §8): ids, targets and the shape of a result."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


class IndicatorId(StrEnum):
    MANURE_FACILITY_RATE = "manure_facility_rate"
    MANURE_LEDGER_COVERAGE = "manure_ledger_coverage"
    FILM_RECOVERY_RATE = "film_recovery_rate"
    STRAW_UTILIZATION_RATE = "straw_utilization_rate"


TARGETS: dict[IndicatorId, float] = {
    IndicatorId.MANURE_FACILITY_RATE: 0.98,
    IndicatorId.MANURE_LEDGER_COVERAGE: 1.0,
    IndicatorId.FILM_RECOVERY_RATE: 0.85,
    IndicatorId.STRAW_UTILIZATION_RATE: 0.90,
}

FORMULAS: dict[IndicatorId, str] = {
    IndicatorId.MANURE_FACILITY_RATE: "manure_facility_rate/2",
    IndicatorId.MANURE_LEDGER_COVERAGE: "manure_ledger_coverage/2",
    IndicatorId.FILM_RECOVERY_RATE: "film_recovery_rate/2",
    IndicatorId.STRAW_UTILIZATION_RATE: "straw_utilization_rate/2",
}
"""The version id of each definition (docs/indicators.md); a changed definition gets a new one."""

Scope = Literal["city", "county"]


class IndicatorValue(BaseModel):
    """One indicator for one scope and year, as the API serves it."""

    indicator: IndicatorId
    scope: Scope
    county: str | None
    year: int
    value: float | None
    numerator: float
    denominator: float
    target: float
    met: bool | None
    """Null when the value is (n/a: nothing to measure, shown as "无数据 n/a")."""
    computed_at: datetime | None = None
    """When the figure was computed (UTC)."""
    formula: str = ""
    """The definition's version id, e.g. ``straw_utilization_rate/2``: docs/indicators.md."""
    parameters: dict[str, float | str] = Field(default_factory=dict)
    """Every parameter the figure used (ratios, coefficients, thresholds), by name."""
    source: str = ""
    """Where the numbers came from: ``raw``, ``rollup``, ``rollup+raw`` or ``closed``."""
    coverage: float | None = None
    """Registered sites that reported in the year ÷ registered sites (null: none registered)."""
    flags: list[str] = Field(default_factory=list)
    """Data-quality flags, e.g. ``above_100_percent``: shown wherever the figure is."""
    quality: dict[str, float | str | None] = Field(default_factory=dict)
    """Data-quality figures the row carries, e.g. the film rows' ``thin_film_share`` (applied
    film below the 0.01 mm standard) and the city straw row's ``uncapped_numerator``."""
    closed: bool = False
    """The year is closed: this is the frozen figure (contract §8)."""

    @classmethod
    def of(
        cls,
        indicator: IndicatorId,
        scope: Scope,
        county: str | None,
        year: int,
        numerator: float,
        denominator: float,
    ) -> IndicatorValue:
        """Build a result; the value and ``met`` are null when the denominator is 0."""
        target = TARGETS[indicator]
        value = numerator / denominator if denominator > 0 else None
        met = None if value is None else value >= target - 1e-12
        return cls(
            indicator=indicator,
            scope=scope,
            county=county,
            year=year,
            value=value,
            numerator=numerator,
            denominator=denominator,
            target=target,
            met=met,
        )


class Member(BaseModel):
    """One site's part in a figure: the figure's numerator and denominator are the sums
    of its members' (``GET /api/v1/indicators/{indicator}/members``)."""

    indicator: IndicatorId
    year: int
    county: str
    site_id: str
    name: str
    numerator: float
    denominator: float
    status: str | None = None
    """For the facility rate: ``equipped`` or ``not_equipped``; else null."""
    detail: dict[str, float | int | str | None] = Field(default_factory=dict)
    """Why: for the facility rate ``days_reported``, ``longest_open_fault_days``,
    ``last_reading``; for others what the site contributed (e.g. ``grain_t``, ``crop``)."""
