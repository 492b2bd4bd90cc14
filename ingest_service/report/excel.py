"""The annual report as an Excel workbook (openpyxl), for the city's reviewers.

Sheets, in order: 汇总 Summary (city and every county: indicator, numerator,
denominator, value, target, met, flags — the API's numbers), 农膜 Film, 秸秆 Straw,
粪污 Manure (the ledgers behind them, per site, with county totals), 图表 Charts
(native Excel bar charts of each indicator per county against its target line), one
名单 members sheet per indicator (the sites behind each figure, whose county and city
totals are the summary's numerators and denominators) and 参数 Parameters (every
parameter, formula id, data source, when computed and the registry's digest).

A figure whose denominator is 0 is "无数据 n/a" — never 0 % and never "not met" — and
a data-quality flag is shown beside the figure (e.g. "⚠ >100 %").

Cells hold numbers, not formulas, so any reader — openpyxl, LibreOffice, a
script — sees the same values without recalculating; percentages are numbers
with a percent format. Text (site and county names from the registry) is typed
as a string, never a formula, whatever it starts with.

Every sheet prints on A4 landscape, one page wide, its header row repeated on each
page and "sheet · page n / N" in the margins; columns are as wide as their longest
cell, so a site's name prints beside its numbers. Chart bars are green where the
indicator is met and red where not, on an axis that reaches the highest bar or target.
"""

from __future__ import annotations

import io
import math
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from openpyxl import Workbook
from openpyxl.cell.cell import Cell
from openpyxl.chart import BarChart, LineChart, Reference
from openpyxl.chart.label import DataLabelList
from openpyxl.chart.legend import LegendEntry
from openpyxl.chart.marker import DataPoint
from openpyxl.chart.shapes import GraphicalProperties
from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.page import PageMargins
from openpyxl.worksheet.worksheet import Worksheet

from farm_contract.indicators import TARGETS, IndicatorId, IndicatorValue, Member
from farm_contract.payloads import EventType, ManureUse, StrawUse
from ingest_service.report.build import (
    CITY_LABEL,
    INDICATOR_LABELS,
    Report,
    county_totals,
    ledger_csv,
    summary_csv,
)
from ingest_service.report.spreadsheet import BOM, excel_text, percent_format

TITLE_FONT = Font(size=15, bold=True, color="1F3864")
HEADER_FONT = Font(bold=True, color="FFFFFF")
HEADER_FILL = PatternFill("solid", fgColor="2F5597")
CITY_FILL = PatternFill("solid", fgColor="DDEBF7")
MET_FILL = PatternFill("solid", fgColor="C6EFCE")
MISSED_FILL = PatternFill("solid", fgColor="FFC7CE")
NA_FILL = PatternFill("solid", fgColor="EDEDED")
TOTAL_FONT = Font(bold=True)
THIN = Side(style="thin", color="BFBFBF")
BORDER = Border(left=THIN, right=THIN, top=THIN, bottom=THIN)
MET_COLOUR = "70AD47"
MISSED_COLOUR = "C00000"
PERCENT = "0.0%"
TONNES = "#,##0.000"
FARMS = "#,##0"
HEADER_ROW = 4
AXIS_STEPS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
NARROWEST, WIDEST = 8.0, 48.0

STRAW_USES = [u.value for u in StrawUse]
MANURE_USES = [u.value for u in ManureUse]
USE_ZH = {"fertilizer": "肥料化", "feed": "饲料化", "fuel": "燃料化", "substrate": "基料化",
          "material": "原料化", "energy": "能源化", "bedding": "垫料", "other": "其他"}
NOT_AVAILABLE = "无数据 n/a"
"""A figure whose denominator is 0: no data, which is neither 0 % nor "not met"."""
FLAG_LABELS = {"above_100_percent": "⚠ >100 %",
               "county_capped": "⚠ 区县按 100 % 计 counties capped at 100 %"}
