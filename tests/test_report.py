"""The annual report (ingest_service.report.build, report_excel, api_report, the CLI) on a
simulated year: the workbook and CSV hold exactly the numbers GET /api/v1/indicators
gives for that year, each county's ledgers add up to its indicators, Chinese names
survive, and LibreOffice renders the first sheet as a readable page.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from openpyxl.chart import BarChart

from farm_contract.indicators import IndicatorId, IndicatorValue
from farm_contract.payloads import EventType
from ingest_service.__main__ import main as cli
from ingest_service.api.app import create_app
from ingest_service.report.build import (
    CITY_LABEL,
    INDICATOR_LABELS,
    LedgerEntry,
    Report,
    build_report,
    county_totals,
)
from ingest_service.report.excel import (
    CAPPED_LABEL,
    MEMBER_SHEETS,
    NOT_AVAILABLE,
    SHEETS,
    TOTAL_LABEL,
    workbook_bytes,
)
from tests.simulated_year import SimulatedYear, simulated_year

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXCEL = 1e-15
A4_LANDSCAPE_PT = (842, 595)
PAGES_OF_THE_SIMULATED_YEAR = {**dict.fromkeys(SHEETS, 1), SHEETS[0]: 2}
"""test-small has a few sites a county: every sheet fits one landscape page, but the
summary's 44 rows (the city and Datong's ten divisions, four indicators each) need two."""
HEADER_ENDS = {SHEETS[0]: ("范围", "标记"), SHEETS[1]: ("区县", "回收率"),
               SHEETS[3]: ("区县", "有台账"),
               **{title: ("区县", "说明") for title in MEMBER_SHEETS.values()}}
"""The first and last column headers (the Chinese line of each) of the sheets whose header
row repeats on each page."""


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedYear]:
    with simulated_year(tmp_path_factory.mktemp("simulated")) as simulated:
        yield simulated


@pytest.fixture(scope="module")
def client(year: SimulatedYear) -> TestClient:
    return TestClient(create_app(year.service.state, year.service.engine), base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def api_rows(year: SimulatedYear, client: TestClient) -> list[dict[str, Any]]:
    response = client.get("/api/v1/indicators", params={"year": year.scenario.year})
    assert response.status_code == 200
    rows: list[dict[str, Any]] = response.json()
    return rows


@pytest.fixture(scope="module")
def workbook_file(year: SimulatedYear, client: TestClient, tmp_path_factory: pytest.TempPathFactory
                  ) -> Path:
    response = client.get("/api/v1/report", params={"year": year.scenario.year})
    assert response.status_code == 200, response.text
    path = tmp_path_factory.mktemp("report") / "report.xlsx"
    path.write_bytes(response.content)
    return path


def summary_rows(path: Path) -> list[dict[str, Any]]:
    sheet = load_workbook(path)[SHEETS[0]]
    header = [c.value for c in sheet[4]]
    assert header[:3] == ["范围 Scope", "指标 Indicator", "分子 Numerator"]
    return [dict(zip(header, row, strict=True)) for row in sheet.iter_rows(min_row=5,
                                                                         values_only=True)
            if row[1] is not None]


def indicator_of(label: str) -> IndicatorId:
    (indicator,) = [i for i, (zh, en, _) in INDICATOR_LABELS.items() if label == f"{zh} {en}"]
    return indicator


def test_workbook_summary_is_the_api(
    workbook_file: Path, api_rows: list[dict[str, Any]], year: SimulatedYear,
) -> None:
    rows = summary_rows(workbook_file)
    # the city and Datong's ten divisions, with sites or not (n/a where none)
    assert len(rows) == len(api_rows) == 4 * (1 + len(year.listed_counties)) == 44
    for got, want in zip(rows, api_rows, strict=True):
        assert got["范围 Scope"] == (want["county"] or CITY_LABEL)
        assert indicator_of(got["指标 Indicator"]) == want["indicator"]
        # Excel keeps 15-16 significant digits (openpyxl writes %.16g): equal to the last ULP.
        assert got["分子 Numerator"] == pytest.approx(want["numerator"], rel=EXCEL, abs=0)
        assert got["分母 Denominator"] == pytest.approx(want["denominator"], rel=EXCEL, abs=0)
        if want["value"] is None:  # n/a: neither 0 % nor "not met"
            assert got["数值 Value"] == got["达标 Met"] == NOT_AVAILABLE
        else:
            assert got["数值 Value"] == pytest.approx(want["value"], rel=EXCEL, abs=0)
            assert got["达标 Met"].startswith("✓" if want["met"] else "✗")
        assert got["目标 Target"] == want["target"]
    assert {r["范围 Scope"] for r in rows} == {CITY_LABEL, *year.listed_counties}


def test_members_sheets_add_up_to_the_summary(workbook_file: Path) -> None:
    """Each members sheet's county totals are the summary's numerator and denominator (the
    city's: its counted row where a county above 100 % counts as 100 %)."""
    book = load_workbook(workbook_file)
    summary = {(indicator_of(r["指标 Indicator"]), r["范围 Scope"]): r
               for r in summary_rows(workbook_file)}
    for indicator, title in MEMBER_SHEETS.items():
        rows = [r for r in book[title].iter_rows(min_row=5, values_only=True) if r[0]]
        members = [r for r in rows if r[1] not in (TOTAL_LABEL, CAPPED_LABEL)]
        assert members, title
        totals = {r[0]: (r[3], r[4]) for r in rows if r[1] == TOTAL_LABEL}
        totals.update({r[0]: (r[3], r[4]) for r in rows if r[1] == CAPPED_LABEL})
        assert set(totals) == {scope for (i, scope) in summary if i == indicator}
        for scope, (num, den) in totals.items():
            want = summary[(indicator, scope)]
            assert (num, den) == pytest.approx(
                (want["分子 Numerator"], want["分母 Denominator"]), rel=1e-9, abs=1e-12), scope
            if scope != CITY_LABEL:
                mine = [r for r in members if r[0] == scope]
                assert num == pytest.approx(sum(r[3] for r in mine), rel=1e-9, abs=1e-12)


def test_workbook_has_ledgers_and_native_charts(workbook_file: Path, year: SimulatedYear) -> None:
    book = load_workbook(workbook_file)
    assert book.sheetnames == list(SHEETS)
    charts = book[SHEETS[4]]._charts  # openpyxl keeps loaded charts here
    assert len(charts) == 4 and all(isinstance(c, BarChart) for c in charts)
    film = [r for r in book[SHEETS[1]].iter_rows(min_row=5, values_only=True) if r[0]]
    totals = {r[0]: (r[3], r[4]) for r in film if r[1] == "合计 Total"}
    assert set(totals) == set(year.counties)
    manure = [r for r in book[SHEETS[3]].iter_rows(min_row=5, values_only=True) if r[0]]
    registry = year.service.state.registry.get()
    assert {r[1] for r in manure} == {s.site_id for s in registry.sites.values()
                                      if s.site_type == "manure"}


def test_ledgers_add_up_to_the_indicators(
    year: SimulatedYear, api_rows: list[dict[str, Any]],
) -> None:
    service = year.service
    report = build_report(year.service.engine, service.state.registry.get, service.settings,
                          year.scenario.year)
    totals = county_totals(report)
    api = {(r["indicator"], r["county"]): r for r in api_rows}
    for county in year.counties:
        film = api[("film_recovery_rate", county)]
        straw = api[("straw_utilization_rate", county)]
        assert totals[county]["film_recovered"] == pytest.approx(film["numerator"])
        assert totals[county]["film_applied"] == pytest.approx(film["denominator"])
        assert totals[county]["straw_utilized"] == pytest.approx(straw["numerator"])
        # the denominator is collectable straw: grain × ratio × collectable coefficient of
        # the crop in the county (docs/indicators.md), as the ledger's harvests show it
        collectable = sum(e.grain_t * service.settings.straw.of(county, e.item).factor
                          for e in report.entries(EventType.HARVEST) if e.county == county)
        assert collectable == pytest.approx(straw["denominator"])
        assert totals[county]["straw_produced"] == pytest.approx(straw["denominator"])
        ledger_sites = {e.site_id for e in report.ledger if e.county == county and e.type in (
            "manure_treated", "manure_utilized")}
        large = {s.site_id for s in service.state.registry.get().large_scale_manure_sites(county)}
        assert len(ledger_sites & large) == api[("manure_ledger_coverage", county)]["numerator"]


def test_csv_and_download_names(
    year: SimulatedYear, client: TestClient, api_rows: list[dict[str, Any]],
) -> None:
    response = client.get("/api/v1/report", params={"year": year.scenario.year, "format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    disposition = response.headers["content-disposition"]
    assert f'filename="datong-farm-report-{year.scenario.year}.csv"' in disposition
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == (
        f"大同市农业绿色发展指标-{year.scenario.year}.csv")
    text = response.content.decode("utf-8")
    assert text.startswith("\ufeff")
    rows = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    # Rounded for display (tonnes to 3 decimals), met as the engine decided on exact values.
    assert [(r["indicator"], r["county"], float(r["numerator"]), float(r["denominator"]),
             r["met"]) for r in rows] == [
        (a["indicator"], a["county"] or "", round(a["numerator"], 3), round(a["denominator"], 3),
         "" if a["value"] is None else "true" if a["met"] else "false") for a in api_rows]
    for r in rows:
        assert all(len(r[k].partition(".")[2]) <= 3 for k in ("numerator", "denominator")), r
    ledger = client.get("/api/v1/report", params={"year": year.scenario.year,
                                                  "format": "ledger-csv"})
    assert {r["county"] for r in csv.DictReader(io.StringIO(ledger.text.lstrip("\ufeff")))} == (
        set(year.counties))
    xlsx = client.get("/api/v1/report", params={"year": year.scenario.year})
    assert xlsx.headers["content-type"].startswith("application/vnd.openxmlformats")
    assert client.get("/api/v1/report", params={"format": "pdf"}).status_code == 422


def test_cli_writes_the_same_workbook_numbers(
    year: SimulatedYear, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    api_rows: list[dict[str, Any]],
) -> None:
    settings = year.service.settings
    monkeypatch.setenv("FARM_INFLUX_URL", settings.influx_url)
    monkeypatch.setenv("FARM_INFLUX_API", "v1")
    monkeypatch.setenv("FARM_REGISTRY_DIR", str(settings.registry_dir))
    # until the issue-13 engine (with members) lands: the CLI builds the stand-in
    assert cli(["report", "--year", str(year.scenario.year), "--out", str(tmp_path)]) == 0
    stem = f"report-{year.scenario.year}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{stem}.xlsx", f"{stem}-summary.csv", f"{stem}-ledger.csv"])
    rows = summary_rows(tmp_path / f"{stem}.xlsx")
    assert [(r["分子 Numerator"], r["分母 Denominator"]) for r in rows] == [
        pytest.approx((a["numerator"], a["denominator"]), rel=EXCEL, abs=0) for a in api_rows]
    for name in (f"{stem}-summary.csv", f"{stem}-ledger.csv"):  # Excel on Windows needs it
        assert (tmp_path / name).read_bytes().startswith("\ufeff".encode())
    summary = (tmp_path / f"{stem}-summary.csv").read_text(encoding="utf-8-sig")
    assert all(county in summary for county in year.counties)


def gray_pixels(pgm: bytes) -> tuple[int, int, bytes]:
    """Width, height and pixels of a binary PGM (P5, 8-bit), as pdftoppm -gray writes it."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while pgm[pos:pos + 1].isspace():
            pos += 1
        if pgm[pos:pos + 1] == b"#":
            pos = pgm.index(b"\n", pos)
            continue
        end = pos
        while not pgm[end:end + 1].isspace():
            end += 1
        fields.append(pgm[pos:end])
        pos = end
    assert fields[0] == b"P5" and fields[3] == b"255"
    width, height = int(fields[1]), int(fields[2])
    pixels = pgm[pos + 1:pos + 1 + width * height]
    assert len(pixels) == width * height
    return width, height, pixels


def print_to_pdf(workbook: Path) -> Path:
    """LibreOffice (Debian's libreoffice-calc-nogui, scripts/ensure-system-deps.sh) prints
    every sheet of the workbook, with its page setup, to one PDF beside it."""
    soffice = shutil.which("soffice")
    assert soffice, "run scripts/ensure-system-deps.sh (LibreOffice, poppler)"
    profile = workbook.parent / "lo-profile"
    subprocess.run(
        [soffice, f"-env:UserInstallation=file://{profile}", "--headless", "--convert-to", "pdf",
         "--outdir", str(workbook.parent), str(workbook)],
        check=True, timeout=180, capture_output=True,
    )
    pdf = workbook.with_suffix(".pdf")
    assert pdf.is_file()
    return pdf


@dataclass(frozen=True)
class PrintedPage:
    sheet: str
    width_pt: float
    height_pt: float
    text: str


def printed_pages(pdf: Path) -> list[PrintedPage]:
    """Every page: the sheet named in its header ("? …" if none), its size (points), its text."""
    info = subprocess.run(["pdfinfo", "-f", "1", "-l", "999", str(pdf)], check=True,
                          capture_output=True, text=True, timeout=60).stdout
    sizes = [tuple(float(x) for x in m) for m in
             re.findall(r"Page\s+\d+ size:\s+([\d.]+) x ([\d.]+)", info)]
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True,
                          capture_output=True, text=True, timeout=60).stdout
    pages = text.split("\f")[:len(sizes)]
    assert len(pages) == len(sizes)
    out = []
    for (width, height), page in zip(sizes, pages, strict=True):
        top = page.strip().splitlines()[0].strip() if page.strip() else ""
        sheet = next((name for name in SHEETS if top.startswith(name)), f"? {top[:40]}")
        out.append(PrintedPage(sheet, width, height, page))
    return out


@pytest.fixture(scope="module")
def workbook_pdf(workbook_file: Path) -> Path:
    return print_to_pdf(workbook_file)


def test_every_sheet_prints_landscape_one_page_wide(workbook_pdf: Path) -> None:
    """Each sheet of the simulated year on A4 landscape, the header row (first to last
    column) on every page of a table sheet, in as few pages as its rows need."""
    pages = printed_pages(workbook_pdf)
    count = {sheet: sum(1 for p in pages if p.sheet == sheet) for sheet in SHEETS}
    assert count == PAGES_OF_THE_SIMULATED_YEAR
    assert [p.sheet for p in pages] == [
        sheet for sheet in SHEETS for _ in range(PAGES_OF_THE_SIMULATED_YEAR[sheet])]
    for page in pages:
        assert (round(page.width_pt), round(page.height_pt)) == A4_LANDSCAPE_PT, page.sheet
    for page in pages:
        for label in HEADER_ENDS.get(page.sheet, ()):
            assert label in page.text, (page.sheet, label)


def test_a_long_ledger_repeats_its_header_on_every_page(tmp_path: Path) -> None:
    """A county with 150 film sites: the film sheet runs to several pages, each with the
    whole header row and a page number of the sheet's total."""
    path = tmp_path / "long.xlsx"
    path.write_bytes(workbook_bytes(long_report(150)))
    film = [p for p in printed_pages(print_to_pdf(path)) if p.sheet == SHEETS[1]]
    assert 5 <= len(film) <= 6  # 150 rows and a total at 25-32 rows a landscape page
    for n, page in enumerate(film, start=1):
        assert all(label in page.text for label in ("区县", "覆膜", "回收率")), n
        assert "长站点-149" not in page.text or n == len(film)
    names = "".join(p.text for p in film)
    assert all(f"长站点-{i:03d}" in names for i in range(150))


def test_rates_print_rounded_and_met_as_computed(tmp_path: Path) -> None:
    """0.3 t + 0.6 t of 1 t is 0.8999999999999999 in floats: met (the engine's decision on
    the unrounded value, farm_contract.indicators) and printed as 90.0 %; 0.89996 is not
    met and prints as 89.996 %, never as a 90.0 % that looks met."""
    path = tmp_path / "rates.xlsx"
    path.write_bytes(workbook_bytes(long_report(1)))
    summary = [p for p in printed_pages(print_to_pdf(path)) if p.sheet == SHEETS[0]]
    lines = [line for p in summary for line in p.text.splitlines()]
    (noisy,) = [line for line in lines if NOISY_COUNTY in line and "Straw" in line]
    assert "90.0%" in noisy and "✓" in noisy and "0.8999" not in noisy
    (short,) = [line for line in lines if SHORT_COUNTY in line and "Straw" in line]
    assert "89.996%" in short and "✗" in short


def test_first_sheet_renders_to_a_page_that_is_not_blank(
    workbook_pdf: Path, tmp_path: Path, year: SimulatedYear,
) -> None:
    """Page 1 is the summary sheet. It must carry ink where a table is, and the text on it
    must include every county's name in Chinese."""
    pdftoppm = shutil.which("pdftoppm")
    assert pdftoppm, "run scripts/ensure-system-deps.sh (LibreOffice, poppler)"
    pdf = workbook_pdf
    subprocess.run([pdftoppm, "-f", "1", "-l", "1", "-r", "60", "-gray", str(pdf),
                    str(tmp_path / "page")], check=True, timeout=60)
    subprocess.run([pdftoppm, "-f", "1", "-l", "1", "-r", "80", "-png", str(pdf),
                    str(tmp_path / "page")], check=True, timeout=60)
    (pgm,) = tmp_path.glob("page*.pgm")
    width, height, pixels = gray_pixels(pgm.read_bytes())
    dark = sum(1 for p in pixels if p < 128)
    tinted = sum(1 for p in pixels if p < 250)
    assert width > 300 and height > 300
    assert dark > 0.005 * width * height, "text and rules on the page"
    assert tinted > 0.02 * width * height, "header and met/not-met fills"
    text = subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(pdf), "-"], check=True,
                          capture_output=True, text=True, timeout=60).stdout
    assert "大同市农业绿色发展指标" in text
    for county in year.counties:
        assert county in text


