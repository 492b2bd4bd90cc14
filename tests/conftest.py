"""Shared fixtures: real Mosquitto and InfluxDB processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.servers import Influxd, Mosquitto
from tests.influx_v2_shim import InfluxV2Shim


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real, anonymous Mosquitto with persistence, stopped after the test."""
    server = Mosquitto(tmp_path / "mosquitto")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[Influxd]:
    """A real InfluxDB 1.x with an empty ``farm`` database, stopped after the test."""
    server = Influxd(tmp_path / "influxd")
    server.start()
    server.query("CREATE DATABASE farm")
    yield server
    server.stop()


@pytest.fixture
def v2_shim(influxd: Influxd) -> Iterator[InfluxV2Shim]:
    """The v2 write API in front of the real InfluxDB 1.x (test-only; see the module)."""
    shim = InfluxV2Shim(influxd.url)
    shim.start()
    yield shim
    shim.stop()
