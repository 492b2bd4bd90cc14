"""Scenario files: which sites exist where, and the outcomes the year must produce.

A scenario declares its outcomes (how many large-scale farms are not equipped,
the film recovery fraction, …) rather than leaving them to chance, so a test
can assert exactly what ingest must compute from what the fleet sends.
"""

from __future__ import annotations

import tomllib
from fractions import Fraction
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from farm_contract.indicator_params import Seat, load_divisions
from farm_contract.indicators import IndicatorId

SCENARIO_DIR = Path(__file__).parent / "scenarios"


CountyGeo = Seat
"""A county's id code (used in site ids) and its approximate centre."""

COUNTIES: dict[str, CountyGeo] = load_divisions().seats
"""Datong's counties and districts (the plan's reporting units), from
``farm_contract/params/counties.toml``."""

def exact(value: float) -> Fraction:
    """A declared decimal fraction as the exact fraction it was written as (0.85 → 17/20)."""
    return Fraction(repr(value))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CountySpec(_Strict):
    """One county: how many sites of each kind, and the outcomes it must show."""

    name: str
    drip: int = Field(default=0, ge=0, le=60)
    manure_large: int = Field(default=0, ge=0, le=60)
    manure_small: int = Field(default=0, ge=0, le=60)
    straw: int = Field(default=0, ge=0, le=60)
    not_equipped_fault: int = Field(default=0, ge=0)
    """Large-scale farms with a facility fault open from autumn to year end (> 30 days)."""
    not_equipped_silent: int = Field(default=0, ge=0)
    """Large-scale farms whose devices report on the year's first ``silent_farm_days`` days
    only (fewer than the 30 an equipped farm needs)."""
    no_ledger: int = Field(default=0, ge=0)
    """Large-scale farms that record no manure_treated / manure_utilized event."""
    film_recovery: float | None = Field(default=None, ge=0, le=1)
    straw_utilization: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.name not in COUNTIES:
            raise ValueError(f"county {self.name!r} is not one of {', '.join(COUNTIES)}")
        if self.not_equipped_fault + self.not_equipped_silent > self.manure_large:
            raise ValueError("not_equipped_fault + not_equipped_silent exceeds manure_large")
        if self.no_ledger > self.manure_large:
            raise ValueError("no_ledger exceeds manure_large")
        return self

    @property
    def geo(self) -> CountyGeo:
        return COUNTIES[self.name]


class Faults(_Strict):
    """Faults injected on top of the normal year; counted separately in the report."""

    bad_json: int = Field(default=0, ge=0)
    """Telemetry payloads that are not JSON (truncated, NaN, text)."""
    out_of_range: int = Field(default=0, ge=0)
    """Telemetry payloads whose only reading is outside its catalog range."""
    duplicate_telemetry: int = Field(default=0, ge=0)
    """Telemetry messages published twice (same seq and ts)."""
    duplicate_events: int = Field(default=0, ge=0)
    """Events published twice (same seq and ts)."""
    silence_windows: int = Field(default=0, ge=0)
    """Mid-year windows in which one device sends no telemetry."""
    silence_hours: float = Field(default=72, gt=0, le=24 * 30)
    skewed_devices: int = Field(default=0, ge=0)
    """Devices whose clock is off by ``skew_s`` (alternately ahead and behind)."""
    skew_s: float = Field(default=90, ge=0, le=300)


class Scenario(_Strict):
    """A fleet and its year. Fractions are exact: 0.85 means 17/20."""

    name: str
    description: str = ""
    seed: int
    year: int = Field(ge=2000, le=2100)
    telemetry_interval_h: float = Field(default=12, gt=0, le=24)
    """Backfill telemetry interval (simulated time)."""
    live_interval_s: float = Field(default=5, gt=0)
    """Live-mode telemetry interval (real time)."""
    silent_farm_days: int = Field(default=20, ge=1, le=29)
    """The ``not_equipped_silent`` farms report on the year's first this many days, then
    fall silent: fewer than the 30 days (``FARM_FACILITY_MIN_DAYS``) an equipped farm needs."""
    film_recovery: float = Field(default=0.85, ge=0, le=1)
    straw_utilization: float = Field(default=0.9, ge=0, le=1)
    counties: list[CountySpec] = Field(min_length=1)
    faults: Faults = Faults()

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        names = [county.name for county in self.counties]
        if len(set(names)) != len(names):
            raise ValueError("a county is listed twice")
        for county in self.counties:
            for fraction in (self.film_for(county), self.straw_for(county)):
                if fraction.denominator > 1000:
                    raise ValueError(f"{county.name}: use at most three decimals for fractions")
        return self

    def film_for(self, county: CountySpec) -> Fraction:
        return exact(county.film_recovery if county.film_recovery is not None
                     else self.film_recovery)

    def straw_for(self, county: CountySpec) -> Fraction:
        return exact(county.straw_utilization if county.straw_utilization is not None
                     else self.straw_utilization)

    def declared(self) -> dict[tuple[IndicatorId, str | None], Fraction | None]:
        """The outcomes the scenario declares, per county and (where determined) city.

        Manure indicators are counts, so the city value is always determined. Film
        and straw fractions are declared per county; the city value is declared only
        when every county with such sites has the same fraction.
        """
        out: dict[tuple[IndicatorId, str | None], Fraction | None] = {}
        total_large = total_equipped = total_ledger = 0
        films: set[Fraction] = set()
        straws: set[Fraction] = set()
        for county in self.counties:
            large = county.manure_large
            equipped = large - county.not_equipped_fault - county.not_equipped_silent
            ledger = large - county.no_ledger
            total_large += large
            total_equipped += equipped
            total_ledger += ledger
            out[IndicatorId.MANURE_FACILITY_RATE, county.name] = (
                Fraction(equipped, large) if large else None)
            out[IndicatorId.MANURE_LEDGER_COVERAGE, county.name] = (
                Fraction(ledger, large) if large else None)
            film = self.film_for(county) if county.drip else None
            straw = self.straw_for(county) if county.straw else None
            out[IndicatorId.FILM_RECOVERY_RATE, county.name] = film
            out[IndicatorId.STRAW_UTILIZATION_RATE, county.name] = straw
            films |= {film} if film is not None else set()
            straws |= {straw} if straw is not None else set()
        out[IndicatorId.MANURE_FACILITY_RATE, None] = (
            Fraction(total_equipped, total_large) if total_large else None)
        out[IndicatorId.MANURE_LEDGER_COVERAGE, None] = (
            Fraction(total_ledger, total_large) if total_large else None)
        out[IndicatorId.FILM_RECOVERY_RATE, None] = films.pop() if len(films) == 1 else None
        out[IndicatorId.STRAW_UTILIZATION_RATE, None] = straws.pop() if len(straws) == 1 else None
        return out


class ScenarioError(ValueError):
    """A scenario that cannot be found or does not validate."""


def scenario_names() -> list[str]:
    """The scenarios shipped in ``simulators/scenarios``."""
    return sorted(path.stem for path in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a scenario by name (file stem in ``simulators/scenarios``) or by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SCENARIO_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ScenarioError(
            f"no scenario {str(name_or_path)!r}; shipped: {', '.join(scenario_names())}"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return Scenario.model_validate(data)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or '(file)'}: {item['msg']}"
            for item in exc.errors()
        )
        raise ScenarioError(f"{path}: {problems}") from None
