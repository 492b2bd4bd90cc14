"""``/healthz`` and ``/readyz``: the probes, open to everyone (contract §7)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ingest_service.api.deps import StateDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    broker: bool = Field(description="connected to the MQTT broker")
    influxdb: bool = Field(description="InfluxDB answers")
    detail: str = ""


@router.get("/healthz", summary="The process is up", response_model=Health)
def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    summary="Broker and InfluxDB are reachable",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "something is down"}},
)
def readyz(state: StateDep) -> JSONResponse:
    broker, influx = bool(state.broker_connected()), bool(state.influx_reachable())
    down = [name for name, up in (("MQTT broker", broker), ("InfluxDB", influx)) if not up]
    body = Readiness(
        status="not ready" if down else "ready",
        broker=broker,
        influxdb=influx,
        detail=f"down: {', '.join(down)}" if down else "",
    )
    code = status.HTTP_503_SERVICE_UNAVAILABLE if down else status.HTTP_200_OK
    return JSONResponse(body.model_dump(), status_code=code)
