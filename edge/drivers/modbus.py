"""Modbus RTU and TCP field devices (flow meters, soil probes, level sensors) via pymodbus.

The register map comes from the device config (``[driver]`` with
``[[driver.registers]]``, defined here as :class:`ModbusDriverConfig`): for
each metric its unit id, table, address, data type, word order, scale and
offset. Every metric is read on its own request: field devices often refuse a
read that spans an unmapped gap, and a bad register must cost only its own
metric. A metric that cannot be read is left out of that sample (and counted)
rather than guessed; if the link is down the driver reconnects on the next poll.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from decimal import Decimal
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from edge.config_section import ConfigSection
from edge.drivers.base import DriverEvent, Readings
from farm_contract.catalog import CATALOG, SiteType

log = logging.getLogger(__name__)

RegisterType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool"
]
_WORDS = {"int16": 1, "uint16": 1, "bool": 1, "int32": 2, "uint32": 2, "float32": 2,
          "int64": 4, "uint64": 4, "float64": 4}


class RegisterConfig(ConfigSection):
    """``[[driver.registers]]``: where one metric lives on a Modbus device, and its scaling.

    Engineering value = raw × ``scale`` + ``offset``. Coils and discrete inputs,
    a register read as ``bool`` (non-zero) or one ``bit`` of a register give booleans.
    """

    metric: str
    unit_id: int = Field(default=1, ge=0, le=247)
    table: Literal["holding", "input", "coil", "discrete"] = "holding"
    address: int = Field(ge=0, le=65535)
    type: RegisterType = "uint16"
    word_order: Literal["big", "little"] = "big"
    bit: int | None = Field(default=None, ge=0, le=15)
    scale: float = 1.0
    offset: float = 0.0

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in CATALOG:
            raise ValueError(f"{value!r} is not in the metric catalog")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        is_bool = CATALOG[self.metric].is_bool
        bits = self.table in ("coil", "discrete")
        if bits and self.type != "bool":
            raise ValueError(f"type: a {self.table} holds one bit; type must be \"bool\"")
        if self.bit is not None and (bits or self.type not in ("uint16", "int16", "bool")):
            raise ValueError("bit: picks one bit of a 16-bit register (type uint16)")
        gives_bool = bits or self.type == "bool" or self.bit is not None
        if is_bool != gives_bool:
            want = "a boolean (coil, discrete, type bool or bit)" if is_bool else "a number"
            raise ValueError(f"type: {self.metric} needs {want}")
        return self

    @property
    def words(self) -> int:
        return _WORDS[self.type]


class ModbusDriverConfig(ConfigSection):
    """``[driver] kind = "modbus"``: field devices on a Modbus TCP network or RS-485 bus."""

    kind: Literal["modbus"]
    site_type: SiteType
    transport: Literal["tcp", "rtu", "rtu_over_tcp"] = "tcp"
    host: str | None = None
    port: int = Field(default=502, ge=1, le=65535)
    serial_port: str | None = None
    baudrate: int = Field(default=9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    retries: int = Field(default=1, ge=0, le=10)
    registers: list[RegisterConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _where(self) -> Self:
        if self.transport == "rtu" and not self.serial_port:
            raise ValueError("serial_port: transport rtu needs one (e.g. /dev/ttyUSB0)")
        if self.transport != "rtu" and not self.host:
            raise ValueError(f"host: transport {self.transport} needs one")
        seen: set[str] = set()
        for index, register in enumerate(self.registers):
            if register.metric in seen:
                raise ValueError(f"registers.{index}.metric: {register.metric} is mapped twice")
            seen.add(register.metric)
            if not CATALOG[register.metric].allowed_at(self.site_type):
                raise ValueError(f"registers.{index}.metric: {register.metric} is not a metric of "
                                 f"{self.site_type.value} sites")
        return self

    def build(self) -> ModbusDriver:
        return ModbusDriver(self)

DATATYPE = {
    "int16": ModbusClientMixin.DATATYPE.INT16,
    "uint16": ModbusClientMixin.DATATYPE.UINT16,
    "int32": ModbusClientMixin.DATATYPE.INT32,
    "uint32": ModbusClientMixin.DATATYPE.UINT32,
    "int64": ModbusClientMixin.DATATYPE.INT64,
    "uint64": ModbusClientMixin.DATATYPE.UINT64,
    "float32": ModbusClientMixin.DATATYPE.FLOAT32,
    "float64": ModbusClientMixin.DATATYPE.FLOAT64,
}
"""A register's ``type`` → pymodbus' codec for it (the simulator encodes with the same)."""


def decode_registers(register: RegisterConfig, words: list[int]) -> float | bool:
    """The engineering value of a register map entry from its raw 16-bit words."""
    if register.bit is not None:
        return bool((words[0] >> register.bit) & 1)
    if register.type == "bool":
        return words[0] != 0
    raw = ModbusClientMixin.convert_from_registers(
        words, DATATYPE[register.type], word_order=register.word_order
    )
    assert isinstance(raw, int | float)
    value = float(raw) * register.scale + register.offset
    if isinstance(raw, int):
        # 221 × 0.1 is 22.100000000000001 in binary; the device meant 22.1
        return round(value, _decimals(register.scale, register.offset))
    return value


def _decimals(*numbers: float) -> int:
    """Decimal places of a register's resolution: an integer times 0.001 has three."""
    places = 0
    for number in numbers:
        exponent = Decimal(repr(number)).as_tuple().exponent
        if isinstance(exponent, int):
            places = max(places, -exponent)
    return places


