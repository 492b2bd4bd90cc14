"""Device config: a valid file loads; every error names the key that is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, load_config, parse_config
from edge.drivers.simulated import SimulatedDriver

VALID = """
device_id = "d-yungang-drip-01-1"
site_id = "yungang-drip-01"
mqtt_url = "mqtt://127.0.0.1:1883"
sample_interval_s = 30

[driver]
kind = "simulated"
site_type = "drip"
seed = 7
"""


def test_valid_config_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_text(VALID, encoding="utf-8")
    config = load_config(path)
    assert config.mqtt_username == "d-yungang-drip-01-1"
    assert config.topic_prefix == "farm"
    assert config.sample_interval_s == 30
    driver = config.driver.build()
    assert isinstance(driver, SimulatedDriver) and driver.seed == 7


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (("device_id = \"d-yungang-drip-01-1\"", "device_id = \"Bad ID\""), "device_id"),
        (("site_type = \"drip\"", "site_type = \"orchard\""), "driver.site_type"),
        (("seed = 7", "seed = \"seven\""), "driver.seed"),
        (("kind = \"simulated\"", "kind = \"modbus\""), "driver.kind"),
        (("sample_interval_s = 30", "sample_interval_s = 0"), "sample_interval_s"),
        (("sample_interval_s = 30", "sampel_interval_s = 30"), "sampel_interval_s"),
        (("mqtt_url = \"mqtt://127.0.0.1:1883\"", "mqtt_url = \"http://x\""), "mqtt_url"),
        (("seed = 7", "seed = 7\nsede = 8"), "driver.sede"),
    ],
)
def test_errors_name_the_bad_key(change: tuple[str, str], key: str) -> None:
    text = VALID.replace(*change)
    assert text != VALID
    with pytest.raises(ConfigError) as info:
        parse_config(text, "device.toml")
    assert any(problem.startswith(f"{key}:") for problem in info.value.problems), info.value
    assert str(info.value).startswith("device.toml: ")


def test_missing_keys_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('device_id = "d-1"\n')
    keys = {problem.split(":")[0] for problem in info.value.problems}
    assert {"site_id", "driver"} <= keys


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("device_id = ")


def test_the_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "edge" / "device.example.toml"
    assert load_config(example).driver.site_type == "drip"
