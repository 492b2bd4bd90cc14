"""``GET /api/v1/indicators``: the plan's indicators for a year, as JSON or CSV (contract §7).

A plain ``def`` route: FastAPI runs it in its thread pool, so the InfluxDB queries
and the CSV rendering never hold the event loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from farm_contract.indicators import IndicatorValue
from ingest_service.api.deps import EngineDep, StateDep, reads
from ingest_service.api.errors import ErrorMessage, ensure_finite
from ingest_service.api.params import CSV_MEDIA_TYPE, MAX_YEAR, MIN_YEAR, year_or_current
from ingest_service.indicators.closing import year_figures
from ingest_service.indicators.engine import UnknownCountyError
from ingest_service.report.spreadsheet import BOM, csv_text, rounded_indicator

INDICATOR_COLUMNS: tuple[str, ...] = tuple(IndicatorValue.model_fields)

router = APIRouter(tags=["indicators"], dependencies=[reads])


class UnknownCounty(BaseModel):
    detail: str
    known_counties: list[str]


def unknown_county_answer(exc: UnknownCountyError) -> JSONResponse:
    """The 404 for a county the registry does not know, naming the ones it does."""
    return JSONResponse(
        UnknownCounty(detail=str(exc), known_counties=exc.known).model_dump(),
        status_code=status.HTTP_404_NOT_FOUND,
    )


def indicators_csv(values: Iterable[IndicatorValue]) -> str:
    """Indicator rows as CSV with a header row; a null value, ``met`` or city county is
    empty (n/a is not 0 and not "not met").

    Numbers are rounded for display as in the report's CSV; ``met`` is the engine's,
    decided on the exact values. ``parameters`` is compact JSON and ``flags`` a
    JSON list (:func:`~ingest_service.report.spreadsheet.csv_cell`).
    """
    return csv_text(
        INDICATOR_COLUMNS,
        ([rounded_indicator(item)[column] for column in INDICATOR_COLUMNS] for item in values),
    )


def _quality(part: str) -> float:
    for param in part.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def wants_csv(accept: str | None) -> bool:
    """Content negotiation: CSV when ``text/csv`` is acceptable and JSON is not preferred."""
    csv_q, json_q = 0.0, 0.0
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip().lower()
        if media == "text/csv":
            csv_q = max(csv_q, _quality(part))
        elif media == "application/json":
            json_q = max(json_q, _quality(part))
    return csv_q > 0 and csv_q >= json_q


@router.get(
    "/api/v1/indicators",
    summary="The plan's indicators for a year",
    description=(
        "One row per indicator and scope: the city first (all counties added up: "
        "numerators and denominators are summed, never rates averaged), then every "
        "county of the registry. With `county`, only that county's four rows.\n\n"
        "A year is a calendar year in Asia/Shanghai; values are as of its end, or as "
        "of now for the current year. `value` and `met` are null (n/a, 无数据: "
        "neither 0 nor not met) when the denominator is 0. Each row carries its "
        "lineage: `computed_at`, `formula`, `parameters`, `source`, `coverage`, `flags` "
        "(e.g. `above_100_percent`), `closed`; `GET /api/v1/indicators/{indicator}/members` "
        "opens a figure to its sites.\n\nCSV (UTF-8, header row) with `format=csv` or "
        "`Accept: text/csv`; it starts with a UTF-8 byte-order mark so Excel reads the Chinese "
        "names (`bom=false` leaves it out)."
    ),
    response_model=list[IndicatorValue],
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        404: {"model": UnknownCounty, "description": "no such county in the registry"},
        503: {"model": ErrorMessage, "description": "InfluxDB unreachable"},
    },
)
def indicators(
    request: Request,
    response: Response,
    state: StateDep,
    engine: EngineDep,
    year: Annotated[
        int | None,
        Query(ge=MIN_YEAR, le=MAX_YEAR, description="calendar year; default: the current one"),
    ] = None,
    county: Annotated[
        str | None,
        Query(min_length=1, max_length=200, description="one county/district, e.g. 平城区"),
    ] = None,
    output_format: Annotated[
        Literal["json", "csv"] | None,
        Query(alias="format", description="json or csv; overrides the Accept header"),
    ] = None,
    bom: Annotated[bool, Query(description="CSV only: start with a UTF-8 BOM (for Excel)")] = True,
) -> Any:
    year = year_or_current(year, state.settings.tz)
    try:
        rows, closed_headers = year_figures(engine, year, county)  # frozen if closed
    except UnknownCountyError as exc:
        return unknown_county_answer(exc)
    ensure_finite(rows)
    as_csv = output_format == "csv" or (
        output_format is None and wants_csv(request.headers.get("accept"))
    )
    if not as_csv:
        response.headers.update(closed_headers)
        return rows
    text = (BOM if bom else "") + indicators_csv(rows)
    return Response(
        text.encode("utf-8"),
        media_type=CSV_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="indicators-{year}.csv"',
                 **closed_headers},
    )
