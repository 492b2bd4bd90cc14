"""The registry (contract §5): which sites and devices exist, imported from CSV.

Operators keep these in spreadsheets, so the import is forgiving about what
spreadsheets do (a UTF-8 BOM, extra columns, blank lines, ``TRUE``/``yes``) and
strict about meaning: every problem is reported with its file, row and column.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

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
)
DEVICE_COLUMNS = ("device_id", "site_id", "dev_eui", "model")
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


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, object]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(row.get(column)) for column in columns] for row in rows)


@dataclass
class Registry:
    """Sites and devices, with the look-ups ingest needs on every message."""

    sites: dict[str, Site] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_dev_eui: dict[str, Device] = {
            device.dev_eui: device for device in self.devices.values() if device.dev_eui
        }

    @classmethod
    def from_csv(cls, sites_csv: str | Path, devices_csv: str | Path) -> Registry:
        """Import from CSV text or files; raise :class:`RegistryError` listing every problem."""
        problems: list[str] = []
        sites: dict[str, Site] = {}
        rows = _read_csv(sites_csv, SITES_FILE, _REQUIRED_SITE_COLUMNS)
        for index, row in enumerate(rows, start=2):
            values = {key: row[key] for key in SITE_COLUMNS if key in row}
            try:
                site = Site.model_validate(values)
            except ValidationError as exc:
                problems.append(f"{SITES_FILE} row {index}: {_describe(exc)}")
                continue
            if site.site_id in sites:
                problems.append(f"{SITES_FILE} row {index}: duplicate site_id {site.site_id}")
            sites[site.site_id] = site
        devices: dict[str, Device] = {}
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
            if device.device_id in devices:
                problems.append(f"{where}: duplicate device_id {device.device_id}")
            if device.site_id not in sites:
                problems.append(f"{where}: unknown site_id {device.site_id}")
            if device.dev_eui and device.dev_eui in euis:
                problems.append(
                    f"{where}: dev_eui {device.dev_eui} already used by {euis[device.dev_eui]}"
                )
            if device.dev_eui:
                euis[device.dev_eui] = device.device_id
            devices[device.device_id] = device
        if problems:
            raise RegistryError(problems)
        return cls(sites=sites, devices=devices)

    @classmethod
    def from_dir(cls, folder: str | Path) -> Registry:
        """Import ``sites.csv`` and ``devices.csv`` from ``folder``."""
        folder = Path(folder)
        for name in (SITES_FILE, DEVICES_FILE):
            if not (folder / name).is_file():
                raise RegistryError([f"{folder / name} does not exist"])
        return cls.from_csv(folder / SITES_FILE, folder / DEVICES_FILE)

    def write_dir(self, folder: str | Path) -> None:
        """Write the registry back as the two CSV files (used by the simulators and the API)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        site_rows = [site.model_dump(mode="json") for site in self.sites.values()]
        _write_csv(folder / SITES_FILE, SITE_COLUMNS, site_rows)
        device_rows = [device.model_dump(mode="json") for device in self.devices.values()]
        _write_csv(folder / DEVICES_FILE, DEVICE_COLUMNS, device_rows)

    @property
    def counties(self) -> list[str]:
        """The counties that have at least one site, sorted."""
        return sorted({site.county for site in self.sites.values()})

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
