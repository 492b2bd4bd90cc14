"""The indicators' published parameters, shipped as data (``farm_contract/params/*.toml``).

Straw-to-grain ratios and collectable coefficients (with the source of each value) and the
list of county-level divisions are data an official checks and another city replaces, so
they live in files read with :mod:`tomllib`, not in code (docs/indicators.md).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

STRAW_FILE = "straw.toml"
COUNTIES_FILE = "counties.toml"
NO_SOURCE = "unsourced, to be confirmed"


def _read(path: Path | None, shipped: str) -> dict[str, Any]:
    if path is None:
        text = resources.files("farm_contract.params").joinpath(shipped).read_text("utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path or shipped}: {exc}") from None


@dataclass(frozen=True, slots=True)
class CropParams:
    """One crop's factors: collectable straw = grain × ``ratio`` × ``coefficient``."""

    ratio: float
    coefficient: float
    ratio_source: str = NO_SOURCE
    coefficient_source: str = NO_SOURCE

    @property
    def factor(self) -> float:
        return self.ratio * self.coefficient


def _crop(name: str, raw: dict[str, Any], base: CropParams | None) -> CropParams:
    ratio = float(raw.get("ratio", base.ratio if base else 0.0))
    coefficient = float(raw.get("coefficient", base.coefficient if base else 0.0))
    if ratio <= 0 or not 0 < coefficient <= 1:
        raise ValueError(f"straw parameters of {name}: ratio must be > 0 and 0 < coefficient ≤ 1")
    return CropParams(
        ratio, coefficient,
        str(raw.get("ratio_source", base.ratio_source if base and "ratio" not in raw
                    else NO_SOURCE)),
        str(raw.get("coefficient_source", base.coefficient_source
                    if base and "coefficient" not in raw else NO_SOURCE)),
    )


@dataclass(frozen=True, slots=True)
class StrawParams:
    """Per-crop defaults and per-county overrides."""

    crops: dict[str, CropParams]
    counties: dict[str, dict[str, CropParams]] = field(default_factory=dict)

    def of(self, county: str | None, crop: str) -> CropParams:
        """The factors for ``crop`` in ``county`` (unknown crops count as ``other``)."""
        name = crop if crop in self.crops else "other"
        if county is not None and name in self.counties.get(county, {}):
            return self.counties[county][name]
        return self.crops[name]

    def parameters(self, county: str | None) -> dict[str, float | str]:
        """The values a figure of ``county`` (None: the city) used, by name."""
        out: dict[str, float | str] = {}
        for crop in self.crops:
            params = self.of(county, crop)
            out[f"straw_ratio.{crop}"] = params.ratio
            out[f"collectable_coefficient.{crop}"] = params.coefficient
        if county is None:
            for name, crops in sorted(self.counties.items()):
                for crop, params in crops.items():
                    out[f"{name}.straw_ratio.{crop}"] = params.ratio
                    out[f"{name}.collectable_coefficient.{crop}"] = params.coefficient
        return out


def load_straw(path: Path | None = None, ratios: dict[str, float] | None = None) -> StrawParams:
    """The straw parameters of ``path`` (None: the shipped file); ``ratios`` override the
    city-wide ratios (``FARM_STRAW_RATIOS``)."""
    raw = _read(path, STRAW_FILE)
    crops = {name: _crop(name, values, None) for name, values in raw.get("crops", {}).items()}
    if "other" not in crops:
        raise ValueError(f"{path or STRAW_FILE}: crops.other is required")
    for name, ratio in (ratios or {}).items():
        if name not in crops:
            raise ValueError(f"unknown crop {name!r}")
        if ratio != crops[name].ratio:  # the file's own value keeps its source
            crops[name] = _crop(name, {"ratio": ratio, "ratio_source": "FARM_STRAW_RATIOS"},
                                crops[name])
    counties = {
        county: {crop: _crop(f"{county}/{crop}", values, crops.get(crop, crops["other"]))
                 for crop, values in table.items()}
        for county, table in raw.get("counties", {}).items()
    }
    return StrawParams(crops, counties)


@dataclass(frozen=True, slots=True)
class Seat:
    """A division's code (simulated site ids) and approximate centre (its county seat)."""

    code: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Divisions:
    """A city's county-level divisions, always listed, in official order."""

    city: str
    counties: tuple[str, ...]
    seats: dict[str, Seat] = field(default_factory=dict)
    """Division → its seat, for the divisions the file gives one."""

    def listed(self, named: list[str]) -> list[str]:
        """These counties, then any other county ``named`` (the registry's), sorted."""
        return [*self.counties, *sorted(set(named) - set(self.counties))]


def load_divisions(path: Path | None = None) -> Divisions:
    raw = _read(path, COUNTIES_FILE)
    counties = raw.get("counties")
    if not isinstance(counties, list) or not all(isinstance(c, str) and c for c in counties):
        raise ValueError(f"{path or COUNTIES_FILE}: counties must be a list of names")
    seats: dict[str, Seat] = {}
    for name, seat in raw.get("seats", {}).items():
        try:
            seats[name] = Seat(str(seat["code"]), float(seat["lat"]), float(seat["lon"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path or COUNTIES_FILE}: seats.{name} needs code, lat and lon"
                             ) from None
    return Divisions(str(raw.get("city", "")), tuple(counties), seats)
