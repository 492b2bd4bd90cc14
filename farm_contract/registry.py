"""The registry (contract §5): which sites and devices exist, imported from CSV.

Operators keep these in spreadsheets, so the import is forgiving about what
spreadsheets do (a UTF-8 BOM, extra columns, blank lines, ``TRUE``/``yes``) and
strict about meaning: every problem is reported with its file, row and column.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Protocol, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from farm_contract.catalog import SiteType
from farm_contract.topics import DEV_EUI_RE, ID_PATTERN

SITES_FILE = "sites.csv"
DEVICES_FILE = "devices.csv"
SITE_COLUMNS = (
    "site_id",
    "name",
    "county",
    "site_type",
    "lat",
    "lon",
    "large_scale",
    "area_mu",
    "water_quota_m3_per_mu",
    "valid_from",
)
DEVICE_COLUMNS = ("device_id", "site_id", "dev_eui", "model", "valid_from")
REGISTRY_TZ = ZoneInfo("Asia/Shanghai")
"""``valid_from`` dates are days in Datong's zone: a row applies from that day's 00:00 there."""
_REQUIRED_SITE_COLUMNS = ("site_id", "name", "county", "site_type", "lat", "lon")
_REQUIRED_DEVICE_COLUMNS = ("device_id", "site_id")

_TRUE = {"true", "yes", "y", "1", "是"}
_FALSE = {"false", "no", "n", "0", "否", ""}


def _blank_to_none(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        return None
    return value.strip() if isinstance(value, str) else value


def _to_bool(value: object) -> object:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    return value


OptionalFloat = Annotated[float | None, BeforeValidator(_blank_to_none)]


def _iso_day(value: object) -> object:
    value = _blank_to_none(value)
    if isinstance(value, str):
        day = None
        if len(value) == 10:
            with contextlib.suppress(ValueError):
                day = date.fromisoformat(value)
        if day is None:
            raise ValueError(f"valid_from must be a date YYYY-MM-DD, got {value!r}")
        return day
    return value


ValidFrom = Annotated[date | None, BeforeValidator(_iso_day)]
"""The first day (Asia/Shanghai) a registry row applies; blank: it applies to all time."""


class Site(BaseModel):
    """A field site: a drip-irrigation field, a livestock farm or a straw site."""

    model_config = ConfigDict(frozen=True)

    site_id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1)
    county: str = Field(min_length=1)
    site_type: SiteType
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    large_scale: Annotated[bool, BeforeValidator(_to_bool)] = False
    area_mu: OptionalFloat = Field(default=None, ge=0)
    water_quota_m3_per_mu: OptionalFloat = Field(default=None, ge=0)
    valid_from: ValidFrom = None

    @field_validator("name", "county", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value


class Device(BaseModel):
    """A field device; it publishes under its own ``device_id`` at its ``site_id``."""

    model_config = ConfigDict(frozen=True)

    device_id: str = Field(pattern=ID_PATTERN)
    site_id: str = Field(pattern=ID_PATTERN)
    dev_eui: Annotated[str | None, BeforeValidator(_blank_to_none)] = None
    model: str = ""
    valid_from: ValidFrom = None

    @field_validator("dev_eui")
    @classmethod
    def _eui(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not DEV_EUI_RE.match(value):
            raise ValueError("dev_eui must be 16 hex digits")
        return value.lower()


class RegistryError(ValueError):
    """Everything wrong with a registry import, one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _read_text(source: str | Path, label: str) -> str:
    if isinstance(source, str):
        return source
    try:
        return source.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RegistryError([f"{label}: cannot read CSV: {exc}"]) from None


def _blank(row: list[str]) -> bool:
    return len(row) <= 1 and not (row[0].strip() if row else "")


def _header(names: list[str]) -> list[str]:
    """Column names as a spreadsheet tool means them: trimmed, lower case, unnamed and
    repeated columns kept apart (``Unnamed: 3``, ``site_id.1``) so they cannot shadow."""
    seen: dict[str, int] = {}
    result = []
    for index, raw in enumerate(names):
        name = raw.strip().lstrip("\ufeff") or f"Unnamed: {index}"
        if name in seen:
            seen[name] += 1
            name = f"{name}.{seen[name]}"
        else:
            seen[name] = 0
        result.append(name.lower())
    return result


