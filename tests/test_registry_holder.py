"""The running service's registry: the folder watcher, the versions kept, check-registry.

No servers needed: the holder and the archive are files and a thread.
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pytest

from farm_contract.registry import Registry
from ingest_service.__main__ import main as cli
from ingest_service.registry_versions import VERSIONS_DIR
from ingest_service.state import RegistryHolder
from tests.helpers import DEVICES_CSV, SITES_CSV, wait_for, write_registry

MORE_SITES = SITES_CSV + "farm-2,养殖场二号,云州区,manure,40.3,113.4,true,,\n"


def holder_of(folder: Path, poll_s: float = 0.1) -> RegistryHolder:
    return RegistryHolder(Registry.from_dir(folder), folder, poll_s=poll_s)


def test_a_folder_edit_is_seen_by_the_watcher(tmp_path: Path) -> None:
    folder = write_registry(tmp_path / "registry")
    holder = holder_of(folder)
    seen: list[Registry] = []
    holder.on_change(seen.append)
    holder.watch()
    try:
        (folder / "sites.csv").write_text(MORE_SITES, encoding="utf-8")
        wait_for(lambda: seen, timeout=5)  # within a few polls
        assert len(seen) == 1 and "farm-2" in seen[0].sites and holder.get() is seen[0]
        # an invalid edit keeps the registry in use; fixing it is seen again
        (folder / "devices.csv").write_text(DEVICES_CSV + "dev-9,nowhere\n", encoding="utf-8")
        (folder / "sites.csv").write_text(MORE_SITES + "broken\n", encoding="utf-8")
        wait_for(lambda: holder._stamp == holder._files_stamp(), timeout=5)
        assert "farm-2" in holder.get().sites and len(seen) == 1
        (folder / "sites.csv").write_text(SITES_CSV, encoding="utf-8")
        (folder / "devices.csv").write_text(DEVICES_CSV, encoding="utf-8")
        wait_for(lambda: "farm-2" not in holder.get().sites, timeout=5)
    finally:
        holder.stop()
    assert holder._watcher is None
    sources = [v.source for v in holder.archive.versions()]
    assert sources == ["start", "folder", "folder"]


def test_touching_the_files_is_no_new_version(tmp_path: Path) -> None:
    folder = write_registry(tmp_path / "registry")
    holder = holder_of(folder)
    before = holder.get()
    stat = (folder / "sites.csv").stat()
    os.utime(folder / "sites.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert holder.refresh() is before
    assert len(holder.archive.versions()) == 1


def test_every_accepted_registry_is_kept_and_found_by_digest(tmp_path: Path) -> None:
    folder = write_registry(tmp_path / "registry")
    holder = holder_of(folder)
    first = holder.get()
    bigger = Registry.from_csv(MORE_SITES, DEVICES_CSV)
    version = holder.replace(bigger, who="tester", reason="farm-2 registered")
    holder.replace(bigger)  # the same again: not repeated
    versions = holder.archive.versions()
    assert [(v.source, v.digest) for v in versions] == [
        ("start", first.digest()), ("upload", bigger.digest())]
    assert (versions[1].who, versions[1].reason) == ("tester", "farm-2 registered")
    found = holder.archive.get(version.digest[:12])
    assert found is not None and found.version == version
    assert Registry.from_csv(found.sites_csv, found.devices_csv).digest() == version.digest
    old = holder.archive.get(first.digest())
    assert old is not None and "farm-2" not in old.sites_csv
    assert holder.archive.get("0" * 12) is None and holder.archive.get("abc") is None
    folders = sorted((folder / VERSIONS_DIR).iterdir())
    assert [f.name.split("-", 1)[1] for f in folders] == [
        first.digest()[:12], bigger.digest()[:12]]
    assert json.loads((folders[1] / "version.json").read_text())["who"] == "tester"
    # the folder itself is not confused by the versions kept inside it
    assert Registry.from_dir(folder).digest() == bigger.digest()


def test_without_a_folder_versions_are_kept_in_memory() -> None:
    holder = RegistryHolder(Registry())
    holder.replace(Registry.from_csv(SITES_CSV, DEVICES_CSV))
    assert [v.source for v in holder.archive.versions()] == ["start", "upload"]
    assert holder.archive.get(holder.get().digest()) is not None


def test_the_registry_moves_to_a_new_day(tmp_path: Path) -> None:
    sites = SITES_CSV.replace("large_scale,area_mu,water_quota_m3_per_mu",
                              "large_scale,area_mu,water_quota_m3_per_mu,valid_from")
    sites = sites.replace("\n", ",\n").replace("water_quota_m3_per_mu,valid_from,",
                                                "water_quota_m3_per_mu,valid_from")
    sites += "farm-2,养殖场二号,云州区,manure,40.3,113.4,true,,,2025-06-01\n"
    folder = write_registry(tmp_path / "registry", sites)
    registry = Registry.from_dir(folder).at(date(2025, 5, 31))
    holder = RegistryHolder(registry, folder)
    assert "farm-2" not in holder.get().sites
    seen: list[Registry] = []
    holder.on_change(seen.append)
    holder.refresh()  # today is after 2025-06-01
    assert "farm-2" in holder.get().sites and len(seen) == 1


def test_check_registry_explains_the_history(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_registry(
        tmp_path / "registry",
        "site_id,name,county,site_type,lat,lon,large_scale,valid_from\n"
        "farm-1,养殖一场,平城区,manure,40.1,113.3,false,\n"
        "farm-1,养殖一场,云州区,manure,40.1,113.3,true,2025-03-01\n"
        "drip-1,滴灌一号,平城区,drip,40.2,113.4,,\n",
        "device_id,site_id,valid_from\ndev-1,drip-1,\ndev-1,farm-1,2025-09-01\n")
    assert cli(["check-registry", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    digest = Registry.from_dir(folder).digest()
    assert out[1:] == [
        f"history (as of {Registry.from_dir(folder).as_of}; rows take effect on "
        "2025-03-01, 2025-09-01):",
        "  site farm-1: before 2025-03-01: name 养殖一场, county 平城区, site_type manure, "
        "large_scale False; from 2025-03-01: county 平城区 → 云州区, large_scale False → True",
        "  device dev-1: before 2025-09-01: site_id drip-1; "
        "from 2025-09-01: site_id drip-1 → farm-1",
        f"digest: {digest}",
    ]
    write_registry(folder)
    assert cli(["check-registry", str(folder)]) == 0
    assert "history: none (no valid_from: every row applies to all time)" in capsys.readouterr().out


def test_provisioning_keeps_a_device_s_history() -> None:
    from ingest_service.provision import make_device, with_device

    registry = Registry.from_csv(
        MORE_SITES.replace("water_quota_m3_per_mu\n", "water_quota_m3_per_mu,valid_from\n"),
        "device_id,site_id,model,valid_from\ndev-2,farm-1,m,\ndev-2,farm-2,m,2025-06-01\n")
    same = with_device(registry, make_device("dev-2", "farm-2", None, "m"))
    assert same is registry  # a password rotation changes no row
    moved = with_device(registry, make_device("dev-2", "farm-1", None, "m"))
    assert [(d.site_id, d.valid_from) for d in moved.device_history["dev-2"]] == [
        ("farm-1", None), ("farm-2", date(2025, 6, 1)), ("farm-1", moved.as_of)]
    new = with_device(registry, make_device("dev-9", "farm-1", None, "m"))
    assert [(d.site_id, d.valid_from) for d in new.device_history["dev-9"]] == [("farm-1", None)]


def test_a_read_only_registry_folder_keeps_versions_in_memory(tmp_path: Path) -> None:
    folder = write_registry(tmp_path / "registry")
    (folder / VERSIONS_DIR).write_text("not a folder")  # as unwritable as it gets for root
    holder = holder_of(folder)
    holder.replace(Registry.from_csv(MORE_SITES, DEVICES_CSV))
    assert [v.source for v in holder.archive.versions()] == ["start", "upload"]
    assert holder.archive.get(holder.get().digest()) is not None
