"""Settings (contract §6): environment variables with the ``FARM_`` prefix.

Only the variables in the contract's table are part of the contract; the rest
are tuning knobs with defaults that suit one small machine.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from farm_contract.indicator_params import Divisions, StrawParams, load_divisions, load_straw
from farm_contract.mqtt_url import MqttEndpoint, parse_mqtt_url

DEFAULT_CLIENT_ID = "farm-ingest"
"""Ingest's MQTT client id when ``FARM_MQTT_URL`` has no username."""


class Settings(BaseSettings):
    """Everything the ingest service, the API and the tools read from the environment."""

    model_config = SettingsConfigDict(env_prefix="FARM_", extra="ignore")
    _straw: StrawParams = PrivateAttr()
    _divisions: Divisions = PrivateAttr()

    # contract §6
    topic_prefix: str = Field(default="farm", pattern=r"^[A-Za-z0-9_-]+$")
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    influx_url: str = "http://127.0.0.1:8086"
    influx_api: Literal["v1", "v2"] = "v2"
    influx_token: SecretStr | None = None
    influx_org: str = ""
    influx_bucket: str = "farm"
    influx_db: str = "farm"
    influx_user: str | None = None
    influx_password: SecretStr | None = None
    registry_dir: Path | None = None
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    stale_hours: float = Field(default=24, gt=0)
    straw_ratios: dict[str, float] = Field(default_factory=dict)
    """City-wide straw-to-grain ratios overriding the parameter file's (JSON, by crop); once
    read, every crop's ratio in effect (the collectable coefficients are in :attr:`straw`)."""

    # the project's own
    api_token: SecretStr | None = None
    """Bearer token for API calls that change state; required to listen beyond loopback."""
    api_open_reads: bool = False
    """With a token set, let reads answer without it; allowed on a loopback API only."""
    api_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Host names the API answers to besides loopback's and ``api_host`` (comma-separated;
    ``*`` any): a Host check, so DNS rebinding cannot reach a loopback API."""
    timezone: str = "Asia/Shanghai"
    """Calendar years of the indicators are counted in this zone (Datong's)."""
    mqtt_client_id: str = ""
    """Empty: the MQTT username, so it matches a broker with ``use_username_as_clientid``
    (broker/mosquitto.conf); ``farm-ingest`` without a username."""
    mqtt_ca_file: Path | None = None
    mqtt_share_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    """Set on every ingest worker to share one subscription (MQTT v5 ``$share/group/…``)."""
    mqtt_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0, le=2**32 - 1)
    receive_maximum: int = Field(default=20000, ge=1, le=65535)
    """MQTT v5 receive maximum: how many unacknowledged messages the broker may send us."""
    max_held_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    """The input stops reading while the pipeline holds this many payload bytes (or
    ``receive_maximum`` messages, whichever comes first): memory bounded by size too."""
    mqtt_max_packet_size: int = Field(default=512 * 1024, ge=1024, le=268_435_460)
    """MQTT v5 Maximum Packet Size in ingest's CONNECT, and the most the input buffers for
    one packet; matches ``max_packet_size`` in broker/mosquitto.conf."""
    batch_size: int = Field(default=5000, ge=1)
    batch_interval_s: float = Field(default=0.2, gt=0)
    indicator_interval_s: float = Field(default=60, gt=0)
    publish_indicators: bool = True
    """Write the indicators to InfluxDB every ``indicator_interval_s``. With several ingest
    workers sharing a subscription, set false on all but one: they compute the same rows."""
    facility_min_days: int = Field(default=30, ge=1, le=366)
    """A large-scale farm is equipped in a year when its facility telemetry reported on this
    many days of it (pro rata while the year runs) ... (docs/indicators.md)."""
    fault_grace_days: float = Field(default=30, ge=0)
    """... and no facility fault stayed open longer than this many consecutive days in it."""
    film_recovery_until: str = Field(default="05-31", pattern=r"^\d{2}-\d{2}$")
    """``MM-DD``: a recovery without a ``season`` up to this day counts for the year before."""
    straw_params_file: Path | None = None
    """Straw ratios and collectable coefficients; default ``farm_contract/params/straw.toml``."""
    counties_file: Path | None = None
    """The county-level divisions always listed; default ``farm_contract/params/counties.toml``
    (Datong's ten)."""
    rollups: bool = True
    """Keep monthly roll-ups of the indicators' aggregates and read them for complete months
    (the worker that publishes indicators builds them; every worker reads them)."""
    telemetry_rollups: bool = True
    """Keep the hourly and daily telemetry roll-ups, county aggregates and last-seen state
    the dashboards read (contract §10); built by the worker that publishes indicators."""
    telemetry_rollup_horizon_days: int = Field(default=400, ge=1)
    """Closed days older than this are never rolled up: a first start over years of
    history stays bounded (the dashboards' longest range is a year)."""
    telemetry_rollup_budget_s: float = Field(default=20, gt=0)
    """A roll-up cycle starts no new group of closed days after this many seconds, so
    a first build is spread over cycles and never holds one up for long."""
    max_future_skew_s: float = Field(default=600, ge=0)
    earliest_ts: str = "2000-01-01T00:00:00Z"
    subscribe_chirpstack: bool = True
    influx_timeout_s: float = Field(default=30, gt=0)
    """A slower write is abandoned and retried (it may have landed; retries are idempotent)."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line, for log collectors."""
    broker_passwd_file: Path | None = None
    """Mosquitto password file that device provisioning (``POST /api/v1/devices``) writes."""
    broker_pid_file: Path | None = None
    """Mosquitto's ``pid_file``: provisioning sends it SIGHUP so the new password takes effect."""

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        parse_mqtt_url(value)
        return value

    @field_validator("influx_url")
    @classmethod
    def _influx_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("InfluxDB URL must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("api_allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [host.strip() for host in value.split(",") if host.strip()]
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        ZoneInfo(value)
        return value

    @field_validator("film_recovery_until")
    @classmethod
    def _month_day(cls, value: str) -> str:
        month, day = (int(part) for part in value.split("-"))
        date(2001, month, day)  # a real day of a common year (no 02-29)
        return value

    @model_validator(mode="after")
    def _params(self) -> Settings:
        """Read the parameter files once, so a broken one stops the service at start."""
        if any(ratio <= 0 for ratio in self.straw_ratios.values()):
            raise ValueError("straw-to-grain ratios must be positive")
        self._straw = load_straw(self.straw_params_file, self.straw_ratios)
        # every crop's ratio in effect, as readers of ``straw_ratios`` have always seen it
        self.straw_ratios = {crop: params.ratio for crop, params in self._straw.crops.items()}
        self._divisions = load_divisions(self.counties_file)
        return self

    @property
    def straw(self) -> StrawParams:
        """Straw ratios and collectable coefficients in effect (file, then ``straw_ratios``)."""
        return self._straw

    @property
    def divisions(self) -> Divisions:
        return self._divisions

    @model_validator(mode="after")
    def _client_id(self) -> Settings:
        if not self.mqtt_client_id:
            self.mqtt_client_id = self.mqtt.username or DEFAULT_CLIENT_ID
        return self

    @property
    def mqtt(self) -> MqttEndpoint:
        return parse_mqtt_url(self.mqtt_url)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)
