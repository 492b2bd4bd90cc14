"""The fleet against a real Mosquitto: every message valid, seqs per device, counts exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from devstack.servers import Mosquitto
from farm_contract.catalog import CATALOG
from farm_contract.payloads import (
    EventMessage,
    PayloadError,
    StatusMessage,
    TelemetryMessage,
    decode_json,
)
from farm_contract.registry import Registry
from farm_contract.topics import parse_device_topic
from simulators.expected import by_key, expected_indicators
from simulators.fleet import FleetReport, build_registry, run_backfill, run_live
from simulators.plan import build_plan
from simulators.scenario import load_scenario
from tests.helpers import wait_behind_marker, wait_for
from tests.test_edge_publisher import Received, Recorder

ROOT = Path(__file__).resolve().parents[1]


def check_stream(messages: list[Received], report: FleetReport, registry: Registry
                 ) -> dict[str, list[EventMessage]]:
    """Validate every message against the contract; return each device's distinct events."""
    bad_json = out_of_range = 0
    seqs: dict[str, list[int]] = defaultdict(list)
    by_topic_seqs: dict[str, list[int]] = defaultdict(list)
    status: dict[str, list[Received]] = defaultdict(list)
    events: dict[str, dict[int, EventMessage]] = defaultdict(dict)
    counts: dict[str, int] = defaultdict(int)
    for message in messages:
        topic = parse_device_topic(message.topic, "farm")
        assert registry.devices[topic.device_id].site_id == topic.site_id
        counts[topic.kind.value] += 1
        try:
            body = decode_json(message.payload)
        except PayloadError:
            assert topic.kind == "telemetry"
            bad_json += 1
            continue
        if topic.kind == "status":
            StatusMessage.model_validate(body)
            status[topic.device_id].append(message)
            continue
        if topic.kind == "telemetry":
            record = TelemetryMessage.model_validate(body).records()[0]
            problems = [CATALOG[k].check(v) for k, v in record.readings.items()]
            if any(problems):
                out_of_range += 1
            site = registry.sites[topic.site_id]
            assert all(CATALOG[k].allowed_at(site.site_type) for k in record.readings)
            seq = record.seq
        else:
            event = EventMessage.model_validate(body)
            seq = event.records()[0].seq
            events[topic.device_id][seq] = event
        seqs[topic.device_id].append(seq)
        by_topic_seqs[message.topic].append(seq)

    assert bad_json == report.bad_json
    assert out_of_range == report.out_of_range
    telemetry = report.telemetry + report.duplicate_telemetry + report.bad_payloads
    assert counts["telemetry"] == telemetry
    assert counts["event"] == report.events + report.duplicate_events
    assert counts["status"] == report.status
    assert sum(len(s) for s in seqs.values()) - sum(len(set(s)) for s in seqs.values()) == (
        report.duplicates)
    for device_seqs in seqs.values():  # seq rises by one per message, shared by both kinds
        assert sorted(set(device_seqs)) == list(range(len(set(device_seqs))))
    for topic_seqs in by_topic_seqs.values():  # and arrives in order on each topic
        assert topic_seqs == sorted(topic_seqs)
    assert set(status) == set(registry.devices)
    for device_status in status.values():
        states = [m.json()["state"] for m in device_status]
        assert states == ["online", "offline"]
        assert all(m.retain for m in device_status)
    return {device: list(found.values()) for device, found in events.items()}


MARKER_TOPIC = "farm/v1/test/recorder/marker"


def recorded_behind_marker(recorder: Recorder, port: int) -> list[Received]:
    """What the recorder got from the fleet, once a marker published after it arrived.

    Call it when the fleet's threads have ended (every message PUBACKed, so queued for
    the recorder): the marker is queued behind all of them, so when it is in, nothing
    the fleet sent is still on its way, and a count can be exact. The marker is
    checked to be last and left out.
    """
    wait_behind_marker(port, MARKER_TOPIC, b"marker", lambda: recorder.kind("marker"))
    recorder.close()
    *fleet, marker = recorder.messages
    assert marker.topic == MARKER_TOPIC
    return fleet


def fleet_threads() -> list[str]:
    """Threads the fleet's publishers start (named after their device ids)."""
    return [t.name for t in threading.enumerate() if t.name.startswith(("mqtt-d-", "outbox-d-"))]


