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


# -- files the config names: one line naming the key and the path, at load ---------------

TLS = VALID.replace("mqtt://127.0.0.1:1883", "mqtts://broker.example:8883")


def write_config(folder: Path, text: str) -> Path:
    path = folder / "device.toml"
    path.write_text(text, encoding="utf-8")
    return path


def with_keys(text: str, lines: str) -> str:
    return text.replace("sample_interval_s = 30", f"sample_interval_s = 30\n{lines}")


@pytest.mark.parametrize("key", ["ca_file", "cert_file", "key_file"])
def test_a_missing_tls_file_names_its_key_and_path(tmp_path: Path, key: str) -> None:
    files = {name: tmp_path / "etc" / name for name in ("ca_file", "cert_file", "key_file")}
    (tmp_path / "etc").mkdir()
    for path in files.values():
        path.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    missing = files[key]
    missing.unlink()
    config = write_config(tmp_path, with_keys(TLS, "\n".join(
        f'{name} = "{path}"' for name, path in files.items())))
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.problems == [f"{key}: {missing} does not exist"]
    assert str(info.value) == f"{config}: {key}: {missing} does not exist"
    assert "\n" not in str(info.value)


def test_a_relative_path_says_where_it_was_looked_for(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, with_keys(TLS, 'ca_file = "certs/ca.crt"'))
    with pytest.raises(ConfigError, match=r"ca_file: certs/ca\.crt \(= .*/certs/ca\.crt\) does "
                                          r"not exist"):
        load_config(config)


def test_tls_files_that_are_not_pem_are_named(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("not a certificate\n", encoding="utf-8")
    config = write_config(tmp_path, with_keys(TLS, f'ca_file = "{tmp_path / "ca.crt"}"'))
    with pytest.raises(ConfigError) as info:
        load_config(config)
    [problem] = info.value.problems
    assert problem.startswith(f"ca_file: {tmp_path / 'ca.crt'} holds no PEM CA certificate")


def test_a_client_key_that_does_not_load_is_named(tmp_path: Path) -> None:
    """A real CA (the system's) with a certificate and key that are not PEM."""
    import ssl

    system_ca = ssl.get_default_verify_paths().cafile
    assert system_ca is not None and Path(system_ca).exists()
    for name in ("d.crt", "d.key"):
        (tmp_path / name).write_text("garbage\n", encoding="utf-8")
    text = with_keys(TLS, f'ca_file = "{system_ca}"\ncert_file = "{tmp_path / "d.crt"}"\n'
                          f'key_file = "{tmp_path / "d.key"}"')
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, text))
    [problem] = info.value.problems
    assert problem.startswith("key_file: ") and str(tmp_path / "d.key") in problem


def test_a_state_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("", encoding="utf-8")
    config = write_config(tmp_path, VALID.replace('"state"', f'"{tmp_path / "state"}"'))
    with pytest.raises(ConfigError, match=r"^.*device\.toml: state_dir: .*/state is not a folder"):
        load_config(config)


def test_an_outbox_path_in_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("", encoding="utf-8")
    text = VALID.replace("[driver]", f'[outbox]\npath = "{tmp_path / "blocker" / "o.sqlite"}"\n'
                         "[driver]")
    with pytest.raises(ConfigError, match=r"outbox\.path: .*/blocker is not a folder"):
        load_config(write_config(tmp_path, text.replace('state_dir = "state"\n', "")))


def test_parse_config_alone_does_not_look_at_files() -> None:
    """Text only (the Modbus simulator reads a field config on a laptop without its CA)."""
    config = parse_config(with_keys(TLS, 'ca_file = "/nonexistent/ca.crt"'))
    assert config.ca_file == Path("/nonexistent/ca.crt")


def test_the_agent_command_says_which_file_is_missing(tmp_path: Path) -> None:
    """The issue's report: a bare FileNotFoundError from tls_set; now exit 2 and one line."""
    import subprocess
    import sys

    missing = tmp_path / "etc" / "ca.crt"
    config = write_config(tmp_path, with_keys(TLS, f'ca_file = "{missing}"').replace(
        '"state"', f'"{tmp_path / "state"}"'))
    result = subprocess.run([sys.executable, "-m", "edge", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"error: {config}: ca_file: {missing} does not exist\n"


def test_a_link_built_by_hand_names_its_tls_files(tmp_path: Path) -> None:
    """Callers that skip the config (simulators, bench) get the file named too."""
    from edge.mqtt.link import DeviceLink
    from edge.mqtt.status import DeviceStatus
    from farm_contract.mqtt_url import parse_mqtt_url

    missing = tmp_path / "ca.crt"
    with pytest.raises(ValueError, match=f"d-1: TLS setup failed \\(ca_file {missing}\\)"):
        DeviceLink(DeviceStatus("d-1", "s-1"), parse_mqtt_url("mqtts://127.0.0.1:8883"),
                   ca_file=missing)
