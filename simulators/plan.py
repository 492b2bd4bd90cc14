"""The year a scenario plays out, decided up front: sites, devices, events and faults.

The fleet publishes from this plan and :mod:`simulators.expected` computes the
indicators from the same plan, so "what was sent" and "what ingest should
compute" cannot drift apart. Everything is drawn from ``random.Random`` seeded
with strings (hashed with SHA-512, stable across processes) and never from the
year, so the same scenario gives the same masses whichever year it is played in.

Masses are whole kilograms chosen so that each county's declared fractions hold
exactly: a site laying ``A`` kg of film recovers ``A × f`` kg, and ``A`` is a
multiple of ``f``'s denominator; a harvest's grain is a multiple of the denominators
of its collectable factor (ratio × coefficient, ``farm_contract/params/straw.toml``)
and of the county's straw fraction.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from fractions import Fraction
from typing import Any

from edge.drivers.base import DriverEvent
from edge.drivers.simulated import FILM_T_PER_MU_MM, local_time
from farm_contract.catalog import SiteType, metrics_for
from farm_contract.indicator_params import StrawParams, load_straw
from farm_contract.payloads import Crop, EventType, Facility, ManureUse, StrawUse
from farm_contract.registry import Device, Registry, Site
from simulators.scenario import CountySpec, Scenario

VILLAGES = (
    "东王庄", "西坪村", "南堡村", "北辛庄", "马家窑", "李家寨", "高山村", "杨家堡", "古城村",
    "水泉村", "白家庄", "红崖村", "柳树湾", "新堡村", "安家岭", "大王村", "小石庄", "刘家营",
    "张家湾", "黄土坡", "双山村", "三岔口", "五里铺", "沙河村", "桑干河", "瓦窑村", "卧虎湾",
    "石门村", "龙泉村", "清水河", "榆林村", "靳家窑", "孙家店", "陈家堡", "郭家寨", "周家庄",
    "秦家山", "赵家窑", "吴家营", "许堡村",
)
ANIMALS = ("奶牛", "肉牛", "生猪", "肉羊", "蛋鸡")

_DRIP_CONTROLLER = ["flow_lpm", "volume_m3", "pressure_kpa", "fertilizer_l", "valve_open",
                    "rain_mm", "battery_v", "rssi_dbm"]
_SOIL_PROBE = ["soil_moisture_vwc", "soil_ec_ds_m", "soil_temp_c", "battery_v", "rssi_dbm"]
_LAGOON = ["lagoon_level_pct", "digester_temp_c", "biogas_m3h", "separator_on", "pump_on",
           "battery_v", "rssi_dbm"]
_GAS = ["nh3_ppm", "h2s_ppm", "battery_v", "rssi_dbm"]

_CROPS = (Crop.CORN, Crop.MILLET, Crop.POTATO, Crop.OATS, Crop.SORGHUM, Crop.OTHER)
_CROP_WEIGHTS = (50, 15, 12, 10, 8, 5)
_YIELD_KG_PER_MU = {Crop.CORN: 550, Crop.SORGHUM: 400, Crop.MILLET: 250, Crop.POTATO: 1500,
                    Crop.OATS: 150, Crop.OTHER: 300}
_MANURE_USES = (ManureUse.FERTILIZER, ManureUse.ENERGY, ManureUse.BEDDING, ManureUse.OTHER)
_MANURE_USE_WEIGHTS = (60, 20, 15, 5)
_LAST_EVENT_DOY = 356
"""No planned event after 22 December (local): events stay well inside the year."""


class Outcome(StrEnum):
    """What a large-scale manure farm's year shows (docs/indicators.md §2)."""

    EQUIPPED = "equipped"
    OPEN_FAULT = "open_fault"
    """A facility fault left open from autumn to year end: longer than the grace (30 days)."""
    SILENT = "silent"
    """Reports on the year's first ``silent_farm_days`` days only: too few days (< 30)."""


