"""Closed years (contract §7, §8): close and reopen a year (token), and read each year's state.

``POST /api/v1/years/{year}/close`` freezes the year's figures
(:mod:`ingest_service.indicators.closing`); ``POST …/reopen`` needs a reason; both are
recorded with the reason and the client's address (the token is one, shared, so it
names no one). ``GET /api/v1/years`` lists every year that has a history;
``GET /api/v1/years/{year}`` gives one year's state, history and, when closed, its
frozen document and digest: ``sha256(canonical JSON of document) == digest``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from ingest_service.api.deps import EngineDep, StateDep, reads, writes
from ingest_service.api.errors import ErrorMessage
from ingest_service.api.params import MAX_YEAR, MIN_YEAR
from ingest_service.indicators.closing import (
    ClosedYears,
    YearAction,
    YearStateError,
    engine_members,
)
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.outputs.influx import Writer, make_writer
from ingest_service.state import ServiceState

router = APIRouter(tags=["indicators"])
YearPath = Annotated[int, Path(ge=MIN_YEAR, le=MAX_YEAR, description="calendar year")]


class CloseRequest(BaseModel):
    reason: str = Field(default="", max_length=1000, description="why (recorded)")


class ReopenRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S",
                        description="why the year is reopened (required, recorded)")


class ActionAnswer(BaseModel):
    year: int
    action: str
    at: str
    digest: str
    reason: str
    client: str


def _client(request: Request) -> str:
    return f"api {request.client.host}" if request.client else "api"


def _act(state: ServiceState, act: Callable[[Writer], YearAction]) -> YearAction:
    writer = make_writer(state.settings)
    try:
        return act(writer)
    except YearStateError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    finally:
        writer.close()


def _close(state: ServiceState, engine: IndicatorEngine, year: int, reason: str,
           client: str) -> YearAction:
    return _act(state, lambda writer: ClosedYears(engine.query, writer).close(
        year, engine, state.registry.get(), state.settings, reason=reason, client=client,
        members=engine_members(engine)))


def _reopen(state: ServiceState, engine: IndicatorEngine, year: int, reason: str,
            client: str) -> YearAction:
    return _act(state, lambda writer: ClosedYears(engine.query, writer).reopen(
        year, reason=reason, client=client))


_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorMessage, "description": "the year is not in that state"},
    503: {"model": ErrorMessage, "description": "InfluxDB unreachable"},
}


@router.post(
    "/api/v1/years/{year}/close",
    summary="Close a year: freeze its figures (token needed)",
    description=(
        "Computes the year's figures and freezes them with their members, parameters, the "
        "registry's SHA-256, and a SHA-256 digest of all of it. From then on the year's "
        "reads serve the frozen figures (`closed: true`). A closed year must be reopened "
        "before it is closed again (409)."
    ),
    response_model=ActionAnswer, status_code=status.HTTP_201_CREATED,
    responses=_CONFLICT, dependencies=[writes],
)
async def close_year(request: Request, state: StateDep, engine: EngineDep, year: YearPath,
                     body: CloseRequest | None = None) -> dict[str, Any]:
    reason = body.reason if body is not None else ""
    done = await run_in_threadpool(_close, state, engine, year, reason, _client(request))
    return done.as_json()


@router.post(
    "/api/v1/years/{year}/reopen",
    summary="Reopen a closed year, with a reason (token needed)",
    description="Recorded in the year's history; the frozen document stays stored.",
    response_model=ActionAnswer, status_code=status.HTTP_201_CREATED,
    responses=_CONFLICT, dependencies=[writes],
)
async def reopen_year(request: Request, state: StateDep, engine: EngineDep, year: YearPath,
                      body: ReopenRequest) -> dict[str, Any]:
    done = await run_in_threadpool(_reopen, state, engine, year, body.reason, _client(request))
    return done.as_json()


@router.get(
    "/api/v1/years",
    summary="Every year that was ever closed: state, latest action, history",
    dependencies=[reads],
)
def years(engine: EngineDep) -> list[dict[str, Any]]:
    return [item.as_json() for item in ClosedYears(engine.query).states().values()]


@router.get(
    "/api/v1/years/{year}",
    summary="One year's state, history and, if closed, its frozen document and digest",
    description=(
        "`document` is null for an open year. For a closed one, its SHA-256 over the "
        "canonical JSON (keys sorted, separators `,` and `:` without spaces, UTF-8, "
        "non-ASCII as is) equals `digest`."
    ),
    dependencies=[reads],
    responses={503: {"model": ErrorMessage, "description": "InfluxDB unreachable"}},
)
def year(engine: EngineDep, year: YearPath) -> dict[str, Any]:
    closed = ClosedYears(engine.query)
    answer = closed.state(year).as_json()
    answer["document"] = (closed.document(year, answer["digest"])
                          if answer["state"] == "closed" else None)
    return answer