@pytest.mark.integration
def test_backfill_of_test_small(mosquitto: Mosquitto) -> None:
    scenario = load_scenario("test-small")
    registry = build_registry(scenario)
    recorder = Recorder(mosquitto.port)
    report = run_backfill(scenario, mosquitto.url)
    assert report.completed and report.refused == 0
    wait_for(lambda: not fleet_threads(), timeout=10)  # every client's threads ended
    received = recorded_behind_marker(recorder, mosquitto.port)
    assert len(received) == report.published

    faults = scenario.faults
    assert (report.bad_json, report.out_of_range) == (faults.bad_json, faults.out_of_range)
    assert report.duplicate_telemetry == faults.duplicate_telemetry
    assert report.duplicate_events == faults.duplicate_events
    plan = build_plan(scenario)
    assert report.events == sum(len(d.events) for d in plan.devices)
    assert report.status == 2 * len(registry.devices)

    events = check_stream(received, report, registry)

    # the indicators computed from what went over the wire equal the expected ones
    sums: dict[tuple[str, str], float] = defaultdict(float)
    for device_id, device_events in events.items():
        county = registry.sites[registry.devices[device_id].site_id].county
        for message in device_events:
            record = message.records()[0]
            if record.type in ("film_applied", "film_recovered", "straw_utilized"):
                sums[record.type.value, county] += float(record.mass_t or 0)
    expected = by_key(expected_indicators(scenario, scenario.year))
    for county in (c.name for c in scenario.counties):
        film = expected["film_recovery_rate", county]
        assert sums["film_applied", county] == pytest.approx(film.denominator)
        assert sums["film_recovered", county] == pytest.approx(film.numerator)
        straw = expected["straw_utilization_rate", county]
        assert sums["straw_utilized", county] == pytest.approx(straw.numerator)

    # equipped large farms report in the last 24 h of the year; silent ones do not
    last: dict[str, str] = {}
    for message in recorder.kind("telemetry"):
        try:
            record = TelemetryMessage.model_validate(decode_json(message.payload))
        except (PayloadError, ValidationError):
            continue
        site_id = message.topic.split("/")[2]
        last[site_id] = max(last.get(site_id, ""), record.records()[0].ts.isoformat())
    fresh_from = (plan.end - timedelta(hours=24)).isoformat()
    fresh = {site for site, ts in last.items() if ts >= fresh_from}
    for spec in plan.sites:
        if spec.outcome is not None:
            assert (spec.site.site_id in fresh) == (spec.outcome != "silent"), spec.site.site_id


@pytest.mark.integration
def test_live_run_compresses_the_year_and_leaves_no_threads(mosquitto: Mosquitto) -> None:
    scenario = load_scenario("test-small")
    recorder = Recorder(mosquitto.port)
    started = time.monotonic()
    report = run_live(scenario, mosquitto.url, duration_s=3, interval_s=0.5)
    assert 3 <= time.monotonic() - started < 15
    wait_for(lambda: not fleet_threads(), timeout=10)
    assert report.completed and report.mode == "live"
    plan = build_plan(scenario, report.year)
    assert report.events == sum(len(d.events) for d in plan.devices)
    assert report.bad_payloads == scenario.faults.bad_json + scenario.faults.out_of_range
    received = recorded_behind_marker(recorder, mosquitto.port)
    check_stream(received, report, build_registry(scenario))
    silent = {d.device.device_id for d in plan.devices if d.silent_from is not None}
    sent = {m.topic.split("/")[3] for m in recorder.kind("telemetry")}
    assert silent and not silent & sent


@pytest.mark.integration
def test_live_run_stops_on_the_stop_event(mosquitto: Mosquitto) -> None:
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    started = time.monotonic()
    report = run_live(load_scenario("test-small"), mosquitto.url, duration_s=60, stop_event=stop,
                      interval_s=0.5)
    assert time.monotonic() - started < 10
    assert not report.completed
    assert report.telemetry > 0
    wait_for(lambda: not fleet_threads(), timeout=10)


def test_cli_writes_the_registry(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulators", "registry", "--scenario", "test-small",
         "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    registry = Registry.from_dir(tmp_path)
    assert len(registry.sites) == 19 and len(registry.devices) == 31


@pytest.mark.integration
def test_cli_live_run_prints_its_report(mosquitto: Mosquitto) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulators", "run", "--scenario", "test-small", "--mqtt-url",
         mosquitto.url, "--mode", "live", "--duration", "1.5", "--interval-s", "0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["completed"] and report["telemetry"] > 0 and report["devices"] == 31