class InjectionKind(StrEnum):
    BAD_JSON = "bad_json"
    OUT_OF_RANGE = "out_of_range"
    DUPLICATE_TELEMETRY = "duplicate_telemetry"


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One event in plan time (the scenario's year); ``duplicate``: publish it twice."""

    ts: datetime
    type: EventType
    fields: dict[str, Any]
    duplicate: bool = False

    def driver_event(self, ts: datetime | None = None) -> DriverEvent:
        return {"ts": ts if ts is not None else self.ts, "type": self.type, **self.fields,
                "duplicate": self.duplicate}


@dataclass(frozen=True, slots=True)
class Injection:
    """A faulty message, sent with the device's first telemetry at or after ``at``."""

    kind: InjectionKind
    at: datetime
    variant: int


@dataclass
class DevicePlan:
    """One device's year: its events (first device of a site only) and its faults."""

    site: Site
    device: Device
    unit_no: int
    metrics: list[str]
    seed: int
    events: list[PlannedEvent] = field(default_factory=list)
    silent_from: datetime | None = None
    """No telemetry at or after this instant (a silent farm, or a quiet first device)."""
    silence: list[tuple[datetime, datetime]] = field(default_factory=list)
    skew: timedelta = timedelta(0)
    injections: list[Injection] = field(default_factory=list)

    def sends_telemetry(self, at: datetime) -> bool:
        """Whether the device reports at plan time ``at``."""
        if self.silent_from is not None and at >= self.silent_from:
            return False
        return not any(start <= at < end for start, end in self.silence)


@dataclass
class SiteSpec:
    """A site of the scenario with its role in the declared outcomes (year-independent)."""

    site: Site
    county: CountySpec
    seed: int
    devices: list[tuple[Device, list[str]]]
    outcome: Outcome | None = None
    ledger: bool = True
    quiet_first_device: bool = False


@dataclass
class Plan:
    """Everything the fleet will send for one scenario and year."""

    scenario: Scenario
    year: int
    sites: list[SiteSpec]
    devices: list[DevicePlan]

    @property
    def start(self) -> datetime:
        """1 January 00:00 in Datong (UTC+8), as an aware UTC datetime."""
        return local_time(self.year, 1, 0)

    @property
    def end(self) -> datetime:
        return local_time(self.year + 1, 1, 0)

    @property
    def final_tick(self) -> datetime:
        """The last telemetry of the year: 31 December 12:00 local."""
        return self.end - timedelta(hours=12)

    def ticks(self, interval: timedelta | None = None) -> list[datetime]:
        """Backfill telemetry instants: from 1 January 12:00, ending exactly at the final tick."""
        step = interval or timedelta(hours=self.scenario.telemetry_interval_h)
        ticks = []
        at = self.start + timedelta(hours=12)
        while at < self.final_tick:
            ticks.append(at)
            at += step
        ticks.append(self.final_tick)
        return ticks

    def fraction(self, at: datetime) -> float:
        """How far through the year ``at`` is (0 at the start, 1 at the end)."""
        return (at - self.start) / (self.end - self.start)

    def registry(self) -> Registry:
        return registry_of(self.sites)

    def events(self) -> Iterator[tuple[DevicePlan, PlannedEvent]]:
        for device in self.devices:
            for planned in device.events:
                yield device, planned


def registry_of(sites: list[SiteSpec]) -> Registry:
    return Registry(
        sites={spec.site.site_id: spec.site for spec in sites},
        devices={device.device_id: device for spec in sites for device, _ in spec.devices},
    )


def _rng(scenario: Scenario, *key: object) -> random.Random:
    return random.Random(":".join(str(part) for part in (scenario.seed, *key)))


def _dev_eui(device_id: str) -> str:
    return hashlib.blake2b(device_id.encode(), digest_size=8).hexdigest()


class _SiteMaker:
    """Makes one county's sites: ids from the county code, unique Chinese names, coordinates."""

    def __init__(self, county: CountySpec, rng: random.Random) -> None:
        self.county = county
        self.rng = rng
        self.names: set[str] = set()
        self.villages = iter(rng.sample(VILLAGES, len(VILLAGES)) * 4)

    def __call__(self, kind: SiteType, number: int, suffix: str, **extra: Any) -> Site:
        name = f"{next(self.villages)}{suffix}"
        while name in self.names:
            name += "二"
        self.names.add(name)
        geo = self.county.geo
        return Site(
            site_id=f"{geo.code}-{kind.value}-{number:02d}", name=name, county=self.county.name,
            site_type=kind, lat=round(geo.lat + self.rng.uniform(-0.12, 0.12), 5),
            lon=round(geo.lon + self.rng.uniform(-0.15, 0.15), 5), **extra,
        )


def build_sites(scenario: Scenario) -> list[SiteSpec]:
    """The scenario's sites and devices, with each large-scale farm's declared role."""
    specs: list[SiteSpec] = []
    for county in scenario.counties:
        rng = _rng(scenario, "sites", county.geo.code)
        make = _SiteMaker(county, rng)
        for number in range(1, county.drip + 1):
            area = rng.randrange(150, 800, 10)
            quota = rng.randrange(150, 225, 5)
            specs.append(SiteSpec(
                make(SiteType.DRIP, number, "膜下滴灌田", area_mu=float(area),
                     water_quota_m3_per_mu=float(quota)),
                county, rng.randrange(2**31), []))
        roles = ([Outcome.OPEN_FAULT] * county.not_equipped_fault
                 + [Outcome.SILENT] * county.not_equipped_silent)
        roles += [Outcome.EQUIPPED] * (county.manure_large - len(roles))
        rng.shuffle(roles)
        ledgers = [False] * county.no_ledger + [True] * (county.manure_large - county.no_ledger)
        rng.shuffle(ledgers)
        for number in range(1, county.manure_large + county.manure_small + 1):
            large = number <= county.manure_large
            animal = rng.choice(ANIMALS)
            suffix = "规模养殖场" if large else "养殖户"
            spec = SiteSpec(make(SiteType.MANURE, number, f"{animal}{suffix}", large_scale=large),
                            county, rng.randrange(2**31), [])
            if large:
                spec.outcome = roles[number - 1]
                spec.ledger = ledgers[number - 1]
                spec.quiet_first_device = rng.random() < 0.5
            else:
                spec.ledger = rng.random() < 0.5
            specs.append(spec)
        for number in range(1, county.straw + 1):
            specs.append(SiteSpec(
                make(SiteType.STRAW, number, "秸秆收储站",
                     area_mu=float(rng.randrange(300, 2500, 50))),
                county, rng.randrange(2**31), []))
    for spec in specs:
        spec.devices = _devices(spec.site)
    return specs


def _devices(site: Site) -> list[tuple[Device, list[str]]]:
    def device(number: int, model: str, metrics: list[str], lora: bool = False
               ) -> tuple[Device, list[str]]:
        device_id = f"d-{site.site_id}-{number}"
        eui = _dev_eui(device_id) if lora else None
        return Device(device_id=device_id, site_id=site.site_id, dev_eui=eui, model=model), metrics

    if site.site_type is SiteType.DRIP:
        return [device(1, "drip-controller", _DRIP_CONTROLLER),
                device(2, "lora-soil-probe", _SOIL_PROBE, lora=True)]
    if site.site_type is SiteType.MANURE and site.large_scale:
        return [device(1, "lagoon-controller", _LAGOON),
                device(2, "lora-gas-monitor", _GAS, lora=True)]
    all_metrics = [metric.name for metric in metrics_for(site.site_type)]
    model = "manure-monitor" if site.site_type is SiteType.MANURE else "bale-station"
    return [device(1, model, all_metrics)]


def _split(total: int, parts: int, rng: random.Random) -> list[int]:
    """``total`` as ``parts`` positive integers (fewer if total is too small)."""
    parts = max(1, min(parts, total))
    if parts == 1:
        return [total]
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]