def _read_csv(source: str | Path, label: str, required: Iterable[str]) -> list[dict[str, str]]:
    """Rows of a CSV as dicts of column → text (missing trailing cells are empty).

    Forgiving the way spreadsheets need: a UTF-8 BOM, blank lines, spaces after commas
    and extra columns are fine; a row with more cells than the header is an error.
    """
    text = _read_text(source, label).removeprefix("\ufeff")
    rows: list[dict[str, str]] = []
    columns: list[str] | None = None
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    try:
        for cells in reader:
            if _blank(cells):
                continue
            if columns is None:
                columns = _header(cells)
                continue
            if len(cells) > len(columns):
                if any(cell.strip() for cell in cells[len(columns) :]):
                    raise RegistryError(
                        [
                            f"{label}: cannot read CSV: Expected {len(columns)} fields "
                            f"in line {reader.line_num}, saw {len(cells)}"
                        ]
                    )
                cells = cells[: len(columns)]
            row = dict(zip(columns, cells, strict=False))
            for column in columns[len(cells) :]:
                row[column] = ""
            rows.append(row)
    except csv.Error as exc:
        raise RegistryError([f"{label}: cannot read CSV: {exc}"]) from None
    if columns is None:
        raise RegistryError([f"{label}: cannot read CSV: No columns to parse from file"])
    missing = [column for column in required if column not in columns]
    if missing:
        raise RegistryError([f"{label}: missing column(s) {', '.join(missing)}"])
    return rows


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "row"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _cell(value: object) -> str:
    if value is None:
        return ""
    return str(value)


def _csv_text(columns: tuple[str, ...], rows: list[dict[str, object]]) -> str:
    handle = io.StringIO()
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_cell(row.get(column)) for column in columns] for row in rows)
    return handle.getvalue()


def _from(day: date | None) -> str:
    return f" from {day.isoformat()}" if day else ""


def _span(start: date | None, end: date | None) -> str:
    if start is None and end is None:
        return "always"
    if start is None:
        return f"until {end}"
    return f"from {start}" + (f" until {end}" if end else "")


class _Dated(Protocol):
    @property
    def valid_from(self) -> date | None: ...


Row = TypeVar("Row", bound=_Dated)


def _in_order(rows: Iterable[Row]) -> tuple[Row, ...]:
    """An id's rows, the undated one (all time) first, then by ``valid_from``."""
    return tuple(sorted(rows, key=lambda row: (row.valid_from is not None,
                                                row.valid_from or date.min)))


def _effective(history: Mapping[str, Sequence[Row]], day: date) -> dict[str, Row]:
    """Each id's row in effect on ``day``: its latest row dated on or before ``day``, else
    its undated row; an id whose rows all start after ``day`` does not exist yet."""
    result: dict[str, Row] = {}
    for key, rows in history.items():
        current = None
        for row in rows:
            if row.valid_from is None or row.valid_from <= day:
                current = row
        if current is not None:
            result[key] = current
    return result


def day_of(moment: datetime) -> date:
    """The registry day ``moment`` falls on (Asia/Shanghai)."""
    return moment.astimezone(REGISTRY_TZ).date()


def today() -> date:
    return datetime.now(REGISTRY_TZ).date()


@dataclass(frozen=True, slots=True)
class Period:
    """A stretch of days one registry row applies: ``start <= day < end`` (None: unbounded)."""

    start: date | None
    end: date | None
    site: Site


def _history_of(rows: Iterable[Row], key: str) -> dict[str, tuple[Row, ...]]:
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(getattr(row, key), []).append(row)
    return {name: _in_order(items) for name, items in grouped.items()}


