"""The registry CSV import and export (stdlib ``csv``; what spreadsheets produce)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from farm_contract.registry import Registry, RegistryError

HEADER = "site_id,name,county,site_type,lat,lon,large_scale,area_mu,water_quota_m3_per_mu\n"


def test_forgiving_about_what_spreadsheets_do(tmp_path: Path) -> None:
    sites = (
        "\ufeff Site_ID , NAME,county,site_type,lat,lon,large_scale,notes\n"
        "\n"
        'drip-1, "滴灌, 一号" ,平城区,drip,40.1,113.3,,"free text, with comma"\n'
        "   \n"
        "farm-1,养殖场,云州区,manure,40.2,113.5,是\n"
    )
    devices = (
        "device_id,site_id,dev_eui,model\r\n"
        "dev-1,drip-1,,probe\r\ndev-2,farm-1,00112233AABBCCDD\r\n"
    )
    (tmp_path / "sites.csv").write_bytes(sites.encode("utf-8"))
    (tmp_path / "devices.csv").write_text(devices, encoding="utf-8")
    registry = Registry.from_dir(tmp_path)
    assert registry.sites["drip-1"].name == "滴灌, 一号"
    assert registry.sites["farm-1"].large_scale is True
    assert registry.sites["drip-1"].area_mu is None
    assert registry.devices["dev-2"].dev_eui == "00112233aabbccdd"
    assert registry.devices["dev-2"].model == ""


def test_problems_name_file_and_row() -> None:
    sites = HEADER + "\ndrip-1,a,c,drip,400,113,maybe,,\ndrip-1,a,c,drip,40,113,,,\n"
    devices = "device_id,site_id\nd1,nowhere\n\nBAD ID,drip-1\n"
    with pytest.raises(RegistryError) as info:
        Registry.from_csv(sites, devices)
    assert info.value.problems == [
        "sites.csv row 2: lat: Input should be less than or equal to 90; "
        "large_scale: Value error, expected true or false, got 'maybe'",
        "devices.csv row 2: unknown site_id nowhere",
        "devices.csv row 3: device_id: String should match pattern '^[a-z0-9][a-z0-9_-]{0,63}$'",
    ]


@pytest.mark.parametrize(
    ("sites", "message"),
    [
        ("", "sites.csv: cannot read CSV: No columns to parse from file"),
        ("\n\n", "sites.csv: cannot read CSV: No columns to parse from file"),
        ("site_id,name\ns1,x\n", "sites.csv: missing column(s) county, site_type, lat, lon"),
        (HEADER + "s1,n,c,drip,40,113,,,,surplus\n",
         "sites.csv: cannot read CSV: Expected 9 fields in line 2, saw 10"),
    ],
)
def test_unreadable_csv(sites: str, message: str) -> None:
    with pytest.raises(RegistryError) as info:
        Registry.from_csv(sites, "device_id,site_id\n")
    assert info.value.problems == [message]


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "sites.csv").write_bytes((HEADER + "s1,名,县,drip,40,113,,,\n").encode("gbk"))
    (tmp_path / "devices.csv").write_text("device_id,site_id\n", encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        Registry.from_dir(tmp_path)
    assert info.value.problems[0].startswith("sites.csv: cannot read CSV: 'utf-8' codec")


def test_write_dir_round_trips(tmp_path: Path) -> None:
    sites = HEADER + (
        's1,"name, with comma",平城区,drip,40.5,113.25,true,120,300.5\n'
        "s2,农场,云州区,manure,40,113,false,,\n"
    )
    devices = "device_id,site_id,dev_eui,model\nd1,s1,,m\nd2,s2,0011223344556677,\n"
    registry = Registry.from_csv(sites, devices)
    registry.write_dir(tmp_path)
    assert (tmp_path / "sites.csv").read_text(encoding="utf-8") == HEADER + (
        's1,"name, with comma",平城区,drip,40.5,113.25,True,120.0,300.5\n'
        "s2,农场,云州区,manure,40.0,113.0,False,,\n"
    )
    assert (tmp_path / "devices.csv").read_text(encoding="utf-8") == (
        "device_id,site_id,dev_eui,model\nd1,s1,,m\nd2,s2,0011223344556677,\n"
    )
    assert Registry.from_dir(tmp_path) == registry


def test_ingest_does_not_import_influxdb_client_unless_asked() -> None:
    """The v2 client (~30 MiB) loads only with ``FARM_INFLUX_API=v2`` (docs/performance.md).

    pandas went from the dependencies (tests/test_dependencies.py), so only the
    client, installed and importable, is left to check here.
    """
    import importlib.util
    import subprocess

    assert importlib.util.find_spec("influxdb_client") is not None, "the check would be vacuous"
    code = (
        "import sys, ingest_service.service, farm_contract.registry, ingest_service.api.app;"
        "print('influxdb_client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
