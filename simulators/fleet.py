"""A simulated fleet: every device its own MQTT client, publishing a scenario's plan.

Backfill plays the whole year in simulated time as fast as the broker takes it;
live plays it in real time with the year's events squeezed into the run. Both
use the edge agent's own drivers and :class:`edge.publisher.DevicePublisher`.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from edge.drivers.simulated import LOCAL, SimulatedDriver, unit
from edge.publisher import DevicePublisher, Sent, utc_now
from farm_contract import payloads
from farm_contract.catalog import CATALOG
from farm_contract.payloads import EventType
from farm_contract.registry import Registry
from farm_contract.topics import MessageKind
from simulators.credentials import device_password
from simulators.plan import DevicePlan, Injection, InjectionKind, Plan, build_plan, build_sites
from simulators.plan import registry_of as _registry_of
from simulators.scenario import Scenario

log = logging.getLogger(__name__)

MAX_RECONNECTS = 3
"""Reconnects a device may need in one run (a broker restart) before the run fails."""


def build_registry(scenario: Scenario) -> Registry:
    """The scenario's sites and devices (the same whatever the year)."""
    return _registry_of(build_sites(scenario))


@dataclass
class FleetReport:
    """What the fleet published, everything acknowledged by the broker.

    ``telemetry`` and ``events`` count distinct valid messages (what ingest should
    store); duplicates, bad payloads and status messages are counted apart so a
    test knows exactly how many rejections and redeliveries ingest should see.
    """

    mode: str
    year: int
    devices: int
    telemetry: int = 0
    events: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    duplicate_telemetry: int = 0
    duplicate_events: int = 0
    bad_json: int = 0
    out_of_range: int = 0
    status: int = 0
    refused: int = 0
    """Messages the broker answered with a failure PUBACK (e.g. ACL)."""
    reconnects: int = 0
    """Connections lost and made again, all devices together."""
    most_reconnects: int = 0
    """The most any one device reconnected: more than :data:`MAX_RECONNECTS` means
    another client took its client id (e.g. a running demo's fleet) again and again."""
    completed: bool = False
    """False when a live run was stopped before its duration, or its devices were
    disconnected more than :data:`MAX_RECONNECTS` times each."""
    elapsed_s: float = 0.0

    @property
    def bad_payloads(self) -> int:
        return self.bad_json + self.out_of_range

    @property
    def duplicates(self) -> int:
        return self.duplicate_telemetry + self.duplicate_events

    @property
    def published(self) -> int:
        """Every message handed to the broker, status included."""
        return (self.telemetry + self.events + self.duplicates + self.bad_payloads
                + self.status)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bad_payloads": self.bad_payloads,
                "duplicates": self.duplicates, "published": self.published}


class _Device:
    """A device at run time: its plan, driver, publisher and faults still to inject."""

    def __init__(self, plan: DevicePlan, publisher: DevicePublisher,
                 schedule_time: dict[int, datetime] | None = None) -> None:
        self.plan = plan
        self.publisher = publisher
        events = [
            planned.driver_event(schedule_time[index] if schedule_time else None)
            for index, planned in enumerate(plan.events)
        ]
        self.driver = SimulatedDriver(
            plan.site.site_type, plan.seed, area_mu=plan.site.area_mu,
            large_scale=plan.site.large_scale, metrics=plan.metrics, unit_no=plan.unit_no,
            schedule=events,
        )
        self.injections = list(plan.injections)


def _publishers(plan: Plan, mqtt_url: str, prefix: str, max_pending: int,
                device_secret: str | None = None) -> list[DevicePublisher]:
    """One publisher per device, logged in as the device (its own password when
    ``device_secret`` is given: :mod:`simulators.credentials`)."""
    return [
        DevicePublisher(
            device.device.device_id, device.site.site_id, mqtt_url, prefix=prefix,
            metadata={"model": device.device.model, "simulated": True}, max_pending=max_pending,
            password=(device_password(device_secret, device.device.device_id)
                      if device_secret else None),
        )
        for device in plan.devices
    ]


