"""``GET /api/v1/report``: the annual report as a download (Excel workbook or CSV).

The same report as ``python -m ingest_service report``: indicators from the engine
(the numbers of ``GET /api/v1/indicators``) and the ledgers beneath them. A read,
under the read rule of :mod:`ingest_service.api.security`; InfluxDB failures are the
503 of :mod:`ingest_service.api.errors`. Building the report (InfluxDB queries) and
rendering it (the workbook is CPU work, seconds for a big year) both run in the
thread pool, so probes and other requests are answered meanwhile. The file name goes
in ``Content-Disposition`` twice — an ASCII ``filename`` for old clients and an
RFC 5987 ``filename*`` in UTF-8.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ingest_service.api.deps import EngineDep, StateDep, reads
from ingest_service.api.errors import ensure_finite
from ingest_service.api.params import CSV_MEDIA_TYPE, MAX_YEAR, MIN_YEAR, year_or_current
from ingest_service.report.build import Report, build_report, ledger_csv, summary_csv
from ingest_service.report.excel import workbook_bytes

XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def content_disposition(filename: str, ascii_fallback: str) -> str:
    """``attachment`` with an ASCII name and the UTF-8 name (RFC 6266 / RFC 5987)."""
    return f"attachment; filename=\"{ascii_fallback}\"; filename*=UTF-8''{quote(filename)}"


def render(report: Report, output_format: str) -> tuple[bytes, str, str]:
    """Body, media type and file extension of one format (CPU-bound: run it off the loop)."""
    if output_format == "xlsx":
        return workbook_bytes(report), XLSX_MEDIA_TYPE, "xlsx"
    text = ledger_csv(report) if output_format == "ledger-csv" else summary_csv(report)
    return ("\ufeff" + text).encode("utf-8"), CSV_MEDIA_TYPE, "csv"


router = APIRouter(tags=["indicators"], dependencies=[reads])


@router.get(
    "/api/v1/report",
    summary="The annual report for a year (Excel or CSV)",
    description=(
        "The city report of a calendar year: `xlsx` is a workbook with the summary "
        "(city and every county: indicator, numerator, denominator, value, target, "
        "met, flags; n/a as 无数据 n/a), the film, straw and manure ledgers per site, "
        "native charts of the indicators against their targets, a members sheet per "
        "indicator (the sites behind each figure, adding up to it) and a parameters "
        "sheet (parameters, formula ids, when computed, the registry's digest); `csv` "
        "is the summary (the API's indicator columns plus the Chinese name), "
        "`ledger-csv` the ledgers. CSV starts with a UTF-8 byte-order mark so Excel "
        "shows Chinese names intact."
    ),
    response_class=Response,
    responses={
        200: {"content": {XLSX_MEDIA_TYPE: {}, "text/csv": {}}},
        502: {"description": "InfluxDB returned numbers that cannot be reported"},
        503: {"description": "InfluxDB unreachable"},
    },
)
async def report(
    state: StateDep,
    engine: EngineDep,
    year: Annotated[int | None, Query(ge=MIN_YEAR, le=MAX_YEAR,
                                      description="calendar year; default: this one")] = None,
    output_format: Annotated[Literal["xlsx", "csv", "ledger-csv"], Query(
        alias="format", description="xlsx (default), csv or ledger-csv")] = "xlsx",
) -> Response:
    settings = state.settings
    chosen = year_or_current(year, settings.tz)
    built = await run_in_threadpool(build_report, engine, state.registry.get, settings, chosen)
    ensure_finite(built.indicators)
    body, media_type, extension = await run_in_threadpool(render, built, output_format)
    suffix = "-ledger" if output_format == "ledger-csv" else ""
    ascii_name = f"datong-farm-report-{chosen}{suffix}.{extension}"
    name = f"大同市农业绿色发展指标-{chosen}{suffix}.{extension}"
    return Response(body, media_type=media_type,
                    headers={"Content-Disposition": content_disposition(name, ascii_name)})
