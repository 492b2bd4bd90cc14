"""Two fleets with the same devices on one broker: the clash is named and the run fails.

Mosquitto closes the older connection when a client id connects again (2.0.11
says nothing to the client: paho reports "Unspecified error"). Issue 14 saw
``simulators run … live`` against the running demo kick its 59 devices 3,562
times in 60 s and still end ``"completed": true``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from devstack.servers import Mosquitto
from simulators.fleet import MAX_RECONNECTS, run_live
from simulators.scenario import load_scenario

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]


def test_second_fleet_on_the_same_devices_fails_and_names_the_clash(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = load_scenario("test-small")
    result: dict[str, object] = {}

    def first_fleet() -> None:
        result["report"] = run_live(scenario, mosquitto.url, duration_s=25,
                                    stop_event=threading.Event())

    caplog.set_level(logging.WARNING, logger="edge.mqtt.link")
    thread = threading.Thread(target=first_fleet)
    thread.start()
    second = subprocess.run(
        [sys.executable, "-m", "simulators", "run", "--scenario", "test-small",
         "--mqtt-url", mosquitto.url, "--mode", "live", "--duration", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    thread.join(timeout=120)

    assert second.returncode == 1, second.stderr
    report = json.loads(second.stdout)
    assert report["completed"] is False
    assert report["most_reconnects"] > MAX_RECONNECTS
    assert "client ids connected elsewhere" in second.stderr
    assert "another process uses this device's credentials" in second.stderr  # the link's log
    first = result["report"]
    assert first.completed is False  # type: ignore[attr-defined]
    assert any("connected elsewhere: another process uses this device's credentials"
               in record.getMessage() for record in caplog.records)


def test_a_fleet_alone_completes(mosquitto: Mosquitto) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "simulators", "run", "--scenario", "test-small",
         "--mqtt-url", mosquitto.url, "--mode", "live", "--duration", "6"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["completed"] is True and report["reconnects"] == 0
