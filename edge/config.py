"""The device config file (TOML), validated once at start.

A field technician edits this file by hand, so every error names the key that
is wrong (``driver.site_type: …``) and unknown keys are refused rather than
silently ignored (a typo must not fall back to a default).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from edge.drivers.base import Driver
from farm_contract.catalog import SiteType
from farm_contract.settings import parse_mqtt_url
from farm_contract.topics import ID_PATTERN


class ConfigError(ValueError):
    """A config file that cannot be used; one line per problem, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulatedDriverConfig(_Strict):
    """``[driver] kind = "simulated"``: a simulated site (demos, tests, bench)."""

    kind: Literal["simulated"]
    site_type: SiteType
    seed: int = 0
    area_mu: float | None = Field(default=None, gt=0)
    large_scale: bool = True
    metrics: list[str] | None = None

    def build(self) -> Driver:
        from edge.drivers.simulated import SimulatedDriver

        return SimulatedDriver(
            self.site_type, self.seed, area_mu=self.area_mu, large_scale=self.large_scale,
            metrics=self.metrics,
        )


DriverConfig = SimulatedDriverConfig
"""Becomes a union discriminated by ``kind`` when a second driver kind (Modbus…) arrives."""


class DeviceConfig(_Strict):
    """One device: who it is, where it publishes, what it reads and how often."""

    device_id: str = Field(pattern=ID_PATTERN)
    site_id: str = Field(pattern=ID_PATTERN)
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    """Defaults to ``device_id`` (the broker's ACL keys on it)."""
    password: SecretStr | None = None
    topic_prefix: str = Field(default="farm", pattern=r"^[A-Za-z0-9_-]+$")
    sample_interval_s: float = Field(default=60, gt=0, le=86400)
    state_dir: Path | None = None
    """Where the device keeps its ``seq`` counter across restarts (none: start at 0)."""
    ca_file: Path | None = None
    driver: DriverConfig

    @field_validator("mqtt_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parse_mqtt_url(value)
        return value

    @property
    def mqtt_username(self) -> str:
        return self.username or self.device_id


def _describe(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        if len(loc) >= 2 and loc[0] == "driver" and loc[1] == "simulated":
            loc = [loc[0], *loc[2:]]  # the discriminator's tag is not a key in the file
        where = ".".join(loc) or "(file)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{where}: {message}")
    return problems


def parse_config(text: str, source: str = "config") -> DeviceConfig:
    """Parse and validate TOML text; raise :class:`ConfigError` naming each bad key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    try:
        return DeviceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _describe(exc)) from None


def load_config(path: str | Path) -> DeviceConfig:
    """Read and validate a device config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    return parse_config(text, str(path))
