"""The registry's history (contract §5): dated rows, corrections, moves, digest, round trip."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm_contract.registry import Registry, RegistryError, day_of

SITES = (
    "site_id,name,county,site_type,lat,lon,large_scale,valid_from\n"
    "farm-1,养殖一场,平城区,manure,40.1,113.3,false,\n"
    "farm-1,养殖一场,云州区,manure,40.1,113.3,true,2025-03-01\n"
    "drip-1,滴灌一号,平城区,drip,40.2,113.4,,\n"
    "drip-2,滴灌二号,天镇县,drip,40.4,114.1,,2025-06-01\n"
)
DEVICES = (
    "device_id,site_id,dev_eui,model,valid_from\n"
    "dev-1,drip-1,,probe,\n"
    "dev-1,drip-2,,probe,2025-06-01\n"
    "dev-2,farm-1,,meter,\n"
)


def registry(as_of: date = date(2025, 12, 31)) -> Registry:
    return Registry.from_csv(SITES, DEVICES, as_of=as_of)


def test_a_dated_row_applies_from_its_day_and_the_undated_one_before() -> None:
    reg = registry()
    assert reg.site_on("farm-1", date(2025, 2, 28)).county == "平城区"  # type: ignore[union-attr]
    march = reg.site_on("farm-1", date(2025, 3, 1))
    assert march is not None and march.county == "云州区" and march.large_scale
    assert reg.sites["farm-1"].county == "云州区"
    assert reg.at(date(2024, 1, 1)).sites["farm-1"].county == "平城区"
    assert [(p.start, p.end, p.site.county) for p in reg.periods("farm-1")] == [
        (None, date(2025, 3, 1), "平城区"), (date(2025, 3, 1), None, "云州区")]


def test_a_site_that_does_not_exist_yet() -> None:
    reg = registry()
    assert reg.site_on("drip-2", date(2025, 5, 31)) is None
    assert "drip-2" not in reg.at(date(2025, 5, 31)).sites
    assert "drip-2" in reg.at(date(2025, 6, 1)).sites
    assert "drip-2" not in registry(as_of=date(2025, 1, 1)).sites
    assert registry(as_of=date(2025, 1, 1)).counties == ["平城区"]
    assert registry(as_of=date(2025, 1, 1)).counties_ever == ["云州区", "天镇县", "平城区"]


def test_a_device_moves_on_its_day() -> None:
    reg = registry()
    assert reg.device_on("dev-1", date(2025, 5, 31)).site_id == "drip-1"  # type: ignore[union-attr]
    assert reg.device_on("dev-1", date(2025, 6, 1)).site_id == "drip-2"  # type: ignore[union-attr]
    assert reg.devices["dev-1"].site_id == "drip-2"
    assert reg.timed_devices() == {"dev-1", "dev-2"}  # dev-2's farm changes county
    undated = Registry.from_csv(
        SITES.replace("farm-1,养殖一场,云州区,manure,40.1,113.3,true,2025-03-01\n", ""),
        "device_id,site_id\ndev-9,drip-1\n")
    assert undated.timed_devices() == frozenset()


def test_the_day_is_datongs_day() -> None:
    # 2025-05-31T16:00Z is 2025-06-01 00:00 in Asia/Shanghai: the move has happened
    moment = datetime(2025, 5, 31, 16, 0, tzinfo=UTC)
    assert day_of(moment) == date(2025, 6, 1)
    assert registry().on(moment).devices["dev-1"].site_id == "drip-2"
    assert registry().on(datetime(2025, 5, 31, 15, 59, 59, tzinfo=UTC)).devices[
        "dev-1"].site_id == "drip-1"


@pytest.mark.parametrize(
    ("sites", "devices", "problem"),
    [
        (SITES + "farm-1,x,平城区,manure,40,113,,2025-03-01\n", DEVICES,
         "sites.csv row 6: duplicate site_id farm-1 from 2025-03-01"),
        (SITES + "farm-1,x,平城区,manure,40,113,,\n", DEVICES,
         "sites.csv row 6: duplicate site_id farm-1"),
        (SITES, DEVICES + "dev-2,drip-1,,,\n", "devices.csv row 5: duplicate device_id dev-2"),
        (SITES + "s9,x,c,drip,40,113,,2025-13-01\n", DEVICES,
         "sites.csv row 6: valid_from: Value error, valid_from must be a date YYYY-MM-DD, "
         "got '2025-13-01'"),
        (SITES + "s9,x,c,drip,40,113,,1.3.2025\n", DEVICES,
         "sites.csv row 6: valid_from: Value error, valid_from must be a date YYYY-MM-DD, "
         "got '1.3.2025'"),
        (SITES, DEVICES + "dev-3,nowhere,,,2025-01-01\n",
         "devices.csv row 5: unknown site_id nowhere"),
    ],
)
def test_history_problems(sites: str, devices: str, problem: str) -> None:
    with pytest.raises(RegistryError) as info:
        Registry.from_csv(sites, devices)
    assert info.value.problems == [problem]


def test_history_lines_say_what_changes_and_from_when() -> None:
    lines = registry().history_lines()
    assert lines == [
        "site farm-1: before 2025-03-01: name 养殖一场, county 平城区, site_type manure, "
        "large_scale False; "
        "from 2025-03-01: county 平城区 → 云州区, large_scale False → True",
        "site drip-2: from 2025-06-01: name 滴灌二号, county 天镇县, site_type drip, "
        "large_scale False",
        "device dev-1: before 2025-06-01: site_id drip-1, model probe; "
        "from 2025-06-01: site_id drip-1 → drip-2",
    ]
    assert Registry.from_csv(SITES, DEVICES.replace("dev-1,drip-2,,probe,2025-06-01\n", "")
                             + "dev-5,drip-2,,,\n").notes() == [
        "device dev-5 is at site drip-2 until 2025-06-01, "
        "before that site exists (from 2025-06-01)"]


def test_write_and_read_back_keep_the_history(tmp_path: Path) -> None:
    reg = registry()
    reg.write_dir(tmp_path)
    back = Registry.from_dir(tmp_path)
    assert back.site_history == reg.site_history
    assert back.device_history == reg.device_history
    assert back.digest() == reg.digest()
    assert "valid_from" in (tmp_path / "sites.csv").read_text().splitlines()[0]


def test_an_undated_registry_is_written_without_the_column(tmp_path: Path) -> None:
    reg = Registry.from_csv("site_id,name,county,site_type,lat,lon\ns1,a,c,drip,40,113\n",
                            "device_id,site_id\nd1,s1\n")
    reg.write_dir(tmp_path)
    assert "valid_from" not in (tmp_path / "sites.csv").read_text()
    assert "valid_from" not in (tmp_path / "devices.csv").read_text()


def test_digest_ignores_layout_and_sees_every_value() -> None:
    base = registry().digest()
    shuffled_sites = SITES.splitlines(keepends=True)
    reordered = shuffled_sites[0] + "".join(reversed(shuffled_sites[1:]))
    spaced = "\ufeff" + SITES.replace(",", ", ").replace("\n", "\r\n")
    assert Registry.from_csv(reordered, DEVICES).digest() == base
    assert Registry.from_csv(spaced, DEVICES).digest() == base
    assert Registry.from_csv(SITES.replace("2025-03-01", "2025-03-02"), DEVICES).digest() != base
    assert Registry.from_csv(SITES, DEVICES.replace("meter", "meter2")).digest() != base
    assert registry(as_of=date(2020, 1, 1)).digest() == base  # the day looked at is no content


def test_an_upload_from_a_day_dates_only_what_changed() -> None:
    current = Registry.from_csv(SITES, DEVICES, as_of=date(2025, 12, 31))
    update = Registry.from_csv(
        "site_id,name,county,site_type,lat,lon,large_scale\n"
        "farm-1,养殖一场,云州区,manure,40.1,113.3,true\n"
        "drip-1,滴灌一号,阳高县,drip,40.2,113.4,\n"
        "drip-2,滴灌二号,天镇县,drip,40.4,114.1,\n",
        "device_id,site_id,dev_eui,model\ndev-1,drip-2,,probe\ndev-2,drip-1,,meter\n")
    merged = current.changed_from(update, date(2025, 9, 1))
    assert [(s.county, s.valid_from) for s in merged.site_history["drip-1"]] == [
        ("平城区", None), ("阳高县", date(2025, 9, 1))]
    assert len(merged.site_history["farm-1"]) == 2  # unchanged: no new row
    assert [(d.site_id, d.valid_from) for d in merged.device_history["dev-2"]] == [
        ("farm-1", None), ("drip-1", date(2025, 9, 1))]
    assert merged.site_on("drip-1", date(2025, 8, 31)).county == "平城区"  # type: ignore[union-attr]
    # the same upload again changes nothing
    assert merged.changed_from(update, date(2025, 9, 1)).digest() == merged.digest()


def test_an_upload_from_a_day_must_list_everyone() -> None:
    current = registry()
    update = Registry.from_csv(
        "site_id,name,county,site_type,lat,lon,valid_from\n"
        "drip-1,滴灌一号,平城区,drip,40.2,113.4,2025-01-01\n",
        "device_id,site_id\ndev-1,drip-1\n")
    with pytest.raises(RegistryError) as info:
        current.changed_from(update, date(2025, 9, 1))
    assert info.value.problems == [
        "sites.csv: site drip-1 has valid_from 2025-01-01: rows of an upload from a date carry "
        "no date of their own",
        "sites.csv: site farm-1 is missing: an upload from 2025-09-01 must list every site "
        "(a site cannot end; upload without a date to remove it)",
        "sites.csv: site drip-2 is missing: an upload from 2025-09-01 must list every site "
        "(a site cannot end; upload without a date to remove it)",
        "devices.csv: device dev-2 is missing: an upload from 2025-09-01 must list every device "
        "(upload without a date to remove it)",
    ]


DAYS = st.dates(min_value=date(2020, 1, 1), max_value=date(2030, 12, 31))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), DAYS), st.sampled_from(["a", "b", "c"])),
                min_size=1, max_size=6, unique_by=lambda row: row[0]), DAYS)
def test_the_row_in_effect_is_the_latest_started(rows: list[tuple[date | None, str]],
                                                  day: date) -> None:
    lines = "".join(f"s1,n,{county},drip,40,113,{start or ''}\n" for start, county in rows)
    reg = Registry.from_csv("site_id,name,county,site_type,lat,lon,valid_from\n" + lines,
                            "device_id,site_id\n")
    started = [(start, county) for start, county in rows if start is None or start <= day]
    expected = max(started, key=lambda r: r[0] or date.min)[1] if started else None
    found = reg.site_on("s1", day)
    assert (found.county if found else None) == expected
    assert (reg.at(day).sites.get("s1") == found)
    back = Registry.from_csv(*reg.csv_text())
    assert back.digest() == reg.digest()
    periods = reg.periods("s1")
    assert sum(1 for p in periods if (p.start is None or p.start <= day)
               and (p.end is None or day < p.end)) == (found is not None)


def test_corrections_are_named() -> None:
    old = registry()
    fixed = Registry.from_csv(SITES.replace("farm-1,养殖一场,平城区", "farm-1,养殖一场,阳高县"),
                              DEVICES.replace("dev-2,farm-1,,meter,\n", ""))
    assert fixed.corrections_to(old) == [
        "site farm-1: county 平城区 → 阳高县 (for all time)", "device dev-2 removed (for all time)"]
    assert old.corrections_to(old) == []
