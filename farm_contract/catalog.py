"""The metric catalog (contract §4): every telemetry metric, its unit and valid range."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class SiteType(StrEnum):
    """The three kinds of field site the plan's indicators are measured at."""

    DRIP = "drip"
    MANURE = "manure"
    STRAW = "straw"


@dataclass(frozen=True, slots=True)
class Metric:
    """One telemetry metric. ``site_types`` is None for metrics any site may send."""

    name: str
    unit: str
    site_types: frozenset[SiteType] | None
    is_bool: bool = False
    minimum: float | None = None
    maximum: float | None = None
    cumulative: bool = False
    never_decreasing: bool = False
    description: str = ""

    def allowed_at(self, site_type: SiteType | str) -> bool:
        """Whether a site of ``site_type`` may report this metric."""
        return self.site_types is None or SiteType(site_type) in self.site_types

    def check(self, value: object) -> str | None:
        """Return why ``value`` is not valid for this metric, or None if it is."""
        if self.is_bool:
            if not isinstance(value, bool):
                return f"{self.name} must be a boolean, got {type(value).__name__}"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{self.name} must be a number, got {type(value).__name__}"
        try:
            number = float(value)
        except OverflowError:
            return f"{self.name}={value} is out of range"
        if not math.isfinite(number):
            return f"{self.name} must be finite, got {value}"
        if self.minimum is not None and number < self.minimum:
            return f"{self.name}={value} is below its minimum {self.minimum:g} {self.unit}"
        if self.maximum is not None and number > self.maximum:
            return f"{self.name}={value} is above its maximum {self.maximum:g} {self.unit}"
        return None


_DRIP = frozenset({SiteType.DRIP})
_MANURE = frozenset({SiteType.MANURE})
_STRAW = frozenset({SiteType.STRAW})

_METRICS = [
    Metric("flow_lpm", "L/min", _DRIP, minimum=0, maximum=5000, description="irrigation flow"),
    Metric(
        "volume_m3",
        "m³",
        _DRIP,
        minimum=0,
        cumulative=True,
        never_decreasing=True,
        description="cumulative irrigation volume",
    ),
    Metric("pressure_kpa", "kPa", _DRIP, minimum=0, maximum=1000, description="line pressure"),
    Metric(
        "soil_moisture_vwc",
        "m³/m³",
        _DRIP,
        minimum=0,
        maximum=1,
        description="volumetric soil water content",
    ),
    Metric(
        "soil_ec_ds_m",
        "dS/m",
        _DRIP,
        minimum=0,
        maximum=20,
        description="soil electrical conductivity",
    ),
    Metric("soil_temp_c", "°C", _DRIP, minimum=-40, maximum=80, description="soil temperature"),
    Metric(
        "fertilizer_l",
        "L",
        _DRIP,
        minimum=0,
        cumulative=True,
        description="cumulative fertigation volume",
    ),
    Metric("valve_open", "bool", _DRIP, is_bool=True, description="irrigation valve open"),
    Metric("rain_mm", "mm", _DRIP, minimum=0, maximum=500, description="rainfall"),
    Metric(
        "lagoon_level_pct",
        "%",
        _MANURE,
        minimum=0,
        maximum=100,
        description="lagoon or tank fill level",
    ),
    Metric(
        "digester_temp_c",
        "°C",
        _MANURE,
        minimum=-20,
        maximum=80,
        description="digester temperature",
    ),
    Metric("biogas_m3h", "m³/h", _MANURE, minimum=0, maximum=10000, description="biogas flow"),
    Metric("separator_on", "bool", _MANURE, is_bool=True, description="solid separator running"),
    Metric("pump_on", "bool", _MANURE, is_bool=True, description="slurry pump running"),
    Metric("nh3_ppm", "ppm", _MANURE, minimum=0, maximum=1000, description="ammonia"),
    Metric("h2s_ppm", "ppm", _MANURE, minimum=0, maximum=1000, description="hydrogen sulphide"),
    Metric(
        "bale_moisture_pct", "%", _STRAW, minimum=0, maximum=100, description="straw bale moisture"
    ),
    Metric("battery_v", "V", None, minimum=0, maximum=60, description="device battery voltage"),
    Metric("rssi_dbm", "dBm", None, minimum=-150, maximum=0, description="radio signal strength"),
]

CATALOG: dict[str, Metric] = {metric.name: metric for metric in _METRICS}
"""Metric name → :class:`Metric`."""


def metrics_for(site_type: SiteType | str) -> list[Metric]:
    """The metrics a site of ``site_type`` may send, in catalog order."""
    return [metric for metric in _METRICS if metric.allowed_at(site_type)]
