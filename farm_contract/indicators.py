"""The plan's indicators (contract §8): ids, targets and the shape of a result."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel


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

DEFAULT_STRAW_RATIOS: dict[str, float] = {
    "corn": 1.2,
    "sorghum": 1.3,
    "millet": 1.4,
    "potato": 0.5,
    "oats": 1.3,
    "other": 1.0,
}
"""Straw-to-grain ratios (草谷比) used when ``FARM_STRAW_RATIOS`` does not set a crop."""

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
    met: bool

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
        """Build a result; the value is null and ``met`` false when the denominator is 0."""
        target = TARGETS[indicator]
        value = numerator / denominator if denominator > 0 else None
        met = value is not None and value >= target - 1e-12
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