class _Calendar:
    """Turns a day of year and a working hour into plan-time instants."""

    def __init__(self, year: int, rng: random.Random) -> None:
        self.year = year
        self.rng = rng

    def at(self, doy: float) -> datetime:
        """A working hour (08:00-18:00 local) on day of year ``int(doy)``."""
        return local_time(self.year, int(doy), 8 + self.rng.random() * 10).replace(microsecond=0)

    def days(self, count: int, first: int, last: int) -> list[datetime]:
        chosen = sorted(self.rng.sample(range(first, last + 1), count))
        return [self.at(doy) for doy in chosen]


def _drip_events(scenario: Scenario, spec: SiteSpec, cal: _Calendar) -> list[PlannedEvent]:
    rng = cal.rng
    recovery = scenario.film_for(spec.county)
    step = recovery.denominator
    thickness = rng.choice((0.01, 0.01, 0.01, 0.012, 0.015, 0.008))
    covered = round((spec.site.area_mu or 300) * rng.uniform(0.6, 0.9), 1)
    raw_kg = covered * thickness * FILM_T_PER_MU_MM * 1000
    applied_kg = max(1, round(raw_kg / step)) * step
    events = []
    parts = _split(applied_kg, rng.choice((1, 1, 2)), rng)
    areas = [round(covered * part / applied_kg, 1) for part in parts]
    for when, part, area in zip(cal.days(len(parts), 100, 140), parts, areas, strict=True):
        events.append(PlannedEvent(when, EventType.FILM_APPLIED, {
            "mass_t": part / 1000, "area_mu": area, "thickness_mm": thickness}))
    recovered_kg = applied_kg * recovery
    assert recovered_kg.denominator == 1
    if recovered_kg:
        parts = _split(int(recovered_kg), rng.randint(1, 3), rng)
        for when, part in zip(cal.days(len(parts), 258, 320), parts, strict=True):
            events.append(PlannedEvent(when, EventType.FILM_RECOVERED, {"mass_t": part / 1000}))
    return events


