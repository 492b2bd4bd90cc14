"""``/api/v1/stats`` and ``/metrics``: the service's counters, as JSON and for Prometheus."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from ingest_service.api.deps import PrometheusDep, StateDep, reads
from ingest_service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ingest_service.metrics import render

router = APIRouter(tags=["operations"], dependencies=[reads])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {METRICS_CONTENT_TYPE: {}}}},
)
def metrics(prometheus: PrometheusDep) -> Response:
    """Messages received, stored, rejected by reason, batch timing, write errors, backlog."""
    return Response(render(prometheus), media_type=METRICS_CONTENT_TYPE)


@router.get("/api/v1/stats", summary="Ingest counters since start", response_model=dict[str, Any])
def stats(state: StateDep) -> dict[str, Any]:
    return state.stats.snapshot().as_json()
