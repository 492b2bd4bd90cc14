"""The metric catalog (contract §4): every telemetry metric, its unit and valid range.

Every number ingest stores has a finite maximum, each with the reason for it
(``bound_reason``): a value above one is a broken or hostile device, never a
real reading, and letting it through would make sums overflow (issue 10: one
``mass_t: 1e308`` made the city "met" and a second one made every indicator
query fail). Event masses have per-type maxima too (:data:`EVENT_FIELD_MAXIMA`).
"""

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
    bound_reason: str = ""
    """Why the range is what it is (shown in docs/contract.md §4)."""

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
    Metric(
        "flow_lpm",
        "L/min",
        _DRIP,
        minimum=0,
        maximum=5000,
        description="irrigation flow",
        bound_reason="the largest drip main (DN200 at 2.5 m/s) carries ~4,700 L/min",
    ),
    Metric(
        "volume_m3",
        "m³",
        _DRIP,
        minimum=0,
        maximum=1e9,
        cumulative=True,
        never_decreasing=True,
        description="cumulative irrigation volume",
        bound_reason=(
            "a 100,000 mu site at 300 m³/mu a year uses 3·10⁷ m³; 30 years of one meter "
            "stay below 10⁹ (an 8-digit register rolls over at 10⁸)"
        ),
    ),
    Metric(
        "pressure_kpa",
        "kPa",
        _DRIP,
        minimum=0,
        maximum=1000,
        description="line pressure",
        bound_reason="drip lines are rated to ~400 kPa; 1 MPa is the strongest pipe class",
    ),
    Metric(
        "soil_moisture_vwc",
        "m³/m³",
        _DRIP,
        minimum=0,
        maximum=1,
        description="volumetric soil water content",
        bound_reason="a fraction of the soil volume",
    ),
    Metric(
        "soil_ec_ds_m",
        "dS/m",
        _DRIP,
        minimum=0,
        maximum=20,
        description="soil electrical conductivity",
        bound_reason="saline soils end near 16 dS/m; probes read up to 20",
    ),
    Metric(
        "soil_temp_c",
        "°C",
        _DRIP,
        minimum=-40,
        maximum=80,
        description="soil temperature",
        bound_reason="the probes' operating range",
    ),
    Metric(
        "fertilizer_l",
        "L",
        _DRIP,
        minimum=0,
        maximum=1e9,
        cumulative=True,
        description="cumulative fertigation volume",
        bound_reason="100,000 mu at 100 L/mu a year for 30 years is 3·10⁸ L",
    ),
    Metric("valve_open", "bool", _DRIP, is_bool=True, description="irrigation valve open"),
    Metric(
        "rain_mm",
        "mm",
        _DRIP,
        minimum=0,
        maximum=500,
        description="rainfall",
        bound_reason="the record day in northern China is under 500 mm",
    ),
    Metric(
        "lagoon_level_pct",
        "%",
        _MANURE,
        minimum=0,
        maximum=100,
        description="lagoon or tank fill level",
        bound_reason="a percentage",
    ),
    Metric(
        "digester_temp_c",
        "°C",
        _MANURE,
        minimum=-20,
        maximum=80,
        description="digester temperature",
        bound_reason="thermophilic digesters run at 55 °C; sensors read −20–80",
    ),
    Metric(
        "biogas_m3h",
        "m³/h",
        _MANURE,
        minimum=0,
        maximum=10000,
        description="biogas flow",
        bound_reason="a 10,000 m³/h plant is larger than any in the province",
    ),
    Metric("separator_on", "bool", _MANURE, is_bool=True, description="solid separator running"),
    Metric("pump_on", "bool", _MANURE, is_bool=True, description="slurry pump running"),
    Metric(
        "nh3_ppm",
        "ppm",
        _MANURE,
        minimum=0,
        maximum=1000,
        description="ammonia",
        bound_reason="the sensors' full scale",
    ),
    Metric(
        "h2s_ppm",
        "ppm",
        _MANURE,
        minimum=0,
        maximum=1000,
        description="hydrogen sulphide",
        bound_reason="the sensors' full scale",
    ),
    Metric(
        "bale_moisture_pct",
        "%",
        _STRAW,
        minimum=0,
        maximum=100,
        description="straw bale moisture",
        bound_reason="a percentage",
    ),
    Metric(
        "battery_v",
        "V",
        None,
        minimum=0,
        maximum=60,
        description="device battery voltage",
        bound_reason="a 48 V system charges below 60 V",
    ),
    Metric(
        "rssi_dbm",
        "dBm",
        None,
        minimum=-150,
        maximum=0,
        description="radio signal strength",
        bound_reason="LoRa sensitivity ends near −148 dBm; a signal is never above 0",
    ),
]

CATALOG: dict[str, Metric] = {metric.name: metric for metric in _METRICS}
"""Metric name → :class:`Metric`."""


def metrics_for(site_type: SiteType | str) -> list[Metric]:
    """The metrics a site of ``site_type`` may send, in catalog order."""
    return [metric for metric in _METRICS if metric.allowed_at(site_type)]


@dataclass(frozen=True, slots=True)
class EventFieldBound:
    """The largest value one event may carry in a numeric field, and why."""

    maximum: float
    unit: str
    reason: str


EVENT_FIELD_MAXIMA: dict[tuple[str, str], EventFieldBound] = {
    ("film_applied", "mass_t"): EventFieldBound(
        1_000, "t", "film is ~5 kg/mu: 1,000 t covers 200,000 mu, more than any one site"
    ),
    ("film_applied", "area_mu"): EventFieldBound(
        1_000_000, "mu", "the whole city farms ~6·10⁶ mu; one site is far below 10⁶"
    ),
    ("film_applied", "thickness_mm"): EventFieldBound(
        1, "mm", "mulch film is 0.008–0.02 mm; 1 mm is sheet, not film"
    ),
    ("film_recovered", "mass_t"): EventFieldBound(
        1_000, "t", "no more than a site applies (film_applied mass_t)"
    ),
    ("harvest", "grain_t"): EventFieldBound(
        100_000, "t", "100,000 mu at a record 1 t/mu; one weighing is far less"
    ),
    ("straw_utilized", "mass_t"): EventFieldBound(
        100_000, "t", "no more straw than the largest harvest makes (1.4 × 100,000 t ≈ 10⁵)"
    ),
    ("manure_treated", "mass_t"): EventFieldBound(
        100_000, "t", "a 10,000-head dairy makes ~0.5 t/head a year: 5,000 t; 20 × margin"
    ),
    ("manure_utilized", "mass_t"): EventFieldBound(
        100_000, "t", "no more than a site treats (manure_treated mass_t)"
    ),
}
"""(event type, numeric field) → its maximum. A value above it is rejected
(``out_of_range``) with its event; sums of a year's events then stay far from float
overflow (10⁵ t × 10⁹ events is 10¹⁴)."""

EVENT_FIELD_DEFAULT_MAXIMUM = EventFieldBound(
    1_000_000, "", "no numeric event field is larger than this for any type"
)
"""The maximum of a numeric field an event type carries but does not need (checked if present)."""


def event_field_bound(event_type: str, field: str) -> EventFieldBound:
    """The maximum of ``field`` on an event of ``event_type``."""
    return EVENT_FIELD_MAXIMA.get((event_type, field), EVENT_FIELD_DEFAULT_MAXIMUM)
