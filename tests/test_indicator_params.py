"""The indicators' shipped parameter files (farm_contract/params): sourced, loadable,
overridable per county and per city."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from farm_contract.indicator_params import NO_SOURCE, load_divisions, load_straw
from farm_contract.payloads import Crop
from ingest_service.settings import Settings

SHIPPED_STRAW = Path(__file__).parents[1] / "farm_contract/params/straw.toml"
YEAR = re.compile(r"(?<!\d)(?:19|20)\d\d(?!\d)")
"""A citation names its year; a value without one says exactly ``NO_SOURCE``."""

DATONG = ("平城区", "云冈区", "新荣区", "云州区", "阳高县", "天镇县", "广灵县", "灵丘县",
          "浑源县", "左云县")


def test_every_crop_has_values_and_says_where_they_come_from() -> None:
    straw = load_straw()
    assert set(straw.crops) == {crop.value for crop in Crop}
    for name, params in straw.crops.items():
        assert params.ratio > 0 and 0 < params.coefficient <= 1, name
        for source in (params.ratio_source, params.coefficient_source):
            assert source and (NO_SOURCE in source or "20" in source), (name, source)
    corn = straw.of("平城区", "corn")
    assert (corn.ratio, corn.coefficient) == (0.84, 0.81)
    assert "霍丽丽" in corn.ratio_source and "农业工程学报" in corn.ratio_source
    potato = straw.of("平城区", "potato")
    assert potato.ratio == 0.71 and "谢光辉" in potato.ratio_source  # was 0.5, unsourced
    assert straw.of(None, "unknown-crop") == straw.crops["other"]


def _valued_tables(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every crop table of a straw file, the city's and each county's, by a readable name."""
    tables = {f"crops.{crop}": table for crop, table in raw.get("crops", {}).items()}
    for county, crops in raw.get("counties", {}).items():
        tables |= {f"counties.{county}.{crop}": table for crop, table in crops.items()}
    return tables


def test_every_shipped_value_has_its_source_in_the_file() -> None:
    """The loader reads a bare number as unsourced; the shipped file may not hold one: each
    value sits next to a citation (with its year) or exactly "unsourced, to be confirmed"."""
    tables = _valued_tables(tomllib.loads(SHIPPED_STRAW.read_text("utf-8")))
    assert "crops.corn" in tables and "crops.other" in tables
    for name, table in tables.items():
        values = [key for key in ("ratio", "coefficient") if key in table]
        assert values, name
        for key in values:
            source = table.get(f"{key}_source")
            assert isinstance(source, str) and source.strip(), (name, key)
            assert source == NO_SOURCE or YEAR.search(source), (name, key, source)


def test_a_county_table_overrides_one_value_and_keeps_the_rest(tmp_path: Path) -> None:
    shipped = SHIPPED_STRAW.read_text("utf-8")
    custom = tmp_path / "straw.toml"
    custom.write_text(shipped + '[counties."云州区".corn]\nratio = 1.1\n', encoding="utf-8")
    straw = load_straw(custom)
    local = straw.of("云州区", "corn")
    assert (local.ratio, local.coefficient) == (1.1, 0.81)
    assert local.ratio_source == NO_SOURCE  # a new value without its source says so
    assert local.coefficient_source == straw.crops["corn"].coefficient_source
    assert straw.of("平城区", "corn").ratio == 0.84
    assert straw.parameters(None)["云州区.straw_ratio.corn"] == 1.1
    assert straw.parameters("云州区")["straw_ratio.corn"] == 1.1


@pytest.mark.parametrize("text", ["[crops.corn]\nratio = 1\ncoefficient = 0.5\n",  # no other
                                  "[crops.other]\nratio = 1\ncoefficient = 1.5\n",
                                  "[crops.other]\nratio = 0\ncoefficient = 0.5\n",
                                  "not toml ["])
def test_a_broken_file_is_refused_at_start(tmp_path: Path, text: str) -> None:
    path = tmp_path / "straw.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValidationError):
        Settings(straw_params_file=path)


def test_the_ten_divisions_and_another_city(tmp_path: Path) -> None:
    datong = load_divisions()
    assert datong.city == "大同市" and datong.counties == DATONG
    assert datong.listed(["大同县", "平城区"]) == [*DATONG, "大同县"]
    other = tmp_path / "counties.toml"
    other.write_text('city = "朔州市"\ncounties = ["朔城区", "平鲁区"]\n', encoding="utf-8")
    assert Settings(counties_file=other).divisions.listed([]) == ["朔城区", "平鲁区"]
    assert Settings(counties_file=other).divisions.seats == {}  # seats are optional


def test_every_division_has_a_seat_inside_datong() -> None:
    """The simulators place sites and the offline map labels divisions at these seats."""
    datong = load_divisions()
    assert set(datong.seats) == set(DATONG)
    assert len({seat.code for seat in datong.seats.values()}) == len(DATONG)
    for seat in datong.seats.values():
        assert 39.0 < seat.lat < 41.0 and 112.0 < seat.lon < 115.0


def test_a_seat_without_its_position_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "counties.toml"
    broken.write_text('counties = ["朔城区"]\n[seats]\n"朔城区" = { code = "x" }\n',
                      encoding="utf-8")
    with pytest.raises(ValueError, match=r"seats\.朔城区 needs code, lat and lon"):
        load_divisions(broken)


def test_recovery_until_must_be_a_day() -> None:
    assert Settings(film_recovery_until="04-30").film_recovery_until == "04-30"
    for wrong in ("02-30", "13-01", "5-31", "02-29"):
        with pytest.raises(ValidationError):
            Settings(film_recovery_until=wrong)