def _straw_events(scenario: Scenario, spec: SiteSpec, cal: _Calendar, straw: StrawParams
                  ) -> list[PlannedEvent]:
    """A harvest and the straw used of it: used ÷ collectable straw (grain × ratio ×
    coefficient of the shipped parameters, ``farm_contract/params/straw.toml``) is exactly
    the county's declared fraction, in whole kilograms."""
    rng = cal.rng
    utilization = scenario.straw_for(spec.county)
    crop = rng.choices(_CROPS, _CROP_WEIGHTS)[0]
    params = straw.of(spec.county.name, crop.value)
    factor = Fraction(repr(params.ratio)) * Fraction(repr(params.coefficient))
    step = factor.denominator * utilization.denominator
    raw_kg = (spec.site.area_mu or 500) * _YIELD_KG_PER_MU[crop] * rng.uniform(0.85, 1.15)
    grain_kg = max(1, round(raw_kg / step)) * step
    collectable_kg = grain_kg * factor
    utilized_kg = collectable_kg * utilization
    assert utilized_kg.denominator == 1
    harvest_doy = rng.randint(250, 290)
    events = [PlannedEvent(cal.at(harvest_doy), EventType.HARVEST,
                           {"crop": crop.value, "grain_t": grain_kg / 1000})]
    if utilized_kg:
        parts = _split(int(utilized_kg), rng.randint(1, 4), rng)
        uses = rng.sample(list(StrawUse), len(parts))
        days = cal.days(len(parts), harvest_doy + 5, _LAST_EVENT_DOY - 2)
        for when, part, use in zip(days, parts, uses, strict=True):
            events.append(PlannedEvent(when, EventType.STRAW_UTILIZED,
                                       {"mass_t": part / 1000, "use": use.value}))
    if rng.random() < 0.25:
        events.append(PlannedEvent(cal.at(rng.randint(harvest_doy + 2, harvest_doy + 40)),
                                   EventType.STRAW_BURNING, {}))
    return events


def _fault_pairs(cal: _Calendar, count: int, first: float, last: float
                 ) -> tuple[list[PlannedEvent], float]:
    """``count`` fault → ok pairs between days ``first`` and ``last``, one after another."""
    rng = cal.rng
    events: list[PlannedEvent] = []
    day = float(first)
    for _ in range(count):
        fault_day = day + rng.uniform(5, 120)
        fault_at = cal.at(fault_day)
        ok_at = fault_at + timedelta(hours=rng.uniform(12, 240))
        ok_day = fault_day + (ok_at - fault_at) / timedelta(days=1) + 1
        if ok_day > last:
            break
        facility = rng.choice(list(Facility)).value
        events.append(PlannedEvent(fault_at, EventType.FACILITY_FAULT, {"facility": facility}))
        events.append(PlannedEvent(ok_at, EventType.FACILITY_OK, {"facility": facility}))
        day = ok_day
    return events, day


def _manure_events(scenario: Scenario, spec: SiteSpec, cal: _Calendar, silent_doy: float
                   ) -> list[PlannedEvent]:
    rng = cal.rng
    large = spec.site.large_scale
    size = 1.0 if large else 0.25
    last = _LAST_EVENT_DOY
    if spec.outcome is Outcome.SILENT:
        last = min(last, int(silent_doy) - 2)
    events: list[PlannedEvent] = []
    if spec.ledger:
        treated = rng.randint(3, 8)
        while treated <= last:
            events.append(PlannedEvent(cal.at(treated), EventType.MANURE_TREATED,
                                       {"mass_t": round(size * rng.uniform(40, 160), 1)}))
            treated += rng.randint(5, 9)
        utilized = rng.randint(10, 20)
        while utilized <= last:
            use = rng.choices(_MANURE_USES, _MANURE_USE_WEIGHTS)[0]
            events.append(PlannedEvent(cal.at(utilized), EventType.MANURE_UTILIZED,
                                       {"mass_t": round(size * rng.uniform(100, 400), 1),
                                        "use": use.value}))
            utilized += rng.randint(25, 35)
    if spec.outcome is Outcome.OPEN_FAULT:
        pairs, day = _fault_pairs(cal, rng.randint(0, 1), 20, 250)
        open_at = cal.at(max(day + 5, rng.uniform(260, 320)))  # open 45+ days at year end
        facility = rng.choice(list(Facility))
        pairs.append(PlannedEvent(open_at, EventType.FACILITY_FAULT, {"facility": facility.value}))
        if rng.random() < 0.5:  # an ok for another facility does not close this fault
            other = rng.choice([f for f in Facility if f is not facility])
            pairs.append(PlannedEvent(open_at + timedelta(days=rng.uniform(1, 5)),
                                      EventType.FACILITY_OK, {"facility": other.value}))
        events += pairs
    elif large:
        events += _fault_pairs(cal, rng.randint(0, 2), 20, last)[0]
    else:
        pairs, day = _fault_pairs(cal, rng.randint(0, 1), 20, last)
        if rng.random() < 0.3:  # small farms' open faults must not count anywhere
            pairs.append(PlannedEvent(cal.at(max(day + 3, 300.0)), EventType.FACILITY_FAULT,
                                      {"facility": rng.choice(list(Facility)).value}))
        events += pairs
    return events