def make_client(config: ModbusDriverConfig) -> ModbusTcpClient | ModbusSerialClient:
    """A pymodbus client for the configured transport (not yet connected)."""
    if config.transport == "rtu":
        assert config.serial_port is not None
        return ModbusSerialClient(
            config.serial_port, framer=FramerType.RTU, baudrate=config.baudrate,
            bytesize=config.bytesize, parity=config.parity, stopbits=config.stopbits,
            timeout=config.timeout_s, retries=config.retries,
        )
    assert config.host is not None
    framer = FramerType.RTU if config.transport == "rtu_over_tcp" else FramerType.SOCKET
    return ModbusTcpClient(config.host, port=config.port, framer=framer,
                           timeout=config.timeout_s, retries=config.retries)


class ModbusDriver:
    """Polls a register map; readings in engineering units, named as in the catalog."""

    def __init__(self, config: ModbusDriverConfig,
                 client: ModbusTcpClient | ModbusSerialClient | None = None) -> None:
        self.config = config
        self.client = client if client is not None else make_client(config)
        self.errors: Counter[str] = Counter()
        """Failed reads per metric since start (a flaky sensor shows here and in the log)."""

    def read(self, now: datetime) -> Readings:
        """One pass over the register map; unreadable metrics are left out."""
        if not self.client.connected and not self.client.connect():
            log.warning("modbus: cannot connect to %s", self._where())
            self.errors["(connect)"] += 1
            return {}
        readings: Readings = {}
        for register in self.config.registers:
            try:
                value = self._read_one(register)
            except ModbusException as exc:
                self.errors[register.metric] += 1
                log.warning("modbus: %s (unit %d, %s %d): %s", register.metric,
                            register.unit_id, register.table, register.address, exc)
                if not self.client.connected:
                    break  # the link is gone: the rest would fail the same way
                continue
            if value is not None:
                readings[register.metric] = value
        return readings

    def _read_one(self, register: RegisterConfig) -> float | bool | None:
        client, unit, address = self.client, register.unit_id, register.address
        if register.table == "coil":
            response = client.read_coils(address, count=1, device_id=unit)
        elif register.table == "discrete":
            response = client.read_discrete_inputs(address, count=1, device_id=unit)
        elif register.table == "input":
            response = client.read_input_registers(address, count=register.words, device_id=unit)
        else:
            response = client.read_holding_registers(address, count=register.words,
                                                     device_id=unit)
        if response.isError():
            self.errors[register.metric] += 1
            log.warning("modbus: %s (unit %d, %s %d): device answered %s", register.metric,
                        unit, register.table, address, response)
            return None
        if register.table in ("coil", "discrete"):
            return bool(response.bits[0])
        return decode_registers(register, list(response.registers))

    def _where(self) -> str:
        if self.config.transport == "rtu":
            return f"{self.config.serial_port} @ {self.config.baudrate} baud"
        return f"{self.config.host}:{self.config.port}"

    def events(self, now: datetime) -> list[DriverEvent]:
        """Modbus sensors report measurements only; events come from people and ledgers."""
        return []

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]
