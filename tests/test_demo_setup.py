"""The demo's spare devices and edge example copies (issue 14: the edge example's
device was one the demo fleet ran, and the two threw each other off 75 times in 75 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.demo import (
    EXAMPLES,
    DemoError,
    env_block,
    example_copy,
    example_device,
    spare_devices,
    with_spares,
)
from edge.config import load_config
from farm_contract.registry import Registry
from ingest_service.provision import make_device, with_device
from simulators.fleet import build_registry
from simulators.scenario import load_scenario


@pytest.fixture(scope="module")
def fleet() -> Registry:
    return build_registry(load_scenario("demo"))


def test_spares_are_in_the_registry_and_not_in_the_fleet(fleet: Registry) -> None:
    spares = spare_devices(fleet)
    assert set(spares) == {*EXAMPLES, "hand"}
    registry = with_spares(fleet, spares)
    for device_id, site_id in spares.values():
        assert device_id not in fleet.devices
        assert registry.devices[device_id].site_id == site_id
    for name, path in EXAMPLES.items():
        assert example_device(path) == spares[name]


def test_an_example_on_a_fleet_device_is_refused(fleet: Registry) -> None:
    device_id, site_id = example_device(EXAMPLES["edge.toml"])
    clashing = with_device(fleet, make_device(device_id, site_id, None, "fleet"))
    with pytest.raises(DemoError, match="one of the fleet's devices"):
        spare_devices(clashing)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_copy_has_the_demo_port_and_password(name: str, tmp_path: Path) -> None:
    copy = tmp_path / name
    copy.write_text(example_copy(EXAMPLES[name], 40123, "pw-0123456789abcdef",
                                 tmp_path / "state"))
    config = load_config(copy, check_files=False)
    original = load_config(EXAMPLES[name], check_files=False)
    assert config.device_id == original.device_id
    assert config.mqtt_url == "mqtt://127.0.0.1:40123"
    assert config.password is not None
    assert config.password.get_secret_value() == "pw-0123456789abcdef"
    assert config.state_dir == tmp_path / "state"
    assert config.driver == original.driver


def test_env_block_quotes_for_the_shell() -> None:
    assert env_block({"A": "x y", "B": "1"}) == "export A='x y'\nexport B=1\n"


def test_a_live_run_needs_a_duration() -> None:
    """``--duration 0`` used to end the live loop at once and dump the whole year's
    events: the demo's "live" table (make demo without DURATION) was last year's at once."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "simulators", "run", "--scenario", "test-small",
         "--mode", "live", "--duration", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "--duration" in done.stderr
    from devstack.demo import LIVE_NOTE, LIVE_YEAR_S

    assert LIVE_YEAR_S > 0 and "600 s" in LIVE_NOTE.format(seconds=LIVE_YEAR_S)
