"""``python -m simulators modbus``: the Modbus example's registers, served for the real driver."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pymodbus.client import ModbusTcpClient

from devstack.servers import Mosquitto, free_port
from edge.agent import Agent
from edge.config import DeviceConfig, ModbusDriverConfig, RegisterConfig
from edge.drivers.modbus import ModbusDriver, decode_registers
from edge.drivers.simulated import local_time
from farm_contract.catalog import CATALOG
from simulators.modbus import (
    RegisterSimulator,
    SimulatorError,
    encode_value,
    make_server,
)
from tests.helpers import wait_for
from tests.test_edge_modbus import ServerThread
from tests.test_edge_publisher import Recorder

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "edge" / "device.modbus.example.toml"


def example(port: int, **top: Any) -> DeviceConfig:
    """The shipped Modbus example, pointed at ``port`` on loopback (plus top-level changes)."""
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    data["driver"].update(host="127.0.0.1", port=port)
    data.update(top)
    return DeviceConfig.model_validate(data)


def driver_config(config: DeviceConfig) -> ModbusDriverConfig:
    assert isinstance(config.driver, ModbusDriverConfig)
    return config.driver


def tolerance(register: RegisterConfig, expected: float) -> float:
    """How far a decoded value may be from the simulated one: the register's resolution."""
    if register.type == "float32":
        return abs(expected) * 1e-6 + 1e-9
    if register.type == "float64":
        return 1e-9
    return abs(register.scale) / 2 + 1e-9


class ManualClock:
    """The simulated instant, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def irrigating(simulator: RegisterSimulator) -> datetime:
    """The first 10-minute mark of July 2025 at which the simulated field is being watered."""
    start = local_time(2025, 182, 0)
    for step in range(31 * 24 * 6):
        now = start + timedelta(minutes=10 * step)
        if simulator.values(now)["valve_open"]:
            return now
    raise AssertionError("the simulated drip field never irrigates in July")


@pytest.fixture
def served() -> Iterator[tuple[RegisterSimulator, ManualClock, int]]:
    """The example's register map on a free loopback port, with a clock the test moves."""
    port = free_port()
    clock = ManualClock(datetime(2025, 1, 1, tzinfo=UTC))
    simulator = RegisterSimulator(driver_config(example(port)), clock=clock)
    clock.now = irrigating(simulator)
    server = ServerThread(lambda: make_server(simulator, "127.0.0.1", port))
    server.start()
    yield simulator, clock, port
    server.stop()


# -- the encoding: what a real device holds ------------------------------------------------


def register(**fields: Any) -> RegisterConfig:
    return RegisterConfig.model_validate({"metric": "flow_lpm", "address": 0, **fields})


def test_words_are_what_a_device_holds() -> None:
    """Known bytes, so a swapped word order cannot pass as a round trip with itself."""
    assert encode_value(register(type="float32"), 123.25) == [0x42F6, 0x8000]
    assert encode_value(register(type="float32", word_order="little"), 123.25) == [0x8000, 0x42F6]
    litres = register(metric="volume_m3", type="uint32", word_order="little", scale=0.001)
    assert encode_value(litres, 1234.567) == [0xD687, 0x0012]  # 1,234,567 = 0x0012D687
    tenths = register(metric="soil_temp_c", type="int16", scale=0.1)
    assert encode_value(tenths, -5.5) == [(-55) & 0xFFFF]
    assert encode_value(register(metric="flow_lpm", type="uint16", offset=-50, scale=0.5),
                        100.0) == [300]
    assert encode_value(register(metric="valve_open", table="coil", type="bool"), True) == [1]
    assert encode_value(register(metric="valve_open", bit=3), True) == [8]


def test_decoded_integers_carry_no_float_noise() -> None:
    """The agent sends 22.1, not 22.100000000000001 (seen in telemetry from the example)."""
    tenths = register(metric="soil_temp_c", type="int16", scale=0.1)
    assert repr(decode_registers(tenths, [221])) == "22.1"
    assert repr(decode_registers(tenths, [(-29) & 0xFFFF])) == "-2.9"
    thousandths = register(metric="soil_moisture_vwc", scale=0.001)
    assert repr(decode_registers(thousandths, [102])) == "0.102"
    quarters = register(metric="pressure_kpa", scale=0.25, offset=-50)
    assert decode_registers(quarters, [3]) == -49.25  # rounding keeps the resolution


def test_values_beyond_the_type_stop_at_its_limits() -> None:
    """A counter past a uint16's ceiling stays there rather than wrapping to 0 (a decrease)."""
    assert encode_value(register(metric="volume_m3", type="uint16"), 70_000) == [0xFFFF]
    assert encode_value(register(metric="soil_temp_c", type="uint16"), -3) == [0]


TYPES = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


@given(kind=st.sampled_from(TYPES), order=st.sampled_from(["big", "little"]),
       scale=st.sampled_from([1.0, 0.1, 0.01, 0.001]),
       value=st.floats(min_value=0, max_value=60, allow_nan=False))
def test_decode_inverts_encode(kind: str, order: str, scale: float, value: float) -> None:
    assume(kind not in ("int16", "uint16") or value / scale <= 32767)  # fits (see above)
    entry = register(metric="battery_v", type=kind, word_order=order, scale=scale)
    decoded = decode_registers(entry, encode_value(entry, value))
    assert isinstance(decoded, float)
    assert abs(decoded - value) <= tolerance(entry, value) + abs(value) * 1e-6


