"""The device config file (TOML, or YAML by its extension), validated once at start.

A field technician edits this file by hand, so every error names the key that
is wrong (``driver.registers.2.type: …``) and unknown keys are refused rather
than silently ignored (a typo must not fall back to a default). :func:`load_config`
also checks the files the config names (TLS CA, certificate and key; the state
folder and outbox file) so that a missing one is a one-line error naming its key
and path at start, not an exception from deep in the MQTT client later. Each driver
defines its own ``[driver]`` table next to its code (:mod:`edge.drivers.modbus`,
:mod:`edge.drivers.simulated`); this module only assembles the file from them.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from edge.config_section import ConfigSection
from edge.drivers.modbus import ModbusDriverConfig, RegisterConfig
from edge.drivers.simulated import SimulatedDriverConfig
from edge.outbox import FullPolicy
from farm_contract.mqtt_url import parse_mqtt_url
from farm_contract.payloads import MAX_BATCH
from farm_contract.topics import ID_PATTERN

__all__ = [
    "ConfigError", "DeviceConfig", "DriverConfig", "ModbusDriverConfig", "OutboxConfig",
    "RegisterConfig", "SimulatedDriverConfig", "file_problems", "load_config", "parse_config",
]


class ConfigError(ValueError):
    """A config file that cannot be used; one line per problem, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.problems = problems


DriverConfig = Annotated[SimulatedDriverConfig | ModbusDriverConfig, Field(discriminator="kind")]


class OutboxConfig(ConfigSection):
    """``[outbox]``: the durable store-and-forward queue (see ``edge/outbox.py``)."""

    enabled: bool = True
    path: Path | None = None
    """Default: ``{state_dir}/{device_id}.outbox.sqlite``."""
    max_records: int = Field(default=100_000, ge=10, le=100_000_000)
    when_full: FullPolicy = FullPolicy.DROP_OLDEST
    replay_records_per_s: float = Field(default=500, ge=0)
    """Backlog replay rate; 0 means as fast as the broker acknowledges."""
    batch_records: int = Field(default=500, ge=1, le=MAX_BATCH)


