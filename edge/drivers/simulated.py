"""Simulated field devices: believable readings that are a pure function of (seed, time).

Every reading is computed from the timestamp passed in, never from wall-clock
time or call history, so a device gives the same value for the same instant in
real time, in a fast year-long backfill, or after a restart. Cumulative
counters (``volume_m3``, ``fertilizer_l``) are prefix sums over a fixed origin
day, so they can never decrease however the driver is polled. Randomness comes
from a keyed hash of the seed (not :func:`hash`, which Python salts per process).
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from pydantic import Field

from edge.config_section import ConfigSection
from edge.drivers.base import DriverEvent, Readings
from farm_contract.catalog import CATALOG, SiteType, metrics_for
from farm_contract.payloads import (
    Crop,
    EventType,
    Facility,
    ManureUse,
    StrawUse,
)

LOCAL = timedelta(hours=8)
"""Asia/Shanghai has had no daylight saving since 1991: local time is UTC+8."""

ORIGIN = date(2020, 1, 1)
"""Day 0 of the cumulative counters (local calendar)."""

FILM_T_PER_MU_MM = 666.67 * 0.92 / 1000
"""Tonnes of polyethylene film per mu per mm of thickness (density 0.92 t/m³)."""

_STRAW_YIELD_T_PER_MU: dict[Crop, float] = {
    Crop.CORN: 0.55, Crop.SORGHUM: 0.4, Crop.MILLET: 0.25, Crop.POTATO: 1.5,
    Crop.OATS: 0.15, Crop.OTHER: 0.3,
}


def unit(seed: int, *key: object) -> float:
    """A uniform number in [0, 1) from the seed and a key, stable across processes."""
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def noise(seed: int, *key: object) -> float:
    """A triangular number in (-1, 1) centred on 0."""
    return unit(seed, "a", *key) + unit(seed, "b", *key) - 1.0


def _local(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("drivers need an aware datetime")
    return (now.astimezone(UTC) + LOCAL).replace(tzinfo=None)


def _day_index(local: datetime) -> int:
    return (local.date() - ORIGIN).days


def _hour(local: datetime) -> float:
    return local.hour + local.minute / 60 + local.second / 3600


def _season(local: datetime) -> float:
    """1 at the height of summer (ET, warmth), 0 in deep winter."""
    doy = local.timetuple().tm_yday
    return 0.5 + 0.5 * math.cos(2 * math.pi * (doy - 195) / 365)


def _clamp(name: str, value: float) -> float:
    metric = CATALOG[name]
    if metric.minimum is not None:
        value = max(metric.minimum, value)
    if metric.maximum is not None:
        value = min(metric.maximum, value)
    return float(round(value, 3))


@dataclass(frozen=True, slots=True)
class _Run:
    """One day's irrigation run, local hours."""

    start_h: float
    hours: float
    flow_lpm: float
    fert_lpm: float

    @property
    def volume_m3(self) -> float:
        return self.flow_lpm * self.hours * 60 / 1000

    @property
    def fert_l(self) -> float:
        return self.fert_lpm * self.hours * 60


@dataclass(frozen=True, slots=True)
class _Rain:
    start_h: float
    hours: float
    mm: float


_RAIN_CHANCE = (0.02, 0.03, 0.05, 0.08, 0.14, 0.2, 0.3, 0.3, 0.15, 0.08, 0.04, 0.02)


