"""``indicators`` and ``report`` on the command line fail loudly, in one line, when they
cannot make a true figure: no registry (every value would be n/a), an empty one, or an
InfluxDB that does not answer. An official must never get an empty workbook and exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.servers import Influxd, free_port
from tests.helpers import write_registry

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    return subprocess.run(
        [sys.executable, "-m", "ingest_service", *args], capture_output=True, text=True,
        timeout=120, cwd=ROOT, env={**clean, **env}, check=False,
    )


@pytest.mark.parametrize("command", [["indicators", "--year", "2025"],
                                     ["report", "--year", "2025", "--out", "unused"]])
def test_without_a_registry_it_says_what_to_set(command: list[str]) -> None:
    done = run_cli(*command, FARM_INFLUX_URL=f"http://127.0.0.1:{free_port()}")
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "set FARM_REGISTRY_DIR" in done.stderr


def test_an_empty_registry_is_refused(tmp_path: Path) -> None:
    folder = write_registry(tmp_path / "registry", sites="site_id,name,county,site_type,lat,lon\n",
                            devices="device_id,site_id,dev_eui,model\n")
    done = run_cli("indicators", "--year", "2025", FARM_REGISTRY_DIR=str(folder))
    assert done.returncode != 0 and "has no sites" in done.stderr, done.stderr


@pytest.mark.parametrize("command", [["indicators", "--year", "2025"],
                                     ["report", "--year", "2025", "--out", "unused"]])
def test_an_influxdb_that_does_not_answer_is_one_line(tmp_path: Path, command: list[str]) -> None:
    done = run_cli(*command, FARM_REGISTRY_DIR=str(write_registry(tmp_path / "registry")),
                   FARM_INFLUX_URL=f"http://127.0.0.1:{free_port()}", FARM_INFLUX_API="v1")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "does not answer" in done.stderr and "FARM_INFLUX_URL" in done.stderr
    assert not (tmp_path / "unused").exists()


@pytest.mark.integration
def test_with_both_it_prints_the_figures(tmp_path: Path, influxd: Influxd) -> None:
    done = run_cli("indicators", "--year", "2025",
                   FARM_REGISTRY_DIR=str(write_registry(tmp_path / "registry")),
                   FARM_INFLUX_URL=influxd.url, FARM_INFLUX_API="v1")
    assert done.returncode == 0, done.stderr
    assert '"indicator": "film_recovery_rate"' in done.stdout
    unknown = run_cli("indicators", "--year", "2025", "--county", "无此县",
                      FARM_REGISTRY_DIR=str(write_registry(tmp_path / "registry")),
                      FARM_INFLUX_URL=influxd.url, FARM_INFLUX_API="v1")
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr, unknown.stderr


def test_a_taken_api_port_names_the_setting(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = run_cli(FARM_API_PORT=str(port), FARM_API_HOST="127.0.0.1",
                       FARM_REGISTRY_DIR=str(write_registry(tmp_path / "registry")),
                       FARM_MQTT_URL=f"mqtt://127.0.0.1:{free_port()}")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "FARM_API_PORT" in done.stderr
