"""The API's error answers: no query answer becomes a 500 (contract §7).

InfluxDB down or refusing a query (:class:`QueryError`) is a 503 with
``Retry-After``; numbers InfluxDB returned that cannot be reported (sums grown to
infinity from implausible masses) are a 502. Both are JSON ``{"detail": "..."}``
with a one-line message, installed once for every route.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from farm_contract.indicators import IndicatorValue
from ingest_service.influxql import QueryError

MAX_DETAIL = 300
RETRY_AFTER_S = 10
EARLIEST_TIME = datetime(1677, 9, 22, tzinfo=UTC)
LATEST_TIME = datetime(2262, 4, 11, tzinfo=UTC)
"""InfluxDB's times are int64 nanoseconds since 1970: about 1677-09-21 to 2262-04-11."""


class ErrorMessage(BaseModel):  # every error answer's body, for the OpenAPI document
    detail: str


class UnreportableAnswer(Exception):
    """InfluxDB answered numbers that cannot be reported (not finite)."""


def one_line(text: str, limit: int = MAX_DETAIL) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def ensure_finite(values: Iterable[IndicatorValue]) -> None:
    """Raise :class:`UnreportableAnswer` if a numerator, denominator or value is not finite."""
    for item in values:
        for number in (item.numerator, item.denominator, item.value):
            if number is not None and not math.isfinite(number):
                raise UnreportableAnswer(
                    f"{item.indicator} of {item.county or 'the city'} is {number}: "
                    "sums of implausible masses in InfluxDB; find them in the ledgers"
                )


def influx_time(moment: datetime) -> datetime:
    """``moment`` in UTC if InfluxDB can hold it; a ValueError (a 422) otherwise."""
    try:
        utc = moment.astimezone(UTC)
    except (OverflowError, ValueError):
        utc = None
    if utc is None or not EARLIEST_TIME <= utc < LATEST_TIME:
        raise ValueError(f"time must be between {EARLIEST_TIME:%Y-%m-%d} and "
                         f"{LATEST_TIME:%Y-%m-%d} UTC (InfluxDB's range)")
    return utc


def _query_failed(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": one_line(f"InfluxDB query failed: {exc}")},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def _unreportable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": one_line(f"InfluxDB returned numbers that cannot be reported: {exc}")},
        status_code=status.HTTP_502_BAD_GATEWAY,
    )


def install_error_answers(app: FastAPI) -> None:
    """Map the query layer's failures to 503/502 JSON answers on every route."""
    app.add_exception_handler(QueryError, _query_failed)
    app.add_exception_handler(UnreportableAnswer, _unreportable)