def test_two_metrics_on_one_register_are_refused() -> None:
    config = driver_config(example(5020))
    clash = config.model_copy(update={"registers": [
        *config.registers, register(metric="pressure_kpa", unit_id=1, table="input", address=1,
                                    type="uint16")]})
    with pytest.raises(SimulatorError, match="flow_lpm and pressure_kpa both use unit 1 input 1"):
        RegisterSimulator(clash)


# -- the real driver against the simulator ------------------------------------------------


@pytest.mark.integration
def test_driver_reads_the_simulated_values(
    served: tuple[RegisterSimulator, ManualClock, int],
) -> None:
    """Three polls a minute apart while the field is watered: each metric as simulated."""
    simulator, clock, port = served
    driver = ModbusDriver(driver_config(example(port)))
    volumes = []
    try:
        for _ in range(3):
            readings = driver.read(clock.now)
            expected = simulator.values(clock.now)
            assert set(readings) == {r.metric for r in driver.config.registers}
            for entry in driver.config.registers:
                value, want = readings[entry.metric], expected[entry.metric]
                assert CATALOG[entry.metric].check(value) is None
                if isinstance(want, bool):
                    assert value is want, entry.metric
                else:
                    assert isinstance(value, float)
                    assert abs(value - want) <= tolerance(entry, want), (entry.metric, value, want)
            volumes.append(readings["volume_m3"])
            clock.now += timedelta(minutes=1)
    finally:
        driver.close()
    assert not driver.errors
    assert readings["valve_open"] is True and readings["flow_lpm"] > 0
    assert volumes[0] < volumes[1] < volumes[2]  # water flows, so the totaliser counts up


@pytest.mark.integration
def test_unknown_units_and_unmapped_addresses_answer_like_a_gateway(
    served: tuple[RegisterSimulator, ManualClock, int],
) -> None:
    _, _, port = served
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    assert client.connect()
    try:
        absent = client.read_holding_registers(0, count=1, device_id=9)
        gap = client.read_holding_registers(3, count=1, device_id=2)
        write = client.write_register(0, 1, device_id=2)
        mapped = client.read_holding_registers(0, count=3, device_id=2)
    finally:
        client.close()
    assert absent.isError() and absent.exception_code == 0x0B  # gateway: target did not respond
    assert gap.isError() and gap.exception_code == 0x02  # illegal data address
    assert write.isError()  # sensors' registers are read-only
    assert not mapped.isError() and len(mapped.registers) == 3


@pytest.mark.integration
@pytest.mark.slow
def test_agent_publishes_the_simulated_readings(
    served: tuple[RegisterSimulator, ManualClock, int], mosquitto: Mosquitto, tmp_path: Path,
) -> None:
    """The whole agent on the example config: its telemetry carries the simulated values."""
    simulator, clock, port = served
    config = example(port, mqtt_url=mosquitto.url, state_dir=str(tmp_path),
                     sample_interval_s=0.3)
    recorder = Recorder(mosquitto.port)
    agent = Agent(config)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: len(recorder.kind("telemetry")) >= 3, timeout=20)
    finally:
        stop.set()
        thread.join(15)
        recorder.close()
    expected = simulator.values(clock.now)
    messages = recorder.kind("telemetry")
    assert all(m.topic == f"farm/v1/{config.site_id}/{config.device_id}/telemetry"
               for m in messages)
    for message in messages:
        readings = message.json()["readings"]
        for entry in driver_config(config).registers:
            want = expected[entry.metric]
            if isinstance(want, bool):
                assert readings[entry.metric] is want
            else:
                assert abs(readings[entry.metric] - want) <= tolerance(entry, want), entry.metric


# -- the command ---------------------------------------------------------------------------


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulators", "modbus", *args], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.integration
@pytest.mark.slow
def test_command_serves_the_example_and_stops_on_ctrl_c() -> None:
    port = free_port()
    process = start_cli("--port", str(port))
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        config = example(port)
        driver = ModbusDriver(driver_config(config))
        polls = []
        for _ in range(3):
            polls.append(driver.read(datetime.now(UTC)))
            time.sleep(1.05)
        driver.close()
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert f"127.0.0.1:{port}" in banner
    assert all(r.metric in banner for r in driver_config(config).registers), banner
    for readings in polls:
        assert set(readings) == {r.metric for r in driver_config(config).registers}
        assert all(CATALOG[name].check(value) is None for name, value in readings.items())
    volumes = [readings["volume_m3"] for readings in polls]
    assert volumes == sorted(volumes)
    assert process.returncode == 0, err
    assert "Traceback" not in err and "stopped" in out


@pytest.mark.integration
def test_command_names_the_port_it_cannot_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start_cli("--port", str(port))
        _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert err.strip().count("\n") == 0 and f"127.0.0.1:{port}" in err and "--port" in err, err


def test_command_refuses_a_config_without_a_modbus_driver() -> None:
    process = start_cli("--config", str(ROOT / "edge" / "device.example.toml"))
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2 and "driver.kind" in err and "Traceback" not in err, err