def build_plan(scenario: Scenario, year: int | None = None) -> Plan:
    """Plan ``scenario``'s ``year`` (default: the scenario's own year)."""
    year = scenario.year if year is None else year
    specs = build_sites(scenario)
    plan = Plan(scenario, year, specs, [])
    straw = load_straw()
    silent_from = plan.start + timedelta(days=scenario.silent_farm_days)
    silent_doy = scenario.silent_farm_days + 1.0
    quiet_from = plan.end - timedelta(days=3)
    for spec in specs:
        cal = _Calendar(year, _rng(scenario, "events", spec.site.site_id))
        if spec.site.site_type is SiteType.DRIP:
            events = _drip_events(scenario, spec, cal)
        elif spec.site.site_type is SiteType.STRAW:
            events = _straw_events(scenario, spec, cal, straw)
        else:
            events = _manure_events(scenario, spec, cal, silent_doy)
        events.sort(key=lambda planned: planned.ts)
        for unit_no, (device, metrics) in enumerate(spec.devices, start=1):
            device_plan = DevicePlan(spec.site, device, unit_no, metrics, spec.seed,
                                     events=events if unit_no == 1 else [])
            if spec.outcome is Outcome.SILENT:
                device_plan.silent_from = silent_from
            elif (spec.outcome is Outcome.EQUIPPED and spec.quiet_first_device and unit_no == 1
                  and len(spec.devices) > 1):
                device_plan.silent_from = quiet_from  # the other device keeps the farm current
            plan.devices.append(device_plan)
    _inject_faults(plan)
    return plan


def _inject_faults(plan: Plan) -> None:
    faults = plan.scenario.faults
    rng = _rng(plan.scenario, "faults")
    steady = [device for device in plan.devices if device.silent_from is None]
    length = plan.end - plan.start
    for _ in range(faults.silence_windows):
        device = rng.choice(plan.devices)
        start = plan.start + length * rng.uniform(0.15, 0.8)
        device.silence.append((start, start + timedelta(hours=faults.silence_hours)))
    kinds = ([InjectionKind.BAD_JSON] * faults.bad_json
             + [InjectionKind.OUT_OF_RANGE] * faults.out_of_range
             + [InjectionKind.DUPLICATE_TELEMETRY] * faults.duplicate_telemetry)
    if kinds and not steady:
        raise ValueError("fault injection needs at least one device that reports all year")
    for variant, kind in enumerate(kinds):
        device = rng.choice(steady)
        at = plan.start + length * rng.uniform(0.1, 0.9)
        device.injections.append(Injection(kind, at.replace(microsecond=0), variant))
    for device in plan.devices:
        device.injections.sort(key=lambda injection: injection.at)
    events = [(index, position) for index, device in enumerate(plan.devices)
              for position in range(len(device.events))]
    if faults.duplicate_events > len(events):
        raise ValueError("more duplicate_events than events in the plan")
    for index, position in rng.sample(events, faults.duplicate_events):
        device = plan.devices[index]
        device.events = list(device.events)
        device.events[position] = replace(device.events[position], duplicate=True)
    skewed = rng.sample(plan.devices, min(faults.skewed_devices, len(plan.devices)))
    for number, device in enumerate(skewed):
        sign = 1 if number % 2 == 0 else -1
        device.skew = timedelta(seconds=sign * faults.skew_s)
