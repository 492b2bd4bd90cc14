"""The Modbus driver against pymodbus's own server: TCP on loopback, RTU over a pty pair."""

from __future__ import annotations

import asyncio
import json
import os
import select
import threading
import time
import tty
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from devstack.servers import free_port
from edge.agent import Agent
from edge.config import DeviceConfig, ModbusDriverConfig, parse_config
from edge.drivers.modbus import ModbusDriver

NOW = datetime(2025, 6, 1, 8, tzinfo=UTC)
DT = ModbusTcpClient.DATATYPE


def words(value: float, kind: DT, order: str = "big") -> list[int]:
    """How a field device holds ``value`` in its registers."""
    return list(ModbusTcpClient.convert_to_registers(value, kind, word_order=order))  # type: ignore[arg-type]


def device(unit: int, *, coils: list[bool] | None = None, discrete: list[bool] | None = None,
           holding: list[int] | None = None, inputs: list[int] | None = None) -> SimDevice:
    """A Modbus device with separate coil, discrete, holding and input tables from address 0."""
    def bits(values: list[bool] | None) -> list[SimData]:
        return [SimData(0, values=values or [False], datatype=DataType.BITS)]

    def registers(values: list[int] | None) -> list[SimData]:
        return [SimData(0, values=values or [0], datatype=DataType.REGISTERS)]

    return SimDevice(unit, simdata=(bits(coils), bits(discrete), registers(holding),
                                    registers(inputs)))


# A flow meter (unit 1) and a soil probe (unit 2) on a drip field.
FLOW_METER = device(
    1, coils=[True],
    inputs=words(123.25, DT.FLOAT32) + words(1_234_567, DT.UINT32, "little"),
)
SOIL_PROBE = device(
    2, holding=[312, (-55) & 0xFFFF, 850, *words(2500, DT.INT32), *words(12.75, DT.FLOAT64)],
)
# A lagoon level sensor with a pump status word and a biogas meter (unit 3).
LEVEL_SENSOR = device(
    3, holding=[6543, 0b1000], inputs=words(87.125, DT.FLOAT64, "little"), discrete=[True],
)


class ServerThread:
    """A pymodbus server on its own asyncio loop in a thread (it needs a running loop)."""

    def __init__(self, make: Any) -> None:
        self._make = make
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._server = self._make()
            self._ready.set()
            await self._server.serve_forever()

        self._loop.run_until_complete(main())

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(5)
        time.sleep(0.2)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
        self._thread.join(10)


@pytest.fixture
def tcp_port() -> Iterator[int]:
    port = free_port()
    server = ServerThread(lambda: ModbusTcpServer(
        [FLOW_METER, SOIL_PROBE], address=("127.0.0.1", port)))
    server.start()
    yield port
    server.stop()