def _connect(publishers: list[DevicePublisher], timeout: float) -> None:
    for publisher in publishers:
        publisher.start()
    deadline = time.monotonic() + timeout
    for publisher in publishers:
        if not publisher.wait_connected(max(0.0, deadline - time.monotonic())):
            raise ConnectionError(f"{publisher.device_id}: no connection within {timeout:g}s")


def _close(publishers: list[DevicePublisher], report: FleetReport, timeout: float) -> None:
    """Wait for every PUBACK, then publish offline and disconnect each client."""
    deadline = time.monotonic() + timeout
    late = [p.device_id for p in publishers
            if not p.wait_all_acked(max(0.0, deadline - time.monotonic()))]
    for publisher in publishers:
        publisher.close(timeout=max(1.0, deadline - time.monotonic()))
        report.status += publisher.sent_by_kind[MessageKind.STATUS]
        report.refused += publisher.refused
        reconnects = max(0, publisher.connects - 1)
        report.reconnects += reconnects
        report.most_reconnects = max(report.most_reconnects, reconnects)
    if late:
        raise TimeoutError(f"{len(late)} device(s) still had unacknowledged messages: {late[:5]}")


def _bad_payload(device: _Device, injection: Injection, ts: datetime) -> bytes:
    """A payload ingest must reject; bad JSON does not use a seq, out-of-range does."""
    publisher = device.publisher
    if injection.kind is InjectionKind.OUT_OF_RANGE:
        numeric = [CATALOG[name] for name in device.plan.metrics if not CATALOG[name].is_bool]
        metric = numeric[injection.variant % len(numeric)]
        high = metric.maximum * 2 + 1 if metric.maximum is not None else None
        value = high if high is not None else (metric.minimum or 0) - 1
        return payloads.telemetry(publisher.take_seq(), ts, {metric.name: float(value)})
    valid = payloads.telemetry(publisher.next_seq, ts, {"battery_v": 12.5})
    variant = injection.variant % 3
    if variant == 0:
        return valid[: len(valid) // 2]
    if variant == 1:
        return valid.replace(b'"battery_v":12.5', b'"battery_v":NaN')
    return b"\xff\xfebattery=12.5 (not JSON)"


class _Engine:
    """Steps devices through time; shared by backfill and live."""

    def __init__(self, plan: Plan, devices: list[_Device], report: FleetReport, live: bool):
        self.plan = plan
        self.devices = devices
        self.report = report
        self.live = live
        self.event_types: Counter[str] = Counter()

    def step(self, device: _Device, plan_at: datetime, now: datetime,
             event_clock: datetime | None = None) -> None:
        """At plan time ``plan_at`` (wall/device time ``now``): events due, then telemetry."""
        publisher, skew = device.publisher, device.plan.skew
        for event in device.driver.events(event_clock or now):
            fields = {k: v for k, v in event.items() if k not in ("ts", "type", "duplicate")}
            sent = publisher.event(event["ts"] + skew, EventType(event["type"]), **fields)
            self.report.events += 1
            self.event_types[str(event["type"])] += 1
            if event["duplicate"]:
                publisher.raw(MessageKind.EVENT, sent.payload)
                self.report.duplicate_events += 1
        if not device.plan.sends_telemetry(plan_at):
            return
        if self.live and device.plan.silent_from is not None:
            return  # a silent farm has no telemetry at all when "now" is the evaluation time
        sent = publisher.telemetry(now + skew, dict(device.driver.read(now)))
        self.report.telemetry += 1
        while device.injections and device.injections[0].at <= plan_at:
            self._inject(device, device.injections.pop(0), sent, now + skew)

    def _inject(self, device: _Device, injection: Injection, sent: Sent, ts: datetime) -> None:
        publisher = device.publisher
        if injection.kind is InjectionKind.DUPLICATE_TELEMETRY:
            publisher.raw(MessageKind.TELEMETRY, sent.payload)
            self.report.duplicate_telemetry += 1
            return
        publisher.raw(MessageKind.TELEMETRY, _bad_payload(device, injection, ts))
        if injection.kind is InjectionKind.OUT_OF_RANGE:
            self.report.out_of_range += 1
        else:
            self.report.bad_json += 1


def run_backfill(
    scenario: Scenario,
    mqtt_url: str,
    prefix: str = "farm",
    year: int | None = None,
    *,
    telemetry_interval_h: float | None = None,
    max_pending: int = 2000,
    connect_timeout_s: float = 30,
    ack_timeout_s: float = 600,
    device_secret: str | None = None,
) -> FleetReport:
    """Publish the scenario's whole year in simulated time; return once all is PUBACKed."""
    started = time.monotonic()
    plan = build_plan(scenario, year)
    report = FleetReport("backfill", plan.year, len(plan.devices))
    publishers = _publishers(plan, mqtt_url, prefix, max_pending, device_secret)
    devices = [_Device(d, p) for d, p in zip(plan.devices, publishers, strict=True)]
    engine = _Engine(plan, devices, report, live=False)
    interval = timedelta(hours=telemetry_interval_h) if telemetry_interval_h else None
    try:
        _connect(publishers, connect_timeout_s)
        for tick in plan.ticks(interval):
            for device in devices:
                engine.step(device, tick, tick)
        report.completed = True
    finally:
        _close(publishers, report, ack_timeout_s)
    if report.most_reconnects > MAX_RECONNECTS:
        report.completed = False
    report.events_by_type = dict(sorted(engine.event_types.items()))
    report.elapsed_s = round(time.monotonic() - started, 3)
    return report


def run_live(
    scenario: Scenario,
    mqtt_url: str,
    prefix: str = "farm",
    duration_s: float = 60.0,
    stop_event: threading.Event | None = None,
    *,
    interval_s: float | None = None,
    max_pending: int = 2000,
    connect_timeout_s: float = 30,
    device_secret: str | None = None,
) -> FleetReport:
    """Publish in real time (``ts`` = now) for ``duration_s``, the year's events compressed.

    The year is the current one in Datong. A ``not_equipped_silent`` farm sends no
    telemetry at all, since "now" is when its staleness is judged. Stops early
    when ``stop_event`` is set; every client is disconnected and its thread joined.
    """
    stop = stop_event or threading.Event()
    started = time.monotonic()
    wall0 = utc_now()
    plan = build_plan(scenario, (wall0 + LOCAL).year)
    report = FleetReport("live", plan.year, len(plan.devices))
    year_length = plan.end - plan.start
    duration = timedelta(seconds=duration_s)

    def to_wall(at: datetime) -> datetime:
        return wall0 + duration * plan.fraction(at)

    def to_plan(now: datetime) -> datetime:
        return plan.start + year_length * min(1.0, (now - wall0) / duration)

    publishers = _publishers(plan, mqtt_url, prefix, max_pending, device_secret)
    devices = [
        _Device(d, p, {i: to_wall(e.ts) for i, e in enumerate(d.events)})
        for d, p in zip(plan.devices, publishers, strict=True)
    ]
    engine = _Engine(plan, devices, report, live=True)
    interval = interval_s or scenario.live_interval_s
    try:
        _connect(publishers, connect_timeout_s)
        base = time.monotonic()
        due = [(interval * unit(scenario.seed, d.plan.device.device_id), i)
               for i, d in enumerate(devices)]
        heapq.heapify(due)
        while due and not stop.is_set():
            offset, index = heapq.heappop(due)
            if offset >= duration_s:
                break
            if stop.wait(max(0.0, offset - (time.monotonic() - base))):
                break
            now = utc_now()
            engine.step(devices[index], to_plan(now), now)
            heapq.heappush(due, (offset + interval, index))
        if not stop.is_set():
            end = wall0 + duration
            for device in devices:  # the rest of the year's events, and a last reading
                engine.step(device, plan.end, utc_now(), event_clock=end)
            report.completed = True
    finally:
        _close(publishers, report, 60)
    if report.most_reconnects > MAX_RECONNECTS:
        report.completed = False
    report.events_by_type = dict(sorted(engine.event_types.items()))
    report.elapsed_s = round(time.monotonic() - started, 3)
    return report


def report_json(report: FleetReport) -> str:
    return json.dumps(report.as_dict(), ensure_ascii=False, indent=2)