class DeviceConfig(ConfigSection):
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
    """Where the device keeps its outbox (and ``seq`` counter) across restarts."""
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(default=60, ge=5, le=3600)
    reconnect_min_s: float = Field(default=1.0, gt=0, le=600)
    reconnect_max_s: float = Field(default=120.0, gt=0, le=3600)
    outbox: OutboxConfig = OutboxConfig()
    driver: DriverConfig

    @field_validator("mqtt_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parse_mqtt_url(value)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        tls = parse_mqtt_url(self.mqtt_url).tls
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(self, key) is not None and not tls:
                raise ValueError(f"{key}: only used with an mqtts:// mqtt_url")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("key_file: give cert_file and key_file together, or neither")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s: must not be below reconnect_min_s")
        if self.outbox.enabled and self.outbox.path is None and self.state_dir is None:
            raise ValueError("outbox.path: set outbox.path or state_dir (the outbox must be "
                             "on disk), or outbox.enabled = false")
        return self

    @property
    def outbox_path(self) -> Path | None:
        if not self.outbox.enabled:
            return None
        if self.outbox.path is not None:
            return self.outbox.path
        assert self.state_dir is not None
        return self.state_dir / f"{self.device_id}.outbox.sqlite"

    @property
    def mqtt_username(self) -> str:
        return self.username or self.device_id


def _describe(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        if len(loc) >= 2 and loc[0] == "driver" and loc[1] in ("simulated", "modbus"):
            loc = [loc[0], *loc[2:]]  # the discriminator's tag is not a key in the file
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "union_tag_invalid":
            loc, message = [*loc, "kind"], "must be \"simulated\" or \"modbus\""
        elif item["type"] == "union_tag_not_found":
            loc, message = [*loc, "kind"], "missing (\"simulated\" or \"modbus\")"
        key, sep, rest = message.partition(": ")
        if sep and key and " " not in key:
            # a cross-field check names its own key (``outbox.path: …``)
            loc, message = [*loc, *key.split(".")], rest
        where = ".".join(loc) or "(file)"
        problems.append(f"{where}: {message}")
    return problems


def parse_config(text: str, source: str = "config", *, yaml_format: bool = False
                 ) -> DeviceConfig:
    """Parse and validate TOML (or YAML) text; raise :class:`ConfigError` naming each bad key."""
    data: Any
    if yaml_format:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(source, [f"not valid YAML: {exc}"]) from None
        if not isinstance(data, dict):
            raise ConfigError(source, ["(file): expected a mapping of keys"])
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    try:
        return DeviceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _describe(exc)) from None


def _shown(path: Path) -> str:
    """A path as the user wrote it, and where it resolves when that is not obvious."""
    return str(path) if path.is_absolute() else f"{path} (= {path.absolute()})"


def _readable_file_problem(path: Path) -> str | None:
    if not path.exists():
        return f"{_shown(path)} does not exist"
    if not path.is_file():
        return f"{_shown(path)} is not a file"
    if not os.access(path, os.R_OK):
        return f"{_shown(path)} is not readable by this user"
    return None


def _writable_folder_problem(path: Path, what: str) -> str | None:
    """Whether ``path`` is, or can be created as, a folder this user can write in."""
    if path.exists():
        if not path.is_dir():
            return f"{_shown(path)} is not a folder ({what})"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{_shown(path)} is not writable by this user ({what})"
        return None
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return (f"{_shown(path)} does not exist and cannot be created: {parent} is not "
                f"writable by this user ({what})")
    return None


def _no_password() -> bytes:
    return b""  # an encrypted key fails here instead of prompting on a service's terminal


def _tls_problems(config: DeviceConfig) -> list[str]:
    problems = []
    for key in ("ca_file", "cert_file", "key_file"):
        path: Path | None = getattr(config, key)
        if path is not None and (problem := _readable_file_problem(path)):
            problems.append(f"{key}: {problem}")
    if problems:
        return problems
    context = ssl.create_default_context()
    if config.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(config.ca_file))
        except ssl.SSLError as exc:
            problems.append(f"ca_file: {config.ca_file} holds no PEM CA certificate "
                            f"({exc.reason or exc})")
    if config.cert_file is not None and config.key_file is not None:
        try:
            context.load_cert_chain(str(config.cert_file), str(config.key_file), _no_password)
        except ssl.SSLError as exc:
            problems.append(f"key_file: {config.cert_file} and {config.key_file} are not a PEM "
                            f"certificate and its unencrypted key ({exc.reason or exc})")
    return problems


def file_problems(config: DeviceConfig) -> list[str]:
    """What is wrong with the files and folders ``config`` names, one line per key."""
    problems = _tls_problems(config)
    outbox = config.outbox_path
    if config.state_dir is not None and (
        problem := _writable_folder_problem(config.state_dir, "the device's state")
    ):
        problems.append(f"state_dir: {problem}")
    if outbox is not None and config.outbox.path is not None:
        if outbox.exists() and not outbox.is_file():
            problems.append(f"outbox.path: {_shown(outbox)} is not a file")
        elif problem := _writable_folder_problem(outbox.parent, "the outbox's folder"):
            problems.append(f"outbox.path: {problem}")
    return problems


def load_config(path: str | Path, *, check_files: bool = True) -> DeviceConfig:
    """Read and validate a device config file (``.yaml``/``.yml``: YAML, otherwise TOML).

    With ``check_files`` (the agent's case) the files and folders it names must
    be usable here too; the Modbus simulator reads only the register map.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    config = parse_config(text, str(path), yaml_format=path.suffix.lower() in (".yaml", ".yml"))
    if check_files and (problems := file_problems(config)):
        raise ConfigError(str(path), problems)
    return config
