"""A simulated year in real servers, shared by the dashboard and report tests.

Real Mosquitto and InfluxDB, the ingest service in-process (indicators not
published in the background, so the test decides when), the ``test-small``
scenario back-filled through MQTT, then the indicators of the scenario's year
written once and the telemetry roll-ups built to date — what a running system
holds at the end of that year.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from devstack.servers import Influxd, Mosquitto
from farm_contract.indicator_params import load_divisions
from ingest_service.indicators.publisher import IndicatorPublisher
from ingest_service.service import IngestService
from ingest_service.settings import Settings
from ingest_service.telemetry.rollups import TelemetryRollups, TelemetryRollupSettings
from simulators.fleet import FleetReport, build_registry, run_backfill
from simulators.scenario import Scenario, load_scenario
from tests.helpers import wait_for


@dataclass
class SimulatedYear:
    scenario: Scenario
    influxd: Influxd
    service: IngestService
    report: FleetReport

    @property
    def counties(self) -> list[str]:
        """The counties with sites (the registry's)."""
        return build_registry(self.scenario).counties

    @property
    def listed_counties(self) -> list[str]:
        """The counties the indicators list: Datong's ten divisions, with sites or not."""
        return load_divisions().listed(self.counties)


def rollup_settings(year: int) -> TelemetryRollupSettings:
    """Every closed day from November of the scenario's year on, in one cycle: enough for
    every dashboard range over the year (its last two months hold data at daily and
    hourly resolution), and bounded however long ago the year was."""
    horizon = (datetime.now(UTC).date() - date(year, 11, 1)).days
    return TelemetryRollupSettings(days_per_cycle=10_000, budget_s=1e9, horizon_days=horizon)


@contextmanager
def simulated_year(folder: Path, scenario_name: str = "test-small",
                   telemetry_rollups: bool = False) -> Iterator[SimulatedYear]:
    """Start everything in ``folder``, back-fill the year, publish its indicators once,
    and if asked build the telemetry roll-ups (:func:`rollup_settings`)."""
    scenario = load_scenario(scenario_name)
    mosquitto, influxd = Mosquitto(folder / "mosquitto"), Influxd(folder / "influxd")
    mosquitto.start()
    influxd.start()
    influxd.query("CREATE DATABASE farm")
    registry_dir = folder / "registry"
    build_registry(scenario).write_dir(registry_dir)
    settings = Settings(mqtt_url=mosquitto.url, registry_dir=registry_dir,
                        influx_url=influxd.url, influx_api="v1")
    service = IngestService(settings, publish_indicators=False)
    try:
        service.start()
        assert service.input.wait_connected(10)
        report = run_backfill(scenario, mosquitto.url)
        assert report.completed and report.refused == 0
        wait_for(lambda: service.state.stats.received >= report.published, timeout=120)
        publisher = IndicatorPublisher(service.engine, service.writer, settings,
                                       years=lambda: [scenario.year])
        assert publisher.publish_once() > 0
        if telemetry_rollups:
            rollups = TelemetryRollups(service.query, service.writer, settings.tz,
                                       rollup_settings(scenario.year))
            cycle = rollups.maintain_once()
            assert cycle.pending_days == 0 and cycle.days_built, cycle
        yield SimulatedYear(scenario, influxd, service, report)
    finally:
        service.stop()
        mosquitto.stop()
        influxd.stop()