"""How a data-quality flag reads in the workbook; any other flag as "⚠ <flag>"."""
STATUS_LABELS = {"equipped": "✓ 配套 equipped", "not_equipped": "✗ 未配套 not equipped"}
TOTAL_LABEL = "合计 Total"
CAPPED_LABEL = "计入全市 Counted"
"""The city's figure when it counts a county above 100 % at 100 % (flag ``county_capped``):
below the members' plain total, so the sheet shows both."""
MEMBER_SHEETS: dict[IndicatorId, str] = {
    IndicatorId.MANURE_FACILITY_RATE: "名单 设施 Facility farms",
    IndicatorId.MANURE_LEDGER_COVERAGE: "名单 台账 Ledger farms",
    IndicatorId.FILM_RECOVERY_RATE: "名单 农膜 Film sites",
    IndicatorId.STRAW_UTILIZATION_RATE: "名单 秸秆 Straw sites",
}
PARAMETERS_SHEET = "参数 Parameters"
SHEETS = ("汇总 Summary", "农膜 Film", "秸秆 Straw", "粪污 Manure", "图表 Charts",
          *MEMBER_SHEETS.values(), PARAMETERS_SHEET)


def _put(sheet: Worksheet, row: int, col: int, value: object) -> Cell:
    """One cell; text is typed as a string, so a name like ``=1+1`` is never a formula."""
    if isinstance(value, str):
        cell = sheet.cell(row=row, column=col)
        cell.value = excel_text(value)
        cell.data_type = "s"  # openpyxl types any text starting with "=" as a formula
        return cell
    return sheet.cell(row=row, column=col, value=value)


def _header(sheet: Worksheet, row: int, labels: Sequence[str]) -> None:
    for col, label in enumerate(labels, start=1):
        cell = _put(sheet, row, col, label)
        cell.font, cell.fill, cell.border = HEADER_FONT, HEADER_FILL, BORDER
        cell.alignment = Alignment(horizontal="center", vertical="center", wrap_text=True)
    sheet.row_dimensions[row].height = 32


def _row(sheet: Worksheet, row: int, values: Sequence[object],
         formats: Sequence[str | None] = ()) -> None:
    for col, value in enumerate(values, start=1):
        cell = _put(sheet, row, col, value)
        cell.border = BORDER
        fmt = formats[col - 1] if col - 1 < len(formats) else None
        if fmt:
            cell.number_format = fmt


def _widths(sheet: Worksheet, widths: Iterable[float]) -> None:
    for col, width in enumerate(widths, start=1):
        sheet.column_dimensions[get_column_letter(col)].width = width


def _title(sheet: Worksheet, report: Report, title: str) -> int:
    """Title and dates in rows 1-2; :func:`_print_setup` spans them over the table."""
    sheet["A1"] = title
    sheet["A1"].font = TITLE_FONT
    sheet["A2"] = (f"{report.year} 年度 · 截至 as of {_local(report.as_of)} · "
                   f"生成 generated {_local(report.generated)}")
    sheet["A2"].font = Font(italic=True, color="595959")
    if report.closed:  # a closed year: the frozen figures, and says so
        sheet["A3"] = report.closed
        sheet["A3"].font = Font(bold=True, color="C00000")
    return HEADER_ROW


def _text_width(text: str) -> float:
    """Width in Excel's character units: a Chinese character takes two."""
    return float(sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text))


def _cell_width(cell: Cell) -> float:
    value = cell.value
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = str(value)
        if cell.alignment.wrap_text:  # a header: Chinese on one line, English on the next
            zh, _, en = text.partition(" ")
            return max(_text_width(zh), _text_width(en))
        return _text_width(text)
    return float(len(f"{value:,.3f}"))


def _fit_columns(sheet: Worksheet, columns: int, first_row: int = HEADER_ROW) -> None:
    """Each column as wide as its widest cell from the header down, within bounds."""
    widest = [NARROWEST] * columns
    for row in sheet.iter_rows(min_row=first_row, max_col=columns):
        for cell in row:
            if isinstance(cell, Cell) and cell.column is not None:
                width = _cell_width(cell) * (1.35 if cell.font.b else 1.0) + 2
                widest[cell.column - 1] = min(WIDEST, max(widest[cell.column - 1], width))
    _widths(sheet, widest)


