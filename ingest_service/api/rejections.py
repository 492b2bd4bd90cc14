"""``GET /api/v1/rejections``: recent rejected messages and counts by reason.

The InfluxQL is built by :func:`rejections_query`, a pure function (tested by its
text), so the route only runs it and shapes the answer. Every name is quoted with
:func:`~ingest_service.influxql.quote_ident`, the reason with ``quote_literal``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field

from farm_contract import schema
from ingest_service.api.deps import QueryDep, reads
from ingest_service.api.errors import ErrorMessage, influx_time
from ingest_service.influxql import quote_ident, quote_literal, time_literal

router = APIRouter(tags=["operations"], dependencies=[reads])

Since = Annotated[AwareDatetime, AfterValidator(influx_time)]
"""An RFC 3339 time with offset that InfluxDB can hold (else 422, never an overflow)."""


class RejectionRecord(BaseModel):
    time: datetime
    reason: str
    topic: str | None
    detail: str | None
    payload: str | None = Field(description="the first 1 KiB of the payload")


class Rejections(BaseModel):
    counts: dict[str, int] = Field(description="rejections by reason (since `since`, any reason)")
    total: int
    rejections: list[RejectionRecord] = Field(description="newest first")


@dataclass(frozen=True)
class RejectionsQuery:
    """The two InfluxQL statements of one rejections answer."""

    recent: str
    """The newest ``limit`` rejections (of ``reason`` if given), epoch-ms times."""
    counts: str
    """Rejections per reason since ``since``, of every reason."""


def rejections_query(reason: str | None, since: datetime | None, limit: int) -> RejectionsQuery:
    """The InfluxQL for ``/api/v1/rejections``; ``reason`` filters the list, not the counts."""
    table = quote_ident(schema.REJECTION)
    time_clause = f"time >= {time_literal(since)}" if since is not None else ""
    conditions = [time_clause] if time_clause else []
    if reason is not None:
        conditions.append(f"{quote_ident('reason')} = {quote_literal(reason)}")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    columns = ", ".join(quote_ident(name) for name in ("reason", "topic", "detail", "payload"))
    count_where = f" WHERE {time_clause}" if time_clause else ""
    return RejectionsQuery(
        recent=f"SELECT {columns} FROM {table}{where} ORDER BY time DESC LIMIT {limit}",
        counts=(f"SELECT count({quote_ident('detail')}) FROM {table}{count_where} "
                f"GROUP BY {quote_ident('reason')}"),
    )


def _from_epoch_ms(epoch_ms: object) -> datetime:
    """A row's time (the query asks for epoch milliseconds) as an aware UTC datetime."""
    if not isinstance(epoch_ms, int | float):
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"InfluxDB returned time {epoch_ms!r}")
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


@router.get(
    "/api/v1/rejections",
    summary="Recent rejected messages",
    description=(
        "Messages (or parts) that ingest did not store, newest first, from the "
        "`rejection` measurement, with counts by reason since `since` (all reasons)."
    ),
    response_model=Rejections,
    responses={503: {"model": ErrorMessage, "description": "InfluxDB unreachable"}},
)
def rejections(
    query: QueryDep,
    reason: Annotated[str | None, Query(max_length=200, description="only this reason")] = None,
    since: Annotated[
        Since | None,
        Query(description="RFC 3339 time with offset, e.g. 2026-05-01T00:00:00+08:00"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Rejections:
    statements = rejections_query(reason, since, limit)
    recent = query(statements.recent)
    counted = query(statements.counts)
    counts = {
        s.tags.get("reason", ""): int(s.rows()[0].get("count") or 0)
        for s in counted
        if s.values
    }
    records = [
        RejectionRecord(
            time=_from_epoch_ms(row.get("time")),
            reason=str(row.get("reason") or ""),
            topic=row.get("topic"),
            detail=row.get("detail"),
            payload=row.get("payload"),
        )
        for series in recent
        for row in series.rows()
    ]
    return Rejections(counts=counts, total=sum(counts.values()), rejections=records)