@dataclass
class Registry:
    """Sites and devices in effect on one day (``as_of``, today by default), with the
    look-ups ingest needs on every message, and every row ever (the history, contract §5).

    ``sites`` and ``devices`` are the rows in effect on ``as_of``; ``site_history`` and
    ``device_history`` hold each id's rows, the undated one first, then by ``valid_from``.
    """

    sites: dict[str, Site] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)
    site_history: dict[str, tuple[Site, ...]] = field(default_factory=dict)
    device_history: dict[str, tuple[Device, ...]] = field(default_factory=dict)
    as_of: date | None = None

    def __post_init__(self) -> None:
        for site_id, site in self.sites.items():
            self.site_history.setdefault(site_id, (site,))
        for device_id, device in self.devices.items():
            self.device_history.setdefault(device_id, (device,))
        self.by_dev_eui: dict[str, Device] = {
            device.dev_eui: device for device in self.devices.values() if device.dev_eui
        }

    @classmethod
    def from_rows(
        cls, sites: Iterable[Site], devices: Iterable[Device], as_of: date | None = None
    ) -> Registry:
        """A registry of every row (several per id when dated), in effect on ``as_of``."""
        site_history = _history_of(sites, "site_id")
        device_history = _history_of(devices, "device_id")
        day = as_of or today()
        return cls(sites=_effective(site_history, day), devices=_effective(device_history, day),
                   site_history=site_history, device_history=device_history, as_of=day)

    def at(self, day: date) -> Registry:
        """The registry in effect on ``day`` (same history)."""
        return Registry(sites=_effective(self.site_history, day),
                        devices=_effective(self.device_history, day),
                        site_history=self.site_history, device_history=self.device_history,
                        as_of=day)

    def on(self, moment: datetime) -> Registry:
        """The registry in effect at ``moment`` (its day in Asia/Shanghai)."""
        return self.at(day_of(moment))

    @property
    def dated(self) -> bool:
        """True if some row has a ``valid_from``: the registry has a history."""
        return any(row.valid_from for rows in self.site_history.values() for row in rows) or any(
            row.valid_from for rows in self.device_history.values() for row in rows)

    def change_days(self) -> list[date]:
        """Every day on which some row takes effect, sorted."""
        days = {row.valid_from for rows in self.site_history.values() for row in rows}
        days |= {row.valid_from for rows in self.device_history.values() for row in rows}
        return sorted(day for day in days if day is not None)

    def periods(self, site_id: str) -> list[Period]:
        """The stretches of days each of a site's rows applies, oldest first."""
        rows = self.site_history.get(site_id, ())
        periods: list[Period] = []
        for index, row in enumerate(rows):
            end = rows[index + 1].valid_from if index + 1 < len(rows) else None
            periods.append(Period(row.valid_from, end, row))
        return periods

    def site_on(self, site_id: str, day: date) -> Site | None:
        """The row of ``site_id`` in effect on ``day``; None if it did not exist then."""
        return _effective({site_id: self.site_history.get(site_id, ())}, day).get(site_id)

    def device_on(self, device_id: str, day: date) -> Device | None:
        """The row of ``device_id`` in effect on ``day``; None if it did not exist then."""
        return _effective({device_id: self.device_history.get(device_id, ())}, day).get(device_id)

    @property
    def all_sites(self) -> list[Site]:
        """Every site row ever, id by id."""
        return [row for rows in self.site_history.values() for row in rows]

    @property
    def all_devices(self) -> list[Device]:
        """Every device row ever, id by id."""
        return [row for rows in self.device_history.values() for row in rows]

    def history_lines(self) -> list[str]:
        """The history read, one line per id that has dated rows, for ``check-registry``."""
        lines = []
        for site_id in self.site_history:
            periods = self.periods(site_id)
            if len(periods) > 1 or periods[0].start is not None:
                parts = [
                    f"{p.site.county}/{p.site.site_type}"
                    f"{'/large-scale' if p.site.large_scale else ''}"
                    f" {_span(p.start, p.end)}" for p in periods]
                lines.append(f"site {site_id}: " + "; ".join(parts))
        for device_id, rows in self.device_history.items():
            if len(rows) > 1 or rows[0].valid_from is not None:
                parts = []
                for index, row in enumerate(rows):
                    end = rows[index + 1].valid_from if index + 1 < len(rows) else None
                    parts.append(f"at {row.site_id} {_span(row.valid_from, end)}")
                lines.append(f"device {device_id}: " + "; ".join(parts))
        return lines

    def csv_text(self) -> tuple[str, str]:
        """``sites.csv`` and ``devices.csv`` as written by :meth:`write_dir`."""
        dated = self.dated  # an undated registry is written as it was read: no valid_from
        site_columns = SITE_COLUMNS if dated else SITE_COLUMNS[:-1]
        device_columns = DEVICE_COLUMNS if dated else DEVICE_COLUMNS[:-1]
        return (_csv_text(site_columns, [s.model_dump(mode="json") for s in self.all_sites]),
                _csv_text(device_columns, [d.model_dump(mode="json") for d in self.all_devices]))

    def digest(self) -> str:
        """SHA-256 of the whole history in canonical CSV: the registry version a figure used."""
        sites_csv, devices_csv = self.csv_text()
        return hashlib.sha256(f"{sites_csv}\0{devices_csv}".encode()).hexdigest()

    @classmethod
    def from_csv(
        cls, sites_csv: str | Path, devices_csv: str | Path, as_of: date | None = None
    ) -> Registry:
        """Import from CSV text or files; raise :class:`RegistryError` listing every problem.

        An id may appear on several rows with different ``valid_from`` dates (its history);
        two rows of one id with the same date (or both undated) are a duplicate.
        """
        problems: list[str] = []
        sites: dict[tuple[str, date | None], Site] = {}
        rows = _read_csv(sites_csv, SITES_FILE, _REQUIRED_SITE_COLUMNS)
        for index, row in enumerate(rows, start=2):
            values = {key: row[key] for key in SITE_COLUMNS if key in row}
            try:
                site = Site.model_validate(values)
            except ValidationError as exc:
                problems.append(f"{SITES_FILE} row {index}: {_describe(exc)}")
                continue
            key = (site.site_id, site.valid_from)
            if key in sites:
                problems.append(f"{SITES_FILE} row {index}: duplicate site_id {site.site_id}"
                                + _from(site.valid_from))
            sites[key] = site
        site_ids = {site_id for site_id, _ in sites}
        devices: dict[tuple[str, date | None], Device] = {}
        euis: dict[str, str] = {}
        rows = _read_csv(devices_csv, DEVICES_FILE, _REQUIRED_DEVICE_COLUMNS)
        for index, row in enumerate(rows, start=2):
            values = {key: row[key] for key in DEVICE_COLUMNS if key in row}
            try:
                device = Device.model_validate(values)
            except ValidationError as exc:
                problems.append(f"{DEVICES_FILE} row {index}: {_describe(exc)}")
                continue
            where = f"{DEVICES_FILE} row {index}"
            key = (device.device_id, device.valid_from)
            if key in devices:
                problems.append(f"{where}: duplicate device_id {device.device_id}"
                                + _from(device.valid_from))
            if device.site_id not in site_ids:
                problems.append(f"{where}: unknown site_id {device.site_id}")
            owner = euis.get(device.dev_eui or "")
            if device.dev_eui and owner is not None and owner != device.device_id:
                problems.append(f"{where}: dev_eui {device.dev_eui} already used by {owner}")
            if device.dev_eui:
                euis[device.dev_eui] = device.device_id
            devices[key] = device
        if problems:
            raise RegistryError(problems)
        return cls.from_rows(sites.values(), devices.values(), as_of)

    @classmethod
    def from_dir(cls, folder: str | Path) -> Registry:
        """Import ``sites.csv`` and ``devices.csv`` from ``folder``."""
        folder = Path(folder)
        for name in (SITES_FILE, DEVICES_FILE):
            if not (folder / name).is_file():
                raise RegistryError([f"{folder / name} does not exist"])
        return cls.from_csv(folder / SITES_FILE, folder / DEVICES_FILE)

    def write_dir(self, folder: str | Path) -> None:
        """Write the registry back as the two CSV files, history and all (used by the
        simulators and the API)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sites_csv, devices_csv = self.csv_text()
        (folder / SITES_FILE).write_text(sites_csv, encoding="utf-8")
        (folder / DEVICES_FILE).write_text(devices_csv, encoding="utf-8")

    @property
    def counties(self) -> list[str]:
        """The counties that have at least one site on ``as_of``, sorted."""
        return sorted({site.county for site in self.sites.values()})

    @property
    def counties_ever(self) -> list[str]:
        """The counties any site row ever named, sorted."""
        return sorted({site.county for site in self.all_sites})

    def sites_in(self, county: str | None = None) -> list[Site]:
        """Sites of one county, or all of them."""
        return [s for s in self.sites.values() if county is None or s.county == county]

    def large_scale_manure_sites(self, county: str | None = None) -> list[Site]:
        """The denominator of the manure indicators."""
        return [
            site
            for site in self.sites_in(county)
            if site.site_type == SiteType.MANURE and site.large_scale
        ]