def _print_setup(sheet: Worksheet, columns: int, title_rows: str | None = "4:4",
                 pages_tall: int = 0) -> None:
    """A4 landscape, one page wide, the header row on every page, titles over the table.

    Without it a ledger printed as twelve portrait pages with names on one page and
    their numbers on another, and the title was cut at the first page's edge.
    """
    last = get_column_letter(columns)
    for row in (1, 2):
        sheet.merge_cells(f"A{row}:{last}{row}")
        sheet[f"A{row}"].alignment = Alignment(wrap_text=True, vertical="center")
    sheet.row_dimensions[1].height = 24
    sheet.page_setup.orientation = "landscape"
    sheet.page_setup.paperSize = sheet.PAPERSIZE_A4
    sheet.page_setup.fitToWidth = 1
    sheet.page_setup.fitToHeight = pages_tall  # 0: as many as the rows need
    sheet.sheet_properties.pageSetUpPr.fitToPage = True
    if title_rows:
        sheet.print_title_rows = title_rows
    sheet.page_margins = PageMargins(left=0.5, right=0.5, top=0.7, bottom=0.7, header=0.3,
                                     footer=0.3)
    sheet.print_options.horizontalCentered = True
    sheet.oddHeader.left.text = sheet.title.replace("&", "&&")
    sheet.oddFooter.right.text = "&P"
    sheet.page_setup.firstPageNumber = 1  # each sheet's pages count from 1
    sheet.page_setup.useFirstPageNumber = True