class SimulatedDriver:
    """A simulated drip, manure or straw site device (see the module docstring).

    ``schedule`` gives the events the device will report (each with a ``ts``);
    without it the driver makes a modest seasonal schedule of its own. ``metrics``
    limits the readings to a subset (a soil probe sends soil metrics only), and
    ``unit_no`` tells apart devices at the same site (radio, battery).
    """

    def __init__(
        self,
        site_type: SiteType | str,
        seed: int,
        *,
        area_mu: float | None = None,
        large_scale: bool = True,
        metrics: list[str] | None = None,
        unit_no: int = 1,
        schedule: list[DriverEvent] | None = None,
    ) -> None:
        self.site_type = SiteType(site_type)
        self.seed = seed
        self.unit_no = unit_no
        self.large_scale = large_scale
        self.area_mu = area_mu if area_mu is not None else round(100 + 700 * unit(seed, "area"))
        allowed = [metric.name for metric in metrics_for(self.site_type)]
        if metrics is None:
            self.metrics = allowed
        else:
            wrong = [name for name in metrics if name not in allowed]
            if wrong:
                raise ValueError(
                    f"metric(s) {', '.join(wrong)} not sent by {self.site_type.value} sites"
                )
            self.metrics = [name for name in allowed if name in set(metrics)]
        self._schedule = sorted(schedule, key=lambda e: e["ts"]) if schedule is not None else None
        self._own_years: dict[int, list[DriverEvent]] = {}
        self._last_events: datetime | None = None
        self._runs: dict[int, _Run | None] = {}
        self._rains: dict[int, _Rain | None] = {}
        self._prefix_volume = [0.0]
        self._prefix_fert = [0.0]
        self._base_flow = min(4800.0, self.area_mu * 5.5)

    # -- the driver interface ------------------------------------------------------------

    def read(self, now: datetime) -> Readings:
        """All of this device's metrics at ``now``, inside their catalog ranges."""
        local = _local(now)
        values: dict[str, float | bool]
        if self.site_type is SiteType.DRIP:
            values = self._drip(local)
        elif self.site_type is SiteType.MANURE:
            values = self._manure(local)
        else:
            values = self._straw(local)
        values.update(self._radio(local))
        return {
            name: value if isinstance(value, bool) else _clamp(name, value)
            for name, value in values.items()
            if name in self.metrics
        }

    def events(self, now: datetime) -> list[DriverEvent]:
        """Scheduled events with ``previous call < ts <= now``.

        With an explicit schedule the first call returns everything up to ``now``
        (a backfill starts before its first event); the driver's own schedule
        starts at the first call, so a real-time agent does not replay the past.
        """
        last, self._last_events = self._last_events, now
        if self._schedule is not None:
            times = [event["ts"] for event in self._schedule]
            lo = 0 if last is None else bisect_right(times, last)
            return self._schedule[lo:bisect_right(times, now)]
        if last is None or now <= last:
            return []
        found: list[DriverEvent] = []
        for year in range(_local(last).year, _local(now).year + 1):
            found += [e for e in self._own_schedule(year) if last < e["ts"] <= now]
        return found

    def close(self) -> None:
        """Nothing to release."""

    # -- drip ----------------------------------------------------------------------------

    def _run(self, day: int) -> _Run | None:
        if day not in self._runs:
            doy = (ORIGIN + timedelta(days=day)).timetuple().tm_yday
            run = None
            if 110 <= doy <= 260 and unit(self.seed, "irr", day) < 0.42:
                fert = 0.4 + 0.4 * unit(self.seed, "fl", day)
                run = _Run(
                    start_h=5 + 3 * unit(self.seed, "st", day),
                    hours=4 + 3 * unit(self.seed, "hr", day),
                    flow_lpm=self._base_flow * (0.9 + 0.2 * unit(self.seed, "fw", day)),
                    fert_lpm=fert if unit(self.seed, "fert", day) < 0.35 else 0.0,
                )
            self._runs[day] = run
        return self._runs[day]

    def _rain(self, day: int) -> _Rain | None:
        if day not in self._rains:
            month = (ORIGIN + timedelta(days=day)).month
            rain = None
            if unit(self.seed // 7, "rain", day) < _RAIN_CHANCE[month - 1]:
                rain = _Rain(
                    start_h=24 * unit(self.seed // 7, "rs", day),
                    hours=1 + 5 * unit(self.seed // 7, "rh", day),
                    mm=round(1 + 39 * unit(self.seed // 7, "rm", day) ** 2, 1),
                )
            self._rains[day] = rain
        return self._rains[day]

    def _prefix(self, day: int) -> tuple[float, float]:
        """Irrigation volume and fertilizer of all days before ``day``."""
        while len(self._prefix_volume) <= day:
            run = self._run(len(self._prefix_volume) - 1)
            self._prefix_volume.append(self._prefix_volume[-1] + (run.volume_m3 if run else 0))
            self._prefix_fert.append(self._prefix_fert[-1] + (run.fert_l if run else 0))
        return self._prefix_volume[day], self._prefix_fert[day]

    def _last_water(self, day: int, hour: float) -> tuple[float, float] | None:
        """Hours since the field was last wetted (irrigation or ≥ 5 mm rain), and the peak."""
        for back in range(0, 45):
            d = day - back
            candidates = []
            run = self._run(d)
            if run is not None and (back > 0 or run.start_h + run.hours <= hour):
                candidates.append((back * 24 + hour - (run.start_h + run.hours), 0.34))
            rain = self._rain(d)
            rain_over = rain is not None and (back > 0 or rain.start_h + rain.hours <= hour)
            if rain is not None and rain.mm >= 5 and rain_over:
                peak = 0.2 + min(0.14, rain.mm / 150)
                candidates.append((back * 24 + hour - (rain.start_h + rain.hours), peak))
            if candidates:
                return min(candidates)
        return None

    def _moisture(self, local: datetime, day: int, hour: float, season: float) -> float:
        wilting = 0.11 + 0.02 * unit(self.seed, "wp")
        tau = 420 - 350 * season
        last = self._last_water(day, hour)
        base = wilting + 0.04 if last is None else (
            wilting + (last[1] - wilting) * math.exp(-max(0.0, last[0]) / tau)
        )
        run = self._run(day)
        if run is not None and run.start_h <= hour < run.start_h + run.hours:
            base = 0.34 - (0.34 - base) * math.exp(-(hour - run.start_h) / 0.8)
        diurnal = 0.008 * season * math.sin(2 * math.pi * (hour - 9) / 24)
        value = base - diurnal + 0.004 * noise(self.seed, "sm", local.isoformat())
        if self._soil_temp(local, hour) < 0:
            value *= 0.6  # frozen water does not count as liquid water content
        return value

    def _soil_temp(self, local: datetime, hour: float) -> float:
        doy = local.timetuple().tm_yday
        mean = 8 + 15 * math.cos(2 * math.pi * (doy - 200) / 365) + unit(self.seed, "t0") - 0.5
        amplitude = 1 + 4 * _season(local)
        return mean + amplitude * math.cos(2 * math.pi * (hour - 15) / 24)

    def _drip(self, local: datetime) -> dict[str, float | bool]:
        day, hour, season = _day_index(local), _hour(local), _season(local)
        key = local.isoformat()
        volume, fert = self._prefix(max(0, day)) if day >= 0 else (0.0, 0.0)
        run = self._run(day) if day >= 0 else None
        running = run is not None and run.start_h <= hour < run.start_h + run.hours
        if run is not None and day >= 0 and hour > run.start_h:
            done_h = min(hour, run.start_h + run.hours) - run.start_h
            volume += run.flow_lpm * done_h * 60 / 1000
            fert += run.fert_lpm * done_h * 60
        flow = run.flow_lpm * (1 + 0.02 * noise(self.seed, "f", key)) if running and run else 0.0
        pressure = (
            200 + 30 * unit(self.seed, "p0") + 8 * noise(self.seed, "p", key)
            if running else 3 * unit(self.seed, "pr", key)
        )
        since_fert = 1e9
        for back in range(0, 30):
            past = self._run(day - back)
            if past is not None and past.fert_lpm and (back > 0 or past.start_h <= hour):
                since_fert = back * 24 + hour - past.start_h
                break
        rain_mm = 0.0
        for back in (0, 1):
            rain = self._rain(day - back)
            if rain is not None:
                start = rain.start_h - 24 * back
                overlap = min(hour, start + rain.hours) - max(hour - 1, start)
                rain_mm += max(0.0, overlap) * rain.mm / rain.hours
        return {
            "flow_lpm": flow,
            "volume_m3": volume,
            "pressure_kpa": pressure,
            "soil_moisture_vwc": self._moisture(local, day, hour, season),
            "soil_ec_ds_m": 0.6 + 0.5 * unit(self.seed, "ec")
            + 0.6 * math.exp(-since_fert / 72) + 0.03 * noise(self.seed, "ec", key),
            "soil_temp_c": self._soil_temp(local, hour) + 0.3 * noise(self.seed, "st", key),
            "fertilizer_l": fert,
            "valve_open": running,
            "rain_mm": rain_mm,
        }

    # -- manure ---------------------------------------------------------------------------

    def _manure(self, local: datetime) -> dict[str, float | bool]:
        size = 1.0 if self.large_scale else 0.3
        key = local.isoformat()
        day, hour, season = _day_index(local), _hour(local), _season(local)
        period = 18 + 17 * unit(self.seed, "period")
        pump_days = 10 / 24
        position = (day + hour / 24 + period * unit(self.seed, "phase")) % period
        pumping = position >= period - pump_days
        if pumping:
            level = 85 - 70 * (position - (period - pump_days)) / pump_days
        else:
            level = 15 + 70 * position / (period - pump_days)
        cold = 1 - season
        if self.large_scale:
            digester = 36 - 5 * cold + 0.6 * noise(self.seed, "dt", key)
        else:
            digester = 19 + 13 * (season - 0.5) * 2 + 0.8 * noise(self.seed, "dt", key)
        capacity = (60 + 120 * unit(self.seed, "gas")) * size
        activity = min(1.1, max(0.05, (digester - 10) / 26))
        biogas = capacity * activity * (1 + 0.08 * math.sin(2 * math.pi * (hour - 8) / 24))
        workday = (local.weekday() < 6) and unit(self.seed, "sep", day) < 0.9
        return {
            "lagoon_level_pct": level + 0.5 * noise(self.seed, "lv", key),
            "digester_temp_c": digester,
            "biogas_m3h": biogas * (1 + 0.05 * noise(self.seed, "bg", key)),
            "separator_on": workday and 8 <= hour < 17,
            "pump_on": pumping,
            "nh3_ppm": 4 + 10 * season + (15 if pumping else 0) + 2 * noise(self.seed, "n", key),
            "h2s_ppm": 0.8 + 2 * season + (18 if pumping else 0) + 0.6 * noise(self.seed, "h", key),
        }

    # -- straw ----------------------------------------------------------------------------

    def _straw(self, local: datetime) -> dict[str, float | bool]:
        doy = local.timetuple().tm_yday + _hour(local) / 24
        harvest = 255 + 35 * unit(self.seed, "harvest")
        key = local.isoformat()
        if doy >= harvest:
            moisture = 13 + 17 * math.exp(-(doy - harvest) / 18)
        else:
            moisture = 13.5 + 1.5 * _season(local)
        return {"bale_moisture_pct": moisture + 0.8 * noise(self.seed, "bm", key)}

    # -- any site -------------------------------------------------------------------------

    def _radio(self, local: datetime) -> dict[str, float | bool]:
        hour, season = _hour(local), _season(local)
        key = (self.unit_no, local.isoformat())
        sun = max(0.0, math.sin(math.pi * (hour - 6) / 12))
        return {
            "battery_v": 12.5 + 1.1 * sun * (0.5 + 0.5 * season) - 0.3 * (1 - season)
            + 0.05 * noise(self.seed, "bv", *key),
            "rssi_dbm": -70 - 35 * unit(self.seed, "rssi", self.unit_no)
            + 4 * noise(self.seed, "rs", *key),
        }

    # -- the driver's own events ----------------------------------------------------------

    def _own_schedule(self, year: int) -> list[DriverEvent]:
        if year not in self._own_years:
            self._own_years[year] = default_schedule(
                self.site_type, self.seed, year, area_mu=self.area_mu,
                large_scale=self.large_scale,
            )
        return self._own_years[year]


def local_time(year: int, doy: int, hour: float) -> datetime:
    """An aware UTC datetime for day-of-year ``doy`` (1-based) at local ``hour`` in Datong."""
    start = datetime(year, 1, 1, tzinfo=UTC) - LOCAL
    return start + timedelta(days=doy - 1, hours=hour)


def default_schedule(
    site_type: SiteType | str, seed: int, year: int, *, area_mu: float = 300,
    large_scale: bool = True,
) -> list[DriverEvent]:
    """A plain seasonal year of events for a stand-alone simulated device.

    The simulators build their own, outcome-controlled schedules; this one just
    gives ``python -m edge`` with a simulated driver something realistic to say.
    """
    site_type = SiteType(site_type)

    def at(doy: float) -> datetime:
        return local_time(year, int(doy), 8 + 10 * unit(seed, year, "h", doy))

    events: list[DriverEvent] = []
    if site_type is SiteType.DRIP:
        thickness = 0.01
        applied = round(area_mu * 0.7 * thickness * FILM_T_PER_MU_MM, 3)
        events.append({"ts": at(105 + 30 * unit(seed, year, "fa")), "type": EventType.FILM_APPLIED,
                       "mass_t": applied, "area_mu": round(area_mu * 0.7, 1),
                       "thickness_mm": thickness})
        events.append({"ts": at(265 + 50 * unit(seed, year, "fr")),
                       "type": EventType.FILM_RECOVERED,
                       "mass_t": round(applied * (0.75 + 0.2 * unit(seed, year, "rf")), 3)})
    elif site_type is SiteType.STRAW:
        crop = list(Crop)[int(unit(seed, "crop") * 3)]
        grain = round(area_mu * _STRAW_YIELD_T_PER_MU[crop], 1)
        harvest = 255 + 35 * unit(seed, "harvest")
        events.append({"ts": at(harvest), "type": EventType.HARVEST, "crop": crop,
                       "grain_t": grain})
        uses = list(StrawUse)
        for index in range(2):
            events.append({"ts": at(harvest + 10 + 30 * index), "type": EventType.STRAW_UTILIZED,
                           "use": uses[int(unit(seed, year, "use", index) * len(uses))],
                           "mass_t": round(grain * 0.5, 1)})
    else:
        size = 1.0 if large_scale else 0.2
        for doy in range(5, 360, 7):
            events.append({"ts": at(doy), "type": EventType.MANURE_TREATED,
                           "mass_t": round(size * (60 + 40 * unit(seed, year, "mt", doy)), 1)})
        for doy in range(15, 360, 30):
            events.append({"ts": at(doy + 0.5), "type": EventType.MANURE_UTILIZED,
                           "use": ManureUse.FERTILIZER,
                           "mass_t": round(size * (150 + 50 * unit(seed, year, "mu", doy)), 1)})
        fault = 60 + 200 * unit(seed, year, "fault")
        facility = list(Facility)[int(unit(seed, year, "fac") * len(Facility))]
        events.append({"ts": at(fault + 0.25), "type": EventType.FACILITY_FAULT,
                       "facility": facility})
        events.append({"ts": at(fault + 3.25), "type": EventType.FACILITY_OK,
                       "facility": facility})
    events.sort(key=lambda e: e["ts"])
    return events


class SimulatedDriverConfig(ConfigSection):
    """``[driver] kind = "simulated"``: a simulated site (demos, tests, bench)."""

    kind: Literal["simulated"]
    site_type: SiteType
    seed: int = 0
    area_mu: float | None = Field(default=None, gt=0)
    large_scale: bool = True
    metrics: list[str] | None = None

    def build(self) -> SimulatedDriver:
        return SimulatedDriver(
            self.site_type, self.seed, area_mu=self.area_mu, large_scale=self.large_scale,
            metrics=self.metrics,
        )
