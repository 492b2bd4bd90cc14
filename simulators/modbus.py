"""A Modbus TCP server that plays the field devices of a Modbus device config.

``python -m simulators modbus`` lets the Modbus example (or any Modbus config) run
without hardware. The register map is read from the same config file the agent
reads, so the two cannot drift; the values come from edge's simulated site
(:class:`edge.drivers.simulated.SimulatedDriver`), so they stay inside the metric
catalog's ranges and cumulative counters never decrease. Each register holds its
value encoded as the config says a real device does (type, word order, scale,
offset), the inverse of :func:`edge.drivers.modbus.decode_registers`; addresses
the config does not map answer "illegal address", as a real device's gaps do.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Any

from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from edge.drivers.base import Readings
from edge.drivers.modbus import DATATYPE, ModbusDriverConfig, RegisterConfig
from edge.drivers.simulated import LOCAL, SimulatedDriver

log = logging.getLogger(__name__)

Table = str
"""``holding``, ``input``, ``coil`` or ``discrete``, as in ``[[driver.registers]]``."""

_TABLE_OF_FUNCTION: dict[int, Table] = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


_INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}


class SimulatorError(ValueError):
    """A register map the simulator cannot serve (e.g. two metrics on one register)."""


def encode_value(register: RegisterConfig, value: float | bool) -> list[int]:
    """The 16-bit words a device holds for an engineering value (bit tables: one 0/1).

    Raw = (value − offset) / scale, rounded for integer types and clamped to the
    type's range (a counter then stops at its ceiling instead of wrapping, which
    ingest would reject as ``counter_decreased``). A ``bit`` entry gives the word
    with just that bit set or clear; the caller merges entries sharing a word.
    """
    if register.table in ("coil", "discrete") or register.type == "bool":
        return [int(bool(value))]
    if register.bit is not None:
        return [int(bool(value)) << register.bit]
    raw = (float(value) - register.offset) / register.scale
    if register.type in _INT_RANGE:
        low, high = _INT_RANGE[register.type]
        number: int | float = min(high, max(low, round(raw)))
    else:
        number = raw
    words = ModbusClientMixin.convert_to_registers(
        number, DATATYPE[register.type], word_order=register.word_order)
    return list(words)


class SimulatedClock:
    """The simulated instant: ``start`` plus the real time since the clock was made.

    Whole seconds only, so every request of one poll sees the same values, and
    the simulated site's per-instant noise changes at most once a second. A
    ``start`` without a time zone is Datong's local time (UTC+8).
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime.now(UTC)
        if start.tzinfo is None:
            start = start.replace(tzinfo=timezone(LOCAL))
        self._start = start.astimezone(UTC)
        self._origin = time.monotonic()

    def __call__(self) -> datetime:
        elapsed = math.floor(time.monotonic() - self._origin)
        return (self._start + timedelta(seconds=elapsed)).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where one register map entry lives on the simulated bus."""

    unit_id: int
    table: Table
    address: int


class RegisterSimulator:
    """A simulated site's values at the clock's instant, in a config's register map."""

    def __init__(self, config: ModbusDriverConfig, *, seed: int = 0,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.clock = clock or SimulatedClock()
        self.site = SimulatedDriver(config.site_type, seed,
                                    metrics=[r.metric for r in config.registers])
        self._by_table: dict[tuple[int, Table], list[RegisterConfig]] = defaultdict(list)
        for register in config.registers:
            self._by_table[register.unit_id, register.table].append(register)
        self._check_overlaps()
        self._cache: tuple[datetime, Readings] | None = None

    def _check_overlaps(self) -> None:
        owner: dict[_Slot, RegisterConfig] = {}
        for register in self.config.registers:
            words = 1 if register.table in ("coil", "discrete") else register.words
            for step in range(words):
                slot = _Slot(register.unit_id, register.table, register.address + step)
                other = owner.get(slot)
                if other is not None and not (other.bit is not None and register.bit is not None
                                              and other.bit != register.bit):
                    raise SimulatorError(
                        f"{other.metric} and {register.metric} both use unit "
                        f"{slot.unit_id} {slot.table} {slot.address}")
                owner[slot] = register

    def values(self, now: datetime | None = None) -> Readings:
        """The engineering values the registers hold at ``now`` (default: the clock's)."""
        now = now or self.clock()
        if self._cache is None or self._cache[0] != now:
            self._cache = (now, self.site.read(now))
        return self._cache[1]

    def words(self, unit_id: int, table: Table, now: datetime | None = None
              ) -> dict[int, int]:
        """Address → word (register tables) or 0/1 (bit tables) of one unit's table."""
        values = self.values(now)
        words: dict[int, int] = {}
        for register in self._by_table.get((unit_id, table), []):
            for step, word in enumerate(encode_value(register, values[register.metric])):
                address = register.address + step
                words[address] = words.get(address, 0) | word
        return words

    @property
    def unit_ids(self) -> list[int]:
        return sorted({unit for unit, _ in self._by_table})

    def devices(self) -> list[SimDevice]:
        """pymodbus devices whose tables are refreshed from :meth:`words` on every request."""
        devices = []
        for unit in self.unit_ids:
            tables = []
            for table in ("coil", "discrete", "holding", "input"):
                addresses = sorted(self.words(unit, table))
                bits = table in ("coil", "discrete")
                if not addresses and bits:
                    # pymodbus wants a bit in every bit table: one at the top of the
                    # address space leaves the addresses a config uses unmapped
                    tables.append([SimData(65535, values=[False], datatype=DataType.BITS,
                                           readonly=True)])
                    continue
                if not addresses:
                    tables.append([SimData(0, datatype=DataType.INVALID)])
                    continue
                tables.append([
                    SimData(address, values=[False] if bits else [0],
                            datatype=DataType.BITS if bits else DataType.REGISTERS,
                            readonly=True)
                    for address in addresses
                ])
            devices.append(SimDevice(
                unit, simdata=(tables[0], tables[1], tables[2], tables[3]),
                action=partial(self._refresh, unit)))
        return devices

    async def _refresh(self, unit_id: int, function_code: int, start_address: int,
                       address: int, count: int, registers: list[int],
                       set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """pymodbus's per-request hook: write the current values into the table's memory."""
        table = _TABLE_OF_FUNCTION.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        for where, word in self.words(unit_id, table).items():
            if table in ("coil", "discrete"):
                # bit tables are packed 16 to a word, bit 0 first, from start_address·16
                index, bit = divmod(where - start_address * 16, 16)
                registers[index] = (registers[index] & ~(1 << bit)) | (word << bit)
            else:
                registers[where - start_address] = word
        return None

    def describe(self) -> str:
        """One line per unit: which metric sits where (for the start-up message)."""
        parts = []
        for unit in self.unit_ids:
            entries = [f"{r.metric}@{r.table}:{r.address}" for r in self.config.registers
                       if r.unit_id == unit]
            parts.append(f"unit {unit}: " + ", ".join(entries))
        return "; ".join(parts)


class _KnownUnits(dict[int, Any]):
    """pymodbus 3.16's device table, answering an unknown unit id as a gateway does.

    Its simulator looks a missing unit up as unit 0 and logs a KeyError traceback;
    raising :class:`NoSuchIdException` instead makes it answer "gateway target
    device failed to respond" (what a TCP gateway says for a ``unit_id`` with
    nothing on its bus) and log one line.
    """

    def __missing__(self, unit_id: int) -> Any:
        raise NoSuchIdException(f"no unit {unit_id} on this simulated bus")


def make_server(simulator: RegisterSimulator, host: str, port: int) -> ModbusTcpServer:
    """The TCP server for ``simulator`` (RTU framing for an ``rtu_over_tcp`` config).

    Needs a running event loop (pymodbus takes it at construction).
    """
    framer = (FramerType.RTU if simulator.config.transport == "rtu_over_tcp"
              else FramerType.SOCKET)
    server = ModbusTcpServer(simulator.devices(), address=(host, port), framer=framer)
    if isinstance(server.context, SimCore) and 0 not in server.context.devices:
        server.context.devices = _KnownUnits(server.context.devices)
    return server


async def serve(simulator: RegisterSimulator, host: str, port: int, stop: asyncio.Event,
                started: Callable[[], None] = lambda: None) -> None:
    """Serve until ``stop`` is set; ``started`` is called once the port is listening."""
    server = make_server(simulator, host, port)
    try:
        await server.serve_forever(background=True)
    except RuntimeError:
        server.close()
        raise OSError(f"cannot listen on {host}:{port} (in use, or not an address of "
                      "this machine); choose another with --port") from None
    started()
    try:
        await stop.wait()
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]