def _local(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M %Z").strip()


def flag_text(flags: Iterable[str]) -> str:
    """Data-quality flags as the workbook shows them, e.g. "⚠ >100 %"."""
    return " ".join(FLAG_LABELS.get(flag, f"⚠ {flag}") for flag in flags)


def met_text(item: IndicatorValue) -> str:
    if item.value is None or item.met is None:
        return NOT_AVAILABLE
    return "✓ 达标 met" if item.met else "✗ 未达标 not met"


def summary_sheet(sheet: Worksheet, report: Report) -> None:
    row = _title(sheet, report,
                 f"大同市农业绿色发展指标 {report.year} 年度报告 / "
                 f"Datong green-agriculture indicators, {report.year}")
    _header(sheet, row, ["范围 Scope", "指标 Indicator", "分子 Numerator", "分母 Denominator",
                         "单位 Unit", "数值 Value", "目标 Target", "达标 Met", "标记 Flags"])
    for item in report.indicators:
        row += 1
        zh, en, unit = INDICATOR_LABELS[item.indicator]
        met = met_text(item)
        _row(sheet, row, [item.county or CITY_LABEL, f"{zh} {en}", item.numerator,
                          item.denominator, "吨 t" if unit == "t" else "场 farms",
                          NOT_AVAILABLE if item.value is None else item.value,
                          item.target, met, flag_text(item.flags)],
             [None, None, *[TONNES if unit == "t" else FARMS] * 2, None,
              percent_format(item.value, item.target, item.met), "0%", None, None])
        if item.county is None:
            for col in range(1, 6):
                sheet.cell(row=row, column=col).fill = CITY_FILL
            sheet.cell(row=row, column=1).font = TOTAL_FONT
        sheet.cell(row=row, column=8).fill = (
            NA_FILL if met == NOT_AVAILABLE else MET_FILL if item.met else MISSED_FILL)
        if item.value is None:
            sheet.cell(row=row, column=6).alignment = Alignment(horizontal="right")
    _fit_columns(sheet, 9)
    row += 2
    notes = [
        "数值 = 分子 ÷ 分母；分母为 0 时为“无数据 n/a”，既非 0 % 也非未达标。Value = numerator ÷ "
        "denominator; n/a (neither 0 % nor not met) when the denominator is 0.",
        "全市合计各区县分子与分母后再相除，不对比率取平均。The city adds up the counties' "
        "numerators and denominators; it never averages rates.",
        "与 GET /api/v1/indicators 数据一致；明细见各台账与名单工作表，参数见“参数”表。Same "
        "numbers as the API; ledgers, members and parameters on the following sheets.",
    ]
    for note in notes:
        cell = sheet.cell(row=row, column=1, value=note)
        cell.font = Font(size=9, color="595959")
        cell.alignment = Alignment(wrap_text=True, vertical="top")
        sheet.merge_cells(start_row=row, start_column=1, end_row=row, end_column=9)
        sheet.row_dimensions[row].height = 26
        row += 1
    sheet.freeze_panes = "A5"
    _print_setup(sheet, 9)


def film_sheet(sheet: Worksheet, report: Report) -> None:
    row = _title(sheet, report, "农膜使用与回收台账 / Film applied and recovered (t)")
    _header(sheet, row, ["区县 County", "站点 Site", "名称 Name", "覆膜 Applied t",
                         "回收 Recovered t", "回收率 Rate"])
    sites: dict[tuple[str, str, str], dict[EventType, float]] = {}
    for e in report.entries(EventType.FILM_APPLIED, EventType.FILM_RECOVERED):
        sites.setdefault((e.county, e.site_id, e.site_name), {})[e.type] = e.mass_t
    fmts = [None, None, None, TONNES, TONNES, PERCENT]
    for county in report.counties:
        for (c, site_id, name), masses in sorted(sites.items()):
            if c != county:
                continue
            row += 1
            applied = masses.get(EventType.FILM_APPLIED, 0.0)
            recovered = masses.get(EventType.FILM_RECOVERED, 0.0)
            _row(sheet, row, [county, site_id, name, applied, recovered,
                              recovered / applied if applied else None], fmts)
        row += 1
        applied = report.total(county, EventType.FILM_APPLIED)
        recovered = report.total(county, EventType.FILM_RECOVERED)
        _total_row(sheet, row, [county, "合计 Total", "", applied, recovered,
                                recovered / applied if applied else None], fmts)
    _fit_columns(sheet, 6)
    sheet.freeze_panes = "A5"
    _print_setup(sheet, 6)


def _total_row(sheet: Worksheet, row: int, values: Sequence[object],
               formats: Sequence[str | None]) -> None:
    _row(sheet, row, values, formats)
    for col in range(1, len(values) + 1):
        sheet.cell(row=row, column=col).font = TOTAL_FONT
        sheet.cell(row=row, column=col).fill = CITY_FILL


def straw_sheet(sheet: Worksheet, report: Report) -> None:
    row = _title(sheet, report, "秸秆产生与利用台账 / Straw harvested and utilised (t)")
    totals = county_totals(report)
    uses = [f"{USE_ZH[u]} {u}" for u in STRAW_USES]
    _header(sheet, row, ["区县 County", "粮食 Grain t", "秸秆产生 Produced t", *uses,
                         "利用合计 Utilised t", "利用率 Rate"])
    by_use: dict[tuple[str, str], float] = {}
    for e in report.entries(EventType.STRAW_UTILIZED):
        by_use[(e.county, e.item)] = by_use.get((e.county, e.item), 0.0) + e.mass_t
    fmts = [None, TONNES, TONNES, *[TONNES] * len(uses), TONNES, PERCENT]
    for county in report.counties:
        row += 1
        produced = totals[county].get("straw_produced", 0.0)
        used = totals[county].get(EventType.STRAW_UTILIZED.value, 0.0)
        _row(sheet, row, [county, totals[county].get("grain", 0.0), produced,
                          *[by_use.get((county, u), 0.0) for u in STRAW_USES], used,
                          used / produced if produced else None], fmts)
    row += 2
    sheet.cell(row=row, column=1, value="收获明细 Harvests").font = TOTAL_FONT
    row += 1
    _header(sheet, row, ["区县 County", "站点 Site", "名称 Name", "作物 Crop", "粮食 Grain t",
                         "草谷比×可收集系数 Collectable per t", "可收集秸秆 Collectable t"])
    for e in report.entries(EventType.HARVEST):
        row += 1
        _row(sheet, row, [e.county, e.site_id, e.site_name, e.item, e.grain_t, e.straw_ratio,
                          e.straw_t], [None, None, None, None, TONNES, "0.0#", TONNES])
    row += 2
    sheet.cell(row=row, column=1, value="利用明细 Utilisation").font = TOTAL_FONT
    row += 1
    _header(sheet, row, ["区县 County", "站点 Site", "名称 Name", "用途 Use", "利用 Utilised t",
                         "记录 Entries"])
    for e in report.entries(EventType.STRAW_UTILIZED):
        row += 1
        _row(sheet, row, [e.county, e.site_id, e.site_name, f"{USE_ZH.get(e.item, '')} {e.item}",
                          e.mass_t, e.entries], [None, None, None, None, TONNES, "0"])
    _fit_columns(sheet, 5 + len(uses))
    sheet.freeze_panes = "A5"
    _print_setup(sheet, 5 + len(uses), title_rows="1:2")


def manure_sheet(sheet: Worksheet, report: Report) -> None:
    row = _title(sheet, report, "粪污资源化利用台账 / Manure treated and utilised (t)")
    uses = [f"{USE_ZH[u]} {u}" for u in MANURE_USES]
    _header(sheet, row, ["区县 County", "站点 Site", "名称 Name", "规模场 Large-scale",
                         "处理 Treated t", *uses, "利用合计 Utilised t", "记录 Entries",
                         "有台账 Ledger"])
    fmts = [None, None, None, None, TONNES, *[TONNES] * len(uses), TONNES, "0", None]
    for county in report.counties:
        for site_id, name, large in report.manure_sites.get(county, []):
            mine = [e for e in report.entries(EventType.MANURE_TREATED, EventType.MANURE_UTILIZED)
                    if e.site_id == site_id and e.county == county]
            treated = sum(e.mass_t for e in mine if e.type == EventType.MANURE_TREATED)
            used = {u: sum(e.mass_t for e in mine if e.type == EventType.MANURE_UTILIZED
                           and e.item == u) for u in MANURE_USES}
            entries = sum(e.entries for e in mine)
            row += 1
            _row(sheet, row, [county, site_id, name, "是 yes" if large else "否 no", treated,
                              *used.values(), sum(used.values()), entries,
                              "是 yes" if entries else "否 no"], fmts)
            if large and not entries:
                sheet.cell(row=row, column=len(fmts)).fill = MISSED_FILL
    _fit_columns(sheet, len(fmts))
    sheet.freeze_panes = "A5"
    _print_setup(sheet, len(fmts))


def axis_top(peak: float) -> float:
    """The value axis's top: a round step (10 %, 20 %, 50 %, 100 %, …) above ``peak``.

    ``peak`` is the highest bar or target, so a rate above 100 % (more film recovered
    than applied) is never cut off and nothing forces the axis to 100 %.
    """
    for step in AXIS_STEPS:
        if peak <= 10 * step:
            break
    return round(max(1, math.ceil(peak / step - 1e-9)) * step, 10)


def charts_sheet(sheet: Worksheet, report: Report) -> None:
    """A data table (scopes × indicators, with targets) and one bar chart per indicator."""
    row = _title(sheet, report, "指标对比图 / Indicators against their targets")
    indicators = list(IndicatorId)
    _header(sheet, row, ["范围 Scope", *[f"{INDICATOR_LABELS[i][0]}" for i in indicators],
                         *[f"目标 {INDICATOR_LABELS[i][0]}" for i in indicators]])
    results = {(v.indicator, v.county): v for v in report.indicators}
    scopes: list[str | None] = [None, *report.counties]
    first = row + 1
    for county in scopes:
        row += 1
        items = [results.get((i, county)) for i in indicators]
        _row(sheet, row, [county or CITY_LABEL, *[v.value if v else None for v in items],
                          *[TARGETS[i] for i in indicators]],
             [None, *[percent_format(v.value, v.target, v.met) if v else PERCENT
                      for v in items], *["0%"] * len(indicators)])
    last = row
    row += 2
    legend = sheet.cell(row=row, column=1, value=(
        "柱色：绿 = 达标，红 = 未达标；虚线 = 目标。Bars: green = met, red = not met; "
        "dashed line = target."))
    legend.font = Font(size=9, color="595959")
    columns = 1 + 2 * len(indicators)
    _widths(sheet, [16, *[13] * (columns - 1)])
    sheet.row_dimensions[HEADER_ROW].height = 48
    sheet.merge_cells(start_row=row, start_column=1, end_row=row, end_column=columns)
    categories = Reference(sheet, min_col=1, min_row=first, max_row=last)
    for n, indicator in enumerate(indicators):
        zh, en, _ = INDICATOR_LABELS[indicator]
        bars = BarChart()
        bars.type = "col"
        bars.title = f"{zh} {en}"
        bars.add_data(Reference(sheet, min_col=2 + n, min_row=first - 1, max_row=last),
                      titles_from_data=True)
        bars.set_categories(categories)
        series = bars.series[0]
        series.graphicalProperties.solidFill = MET_COLOUR
        for idx, county in enumerate(scopes):
            item = results.get((indicator, county))
            if item is not None and item.value is not None:
                fill = MET_COLOUR if item.met else MISSED_COLOUR
                series.dPt.append(DataPoint(idx=idx, spPr=GraphicalProperties(solidFill=fill)))
        series.dLbls = DataLabelList(showVal=True, showSerName=False, showCatName=False,
                                     showLegendKey=False, showPercent=False)
        goal = LineChart()
        goal.add_data(Reference(sheet, min_col=2 + len(indicators) + n, min_row=first - 1,
                                max_row=last), titles_from_data=True)
        goal.series[0].graphicalProperties.line.solidFill = "404040"
        goal.series[0].graphicalProperties.line.dashStyle = "dash"
        goal.series[0].graphicalProperties.line.width = 28575
        goal.series[0].smooth = False
        bars += goal
        peak = max([TARGETS[indicator], *[v.value for (i, _), v in results.items()
                                          if i == indicator and v.value is not None]])
        bars.y_axis.scaling.min = 0
        bars.y_axis.scaling.max = axis_top(peak)
        bars.y_axis.number_format = "0%"
        bars.y_axis.title = "%"
        bars.x_axis.delete = False
        bars.y_axis.delete = False
        bars.legend.position = "b"
        bars.legend.legendEntry = [LegendEntry(idx=0, delete=True)]  # colours: see the note
        bars.height, bars.width = 8, 11.5
        anchor_row = row + 2 + (n // 2) * 17
        anchor_col = 1 if n % 2 == 0 else _column_after(sheet, 12)
        sheet.add_chart(bars, f"{get_column_letter(anchor_col)}{anchor_row}")
    _print_setup(sheet, columns, title_rows=None, pages_tall=1)


def detail_text(detail: dict[str, float | int | str | None]) -> str:
    """A member's ``detail`` on one line: ``days_reported=31; last_reading=…``."""
    return "; ".join(f"{key}={'—' if value is None else value}" for key, value in detail.items())


def members_sheet(sheet: Worksheet, report: Report, indicator: IndicatorId) -> None:
    """The sites behind one indicator, per county with a county total, then the city's."""
    zh, en, unit = INDICATOR_LABELS[indicator]
    row = _title(sheet, report, f"{zh} 名单 / {en}: the sites behind the figure")
    _header(sheet, row, ["区县 County", "站点 Site", "名称 Name", "分子 Numerator",
                         "分母 Denominator", "状态 Status", "说明 Detail"])
    number = TONNES if unit == "t" else FARMS
    fmts = [None, None, None, number, number, None, None]
    mine = [m for m in report.members if m.indicator == indicator]
    counties = list(dict.fromkeys([  # the summary's counties, in its order, then any other
        *[v.county for v in report.indicators if v.indicator == indicator and v.county],
        *report.counties, *sorted({m.county for m in mine})]))
    for county in counties:
        members = sorted((m for m in mine if m.county == county), key=lambda m: m.site_id)
        for member in members:
            row += 1
            _row(sheet, row, [county, member.site_id, member.name, member.numerator,
                              member.denominator, _status(member), detail_text(member.detail)],
                 fmts)
        row += 1
        _total_row(sheet, row, [county, TOTAL_LABEL, "", sum(m.numerator for m in members),
                                sum(m.denominator for m in members), "", ""], fmts)
    row += 1
    _total_row(sheet, row, [CITY_LABEL, TOTAL_LABEL, "", sum(m.numerator for m in mine),
                            sum(m.denominator for m in mine), "", ""], fmts)
    for city in report.indicators:
        if city.indicator == indicator and city.county is None and "county_capped" in city.flags:
            row += 1
            _total_row(sheet, row, [CITY_LABEL, CAPPED_LABEL, "", city.numerator,
                                    city.denominator, flag_text(city.flags), ""], fmts)
    _fit_columns(sheet, len(fmts))
    sheet.freeze_panes = "A5"
    _print_setup(sheet, len(fmts))


def _status(member: Member) -> str:
    if member.status is None:
        return ""
    return STATUS_LABELS.get(member.status, member.status)


def _joined(values: Iterable[str]) -> str:
    return ", ".join(sorted({v for v in values if v})) or "—"


def parameters_sheet(sheet: Worksheet, report: Report) -> None:
    """Lineage: the registry's digest, when the figures were computed, and per indicator
    its formula id, data source and every parameter with the scopes that used each value."""
    row = _title(sheet, report, "参数与来源 / Parameters, formulas and lineage")
    _header(sheet, row, ["指标 Indicator", "公式 Formula", "数据来源 Source", "参数 Parameter",
                         "值 Value", "范围 Scopes"])
    computed = sorted(v.computed_at for v in report.indicators if v.computed_at)
    when = " … ".join(dict.fromkeys(_local(t) for t in computed[:1] + computed[-1:])) or "—"
    for label, value in (("登记册摘要 Registry digest (SHA-256)", report.registry_digest or "—"),
                         ("计算时间 Computed at (first … last)", when)):
        row += 1
        _row(sheet, row, [label, "", "", "", value, "全部 all"])
    for indicator in IndicatorId:
        items = [v for v in report.indicators if v.indicator == indicator]
        if not items:
            continue
        zh, en, _ = INDICATOR_LABELS[indicator]
        formula = _joined(v.formula for v in items)
        source = _joined(v.source for v in items)
        names = sorted({name for v in items for name in v.parameters})
        if not names:
            row += 1
            _row(sheet, row, [f"{zh} {en}", formula, source, "—", "", "全部 all"])
        for name in names:
            scopes: dict[float | str, list[str]] = {}
            for item in items:
                if name in item.parameters:
                    scopes.setdefault(item.parameters[name], []).append(item.county or CITY_LABEL)
            for setting, where in scopes.items():
                row += 1
                _row(sheet, row, [f"{zh} {en}", formula, source, name, setting,
                                  "全部 all" if len(where) == len(items) else ", ".join(where)])
    _fit_columns(sheet, 6)
    sheet.freeze_panes = "A5"
    _print_setup(sheet, 6)


def _column_after(sheet: Worksheet, centimetres: float) -> int:
    """The first column starting at least ``centimetres`` from the left edge."""
    edge, col = 0.0, 1
    while edge < centimetres:
        width = sheet.column_dimensions[get_column_letter(col)].width or 8.43
        edge += width * 0.19  # one character unit ≈ 7 px ≈ 0.19 cm at 96 dpi
        col += 1
    return col


def workbook(report: Report) -> Workbook:
    book = Workbook()
    summary = book.active
    assert summary is not None
    summary.title = SHEETS[0]
    summary_sheet(summary, report)
    film_sheet(book.create_sheet(SHEETS[1]), report)
    straw_sheet(book.create_sheet(SHEETS[2]), report)
    manure_sheet(book.create_sheet(SHEETS[3]), report)
    charts_sheet(book.create_sheet(SHEETS[4]), report)
    for indicator, title in MEMBER_SHEETS.items():
        members_sheet(book.create_sheet(title), report, indicator)
    parameters_sheet(book.create_sheet(PARAMETERS_SHEET), report)
    book.properties.title = f"Datong green-agriculture indicators {report.year}"
    book.properties.creator = "farm-iot-collector"
    return book


def workbook_bytes(report: Report) -> bytes:
    buffer = io.BytesIO()
    workbook(report).save(buffer)
    return buffer.getvalue()


def write_report(report: Report, folder: Path) -> list[Path]:
    """``report-YYYY.xlsx``, ``report-YYYY-summary.csv`` and ``report-YYYY-ledger.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"report-{report.year}"
    xlsx = folder / f"{stem}.xlsx"
    xlsx.write_bytes(workbook_bytes(report))
    summary = folder / f"{stem}-summary.csv"
    summary.write_text(BOM + summary_csv(report), encoding="utf-8")
    ledger = folder / f"{stem}-ledger.csv"
    ledger.write_text(BOM + ledger_csv(report), encoding="utf-8")
    return [xlsx, summary, ledger]