class PtyBridge:
    """Two pseudo-terminals joined back to back: a null-modem cable, like ``socat`` makes."""

    def __init__(self) -> None:
        self._m1, s1 = os.openpty()
        self._m2, s2 = os.openpty()
        for fd in (s1, s2):
            tty.setraw(fd)
        self.ends = (os.ttyname(s1), os.ttyname(s2))
        self._slaves = (s1, s2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._m1, self._m2], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                os.write(self._m2 if fd == self._m1 else self._m1, data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for fd in (self._m1, self._m2, *self._slaves):
            os.close(fd)


@pytest.fixture
def rtu_port() -> Iterator[str]:
    bridge = PtyBridge()
    server_end, client_end = bridge.ends
    server = ServerThread(lambda: ModbusSerialServer(
        [LEVEL_SENSOR], port=server_end, baudrate=19200, stopbits=2))
    server.start()
    yield client_end
    server.stop()
    bridge.close()


DRIP = """
device_id = "d-drip-9-1"
site_id = "drip-9"
state_dir = "{state}"

[driver]
kind = "modbus"
site_type = "drip"
transport = "tcp"
host = "127.0.0.1"
port = {port}
timeout_s = 1
retries = 0

[[driver.registers]]
metric = "flow_lpm"
unit_id = 1
table = "input"
address = 0
type = "float32"

[[driver.registers]]
metric = "volume_m3"
unit_id = 1
table = "input"
address = 2
type = "uint32"
word_order = "little"
scale = 0.001

[[driver.registers]]
metric = "valve_open"
unit_id = 1
table = "coil"
address = 0
type = "bool"

[[driver.registers]]
metric = "soil_moisture_vwc"
unit_id = 2
address = 0
scale = 0.001

[[driver.registers]]
metric = "soil_temp_c"
unit_id = 2
address = 1
type = "int16"
scale = 0.1

[[driver.registers]]
metric = "soil_ec_ds_m"
unit_id = 2
address = 2
scale = 0.001

[[driver.registers]]
metric = "pressure_kpa"
unit_id = 2
address = 3
type = "int32"
scale = 0.1
offset = -50

[[driver.registers]]
metric = "battery_v"
unit_id = 2
address = 5
type = "float64"
"""

MANURE = """
device_id = "d-farm-9-1"
site_id = "farm-9"
state_dir = "{state}"

[driver]
kind = "modbus"
site_type = "manure"
transport = "rtu"
serial_port = "{port}"
baudrate = 19200
stopbits = 2  # a pty refuses parity bits, so the line settings vary here instead
timeout_s = 1
retries = 1

[[driver.registers]]
metric = "lagoon_level_pct"
unit_id = 3
address = 0
scale = 0.01

[[driver.registers]]
metric = "pump_on"
unit_id = 3
address = 1
bit = 3

[[driver.registers]]
metric = "separator_on"
unit_id = 3
address = 1
bit = 0

[[driver.registers]]
metric = "biogas_m3h"
unit_id = 3
table = "input"
address = 0
type = "float64"
word_order = "little"
"""


def modbus(config: DeviceConfig) -> ModbusDriverConfig:
    assert isinstance(config.driver, ModbusDriverConfig)
    return config.driver


@pytest.mark.integration
def test_tcp_driver_reads_engineering_values(tcp_port: int, tmp_path: Path) -> None:
    config = parse_config(DRIP.format(port=tcp_port, state=tmp_path))
    driver = ModbusDriver(modbus(config))
    try:
        readings = driver.read(NOW)
    finally:
        driver.close()
    assert readings == {
        "flow_lpm": 123.25,
        "volume_m3": pytest.approx(1234.567),
        "valve_open": True,
        "soil_moisture_vwc": pytest.approx(0.312),
        "soil_temp_c": pytest.approx(-5.5),
        "soil_ec_ds_m": pytest.approx(0.85),
        "pressure_kpa": pytest.approx(200.0),
        "battery_v": 12.75,
    }
    assert not driver.errors
    assert driver.events(NOW) == []


@pytest.mark.integration
def test_rtu_driver_over_a_serial_line(rtu_port: str, tmp_path: Path) -> None:
    config = parse_config(MANURE.format(port=rtu_port, state=tmp_path))
    driver = ModbusDriver(modbus(config))
    try:
        readings = driver.read(NOW)
    finally:
        driver.close()
    assert readings == {"lagoon_level_pct": pytest.approx(65.43), "pump_on": True,
                        "separator_on": False, "biogas_m3h": 87.125}


@pytest.mark.integration
def test_a_bad_register_costs_only_its_metric(tcp_port: int, tmp_path: Path) -> None:
    text = DRIP.format(port=tcp_port, state=tmp_path).replace(
        'metric = "soil_temp_c"\nunit_id = 2\naddress = 1', 'metric = "soil_temp_c"\nunit_id = 2\n'
        'address = 900')
    driver = ModbusDriver(modbus(parse_config(text)))
    try:
        readings = driver.read(NOW)
    finally:
        driver.close()
    assert "soil_temp_c" not in readings and readings["flow_lpm"] == 123.25
    assert driver.errors == {"soil_temp_c": 1}


def test_no_device_on_the_line_gives_no_readings(tmp_path: Path) -> None:
    driver = ModbusDriver(modbus(parse_config(DRIP.format(port=free_port(), state=tmp_path))))
    assert driver.read(NOW) == {}
    assert driver.errors["(connect)"] == 1
    driver.close()


@pytest.mark.integration
def test_agent_stores_modbus_readings_in_its_outbox(tcp_port: int, tmp_path: Path) -> None:
    """The agent's sample goes to the outbox first, as a contract record with the values."""
    agent = Agent(parse_config(DRIP.format(port=tcp_port, state=tmp_path)))
    try:
        assert agent.sample(NOW) == 1
        assert agent.outbox is not None
        [record] = agent.outbox.oldest(10)
    finally:
        agent.driver.close()
        if agent.outbox is not None:
            agent.outbox.close()
    body = json.loads(record.body)
    assert body["seq"] == 0 and body["readings"]["flow_lpm"] == 123.25
    assert body["readings"]["valve_open"] is True
