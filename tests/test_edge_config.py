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
state_dir = "state"

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
        (("kind = \"simulated\"", "kind = \"canbus\""), "driver.kind"),
        (("sample_interval_s = 30", "sample_interval_s = 0"), "sample_interval_s"),
        (("sample_interval_s = 30", "sampel_interval_s = 30"), "sampel_interval_s"),
        (("mqtt_url = \"mqtt://127.0.0.1:1883\"", "mqtt_url = \"http://x\""), "mqtt_url"),
        (("seed = 7", "seed = 7\nsede = 8"), "driver.sede"),
        (("state_dir = \"state\"", ""), "outbox.path"),
        (("sample_interval_s = 30", "sample_interval_s = 30\nca_file = \"ca.crt\""), "ca_file"),
        (("sample_interval_s = 30", "reconnect_min_s = 9\nreconnect_max_s = 2"),
         "reconnect_max_s"),
        (("[driver]", "[outbox]\nwhen_full = \"panic\"\n[driver]"), "outbox.when_full"),
        (("[driver]", "[outbox]\nbatch_records = 5000\n[driver]"), "outbox.batch_records"),
        (("[driver]", "[outbox]\nmax_recods = 5\n[driver]"), "outbox.max_recods"),
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


def test_outbox_and_reconnect_defaults() -> None:
    config = parse_config(VALID)
    assert config.outbox.enabled and config.outbox.when_full == "drop_oldest"
    assert config.outbox_path == Path("state") / "d-yungang-drip-01-1.outbox.sqlite"
    assert config.reconnect_min_s == 1 and config.reconnect_max_s == 120


def test_outbox_can_be_disabled_or_placed() -> None:
    text = VALID.replace('state_dir = "state"', "").replace(
        "[driver]", '[outbox]\nenabled = false\n[driver]')
    assert parse_config(text).outbox_path is None
    placed = VALID.replace("[driver]", '[outbox]\npath = "/var/lib/farm/ob.sqlite"\n'
                           'max_records = 5000\nwhen_full = "reject_new"\n[driver]')
    config = parse_config(placed)
    assert config.outbox_path == Path("/var/lib/farm/ob.sqlite")
    assert config.outbox.max_records == 5000 and config.outbox.when_full == "reject_new"


def test_tls_client_certificate_needs_both_files() -> None:
    tls = VALID.replace("mqtt://127.0.0.1:1883", "mqtts://broker.example:8883")
    files = 'ca_file = "ca.crt"\ncert_file = "d.crt"\nkey_file = "d.key"'
    config = parse_config(tls.replace("sample_interval_s = 30", f"sample_interval_s = 30\n{files}"))
    assert config.cert_file == Path("d.crt") and config.key_file == Path("d.key")
    with pytest.raises(ConfigError) as info:
        parse_config(tls.replace("sample_interval_s = 30",
                                 'sample_interval_s = 30\ncert_file = "d.crt"'))
    assert info.value.problems[0].startswith("key_file:")


MODBUS = """
device_id = "d-drip-7-1"
site_id = "drip-7"
state_dir = "state"

[driver]
kind = "modbus"
site_type = "drip"
transport = "tcp"
host = "10.0.0.5"

[[driver.registers]]
metric = "flow_lpm"
unit_id = 1
address = 0
type = "float32"
word_order = "little"

[[driver.registers]]
metric = "valve_open"
table = "coil"
address = 3
type = "bool"
"""


def test_modbus_config_loads_and_builds() -> None:
    from edge.drivers.modbus import ModbusDriver

    config = parse_config(MODBUS)
    assert config.driver.kind == "modbus"
    driver = config.driver.build()
    assert isinstance(driver, ModbusDriver)
    assert [r.metric for r in driver.config.registers] == ["flow_lpm", "valve_open"]
    driver.close()


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (('type = "float32"', 'type = "float128"'), "driver.registers.0.type"),
        (('metric = "flow_lpm"', 'metric = "flow_gpm"'), "driver.registers.0.metric"),
        (('metric = "flow_lpm"', 'metric = "lagoon_level_pct"'), "driver.registers.0.metric"),
        (('metric = "valve_open"\ntable = "coil"\naddress = 3\ntype = "bool"',
          'metric = "flow_lpm"\naddress = 8\ntype = "float32"'), "driver.registers.1.metric"),
        (('type = "bool"', 'type = "uint16"'), "driver.registers.1.type"),
        (('type = "float32"', 'type = "bool"'), "driver.registers.0.type"),
        (('word_order = "little"', 'word_order = "middle"'), "driver.registers.0.word_order"),
        (('unit_id = 1', 'unit_id = 300'), "driver.registers.0.unit_id"),
        (('host = "10.0.0.5"', ''), "driver.host"),
        (('transport = "tcp"', 'transport = "rtu"'), "driver.serial_port"),
        (('address = 0', 'adress = 0'), "driver.registers.0.adress"),
    ],
)
def test_modbus_errors_name_the_bad_key(change: tuple[str, str], key: str) -> None:
    text = MODBUS.replace(*change)
    assert text != MODBUS
    with pytest.raises(ConfigError) as info:
        parse_config(text, "modbus.toml")
    assert any(problem.startswith(f"{key}:") for problem in info.value.problems), info.value


def test_yaml_config(tmp_path: Path) -> None:
    path = tmp_path / "device.yaml"
    path.write_text(
        "device_id: d-1\nsite_id: s-1\nstate_dir: state\n"
        "outbox: {max_records: 1000, when_full: reject_new}\n"
        "driver:\n  kind: simulated\n  site_type: manure\n", encoding="utf-8")
    config = load_config(path)
    assert config.driver.kind == "simulated" and config.outbox.max_records == 1000
    path.write_text("device_id: d-1\nsite_id: s-1\nstate_dir: state\n"
                    "driver: {kind: simulated, site_type: orchard}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"driver\.site_type"):
        load_config(path)


@pytest.mark.parametrize("name", ["device.example.toml", "device.modbus.example.toml"])
def test_shipped_examples_are_valid(name: str) -> None:
    example = Path(__file__).resolve().parents[1] / "edge" / name
    assert load_config(example).device_id