NOISY_COUNTY, SHORT_COUNTY = "噪声县", "差一点县"


def long_report(film_sites: int) -> Report:
    """A hand-made report: one county with ``film_sites`` film sites, and two counties whose
    straw rates sit at the 0.9 target: 0.3 + 0.6 of 1 (float noise) and 0.89996 of 1."""
    moment = datetime(2025, 12, 31, 16, tzinfo=UTC)
    counties = ["长县", NOISY_COUNTY, SHORT_COUNTY]
    straw = {"长县": (0.5, 1.0), NOISY_COUNTY: (0.3 + 0.6, 1.0), SHORT_COUNTY: (0.89996, 1.0)}
    indicators = [IndicatorValue.of(i, "city", None, 2025, 1.0, 1.0) for i in IndicatorId]
    for county in counties:
        for indicator in IndicatorId:
            num, den = straw[county] if indicator == IndicatorId.STRAW_UTILIZATION_RATE else (
                1.0, 1.0)
            indicators.append(IndicatorValue.of(indicator, "county", county, 2025, num, den))
    ledger = []
    for i in range(film_sites):
        site, name = f"film-{i:03d}", f"长站点-{i:03d}"
        ledger += [LedgerEntry("长县", site, name, EventType.FILM_APPLIED, "", 24.831999999999997,
                               0.0, 3),
                   LedgerEntry("长县", site, name, EventType.FILM_RECOVERED, "", 20.1, 0.0, 2)]
    return Report(year=2025, as_of=moment, generated=moment, counties=counties,
                  indicators=indicators, ledger=ledger, manure_sites={})
