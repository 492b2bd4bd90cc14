"""The HTTP API (contract §7): health, the plan's indicators, rejections, stats, registry.

Who may call what is :mod:`ingest_service.api.security`: reads are open only on a
loopback API (with no token, or ``FARM_API_OPEN_READS``), anything that changes state
needs ``Authorization: Bearer $FARM_API_TOKEN``, and requests must name a trusted
host. No query answer becomes a 500: an InfluxDB failure is a 503, a bad parameter a
422. ``/docs`` serves Swagger UI from the package (``fastapi-offline``): no CDN.
"""

from __future__ import annotations

import email.policy
from collections.abc import Iterable
from datetime import UTC, datetime
from email.parser import BytesParser
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, ValidationError
from starlette.middleware.trustedhost import TrustedHostMiddleware

from farm_contract import CONTRACT_VERSION, schema
from farm_contract.indicators import IndicatorValue
from farm_contract.registry import Device, Registry, RegistryError, Site
from ingest_service.api.errors import ensure_finite, influx_time, install_error_answers
from ingest_service.api.report import report_router
from ingest_service.api.security import BearerCheck, allowed_hosts
from ingest_service.indicators.engine import IndicatorEngine, UnknownCountyError
from ingest_service.influxql import quote_ident, quote_literal, time_literal
from ingest_service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ingest_service.metrics import metrics_registry, render
from ingest_service.report.spreadsheet import csv_text
from ingest_service.state import ServiceState

MIN_YEAR, MAX_YEAR = 2000, 2100
MAX_REGISTRY_UPLOAD = 20 * 1024 * 1024
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
INDICATOR_COLUMNS: tuple[str, ...] = tuple(IndicatorValue.model_fields)

_DESCRIPTION = """
Field data from Datong's farms, turned into the green-agriculture indicators of
the city's plan (同政发〔2022〕30号, section 七).

* **Indicators**: per county and for the whole city, per calendar year
  (Asia/Shanghai), with numerator and denominator, as JSON or CSV.
* **Rejections**: messages that ingest refused, and why.
* **Registry**: the sites and devices; importing a new registry needs the bearer
  token `FARM_API_TOKEN`.
"""


# --- response models ---------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    broker: bool = Field(description="connected to the MQTT broker")
    influxdb: bool = Field(description="InfluxDB answers")
    detail: str = ""


class ErrorMessage(BaseModel):
    detail: str


class UnknownCounty(BaseModel):
    detail: str
    known_counties: list[str]


class RegistryProblems(BaseModel):
    detail: str
    problems: list[str]


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


class RegistryUpload(BaseModel):
    sites_csv: str = Field(description="sites.csv text (contract §5)")
    devices_csv: str = Field(description="devices.csv text (contract §5)")


class RegistryImported(BaseModel):
    sites: int
    devices: int
    counties: list[str]


# --- helpers -------------------------------------------------------------------------


def indicators_csv(values: Iterable[IndicatorValue]) -> str:
    """Indicator rows as CSV with a header row; a null value or city county is empty."""
    return csv_text(
        INDICATOR_COLUMNS,
        ([item.model_dump(mode="json")[column] for column in INDICATOR_COLUMNS]
         for item in values),
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


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The file parts of a ``multipart/form-data`` body, by field name.

    The standard library's MIME parser does this well enough for two CSV files,
    so the API needs no multipart dependency.
    """
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("not a multipart body")
    parts: dict[str, bytes] = {}
    for part in message.walk():
        if part.is_multipart():
            continue
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            parts[name] = payload
    return parts


def _decode_upload(data: bytes, label: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{label} is not UTF-8 ({exc}); save the spreadsheet as CSV UTF-8",
        ) from None


async def _read_upload(request: Request) -> tuple[str, str]:
    """The two CSV texts, from a JSON body or a multipart form with files ``sites``/``devices``."""
    content_type = request.headers.get("content-type", "")
    length = int(request.headers.get("content-length") or 0)
    if length > MAX_REGISTRY_UPLOAD:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "registry upload is too large")
    body = await request.body()
    if len(body) > MAX_REGISTRY_UPLOAD:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "registry upload is too large")
    if content_type.startswith("multipart/form-data"):
        try:
            parts = parse_multipart(body, content_type)
        except ValueError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        missing = [name for name in ("sites", "devices") if name not in parts]
        if missing:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"multipart upload needs files named 'sites' and 'devices'; missing {missing}",
            )
        return _decode_upload(parts["sites"], "sites"), _decode_upload(parts["devices"], "devices")
    try:
        upload = RegistryUpload.model_validate_json(body)
    except ValidationError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            'send JSON {"sites_csv": "...", "devices_csv": "..."} or a multipart form with '
            f"files 'sites' and 'devices': {exc.errors(include_url=False)}",
        ) from None
    return upload.sites_csv, upload.devices_csv


def _from_epoch_ms(epoch_ms: object) -> datetime:
    """A row's time (the query asks for epoch milliseconds) as an aware UTC datetime."""
    if not isinstance(epoch_ms, int | float):
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"InfluxDB returned time {epoch_ms!r}")
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


# --- the app -------------------------------------------------------------------------

Since = Annotated[AwareDatetime, AfterValidator(influx_time)]
"""An RFC 3339 time with offset that InfluxDB can hold (else 422, never an overflow)."""


def create_app(state: ServiceState, engine: IndicatorEngine) -> FastAPI:
    """The FastAPI app over the running service's state and indicator engine."""
    app = FastAPIOffline(
        title="farm-iot-collector",
        summary="Datong farm field data and green-agriculture indicators",
        description=_DESCRIPTION,
        version=f"contract v{CONTRACT_VERSION}",
        openapi_tags=[
            {"name": "health", "description": "Liveness and readiness probes."},
            {"name": "indicators", "description": "The plan's four farm indicators (§8)."},
            {"name": "operations", "description": "Rejections and counters."},
            {"name": "registry", "description": "Sites and devices (§5)."},
        ],
    )

    reads = Depends(BearerCheck(lambda: state.settings, reads=True))
    writes = Depends(BearerCheck(lambda: state.settings, reads=False))
    install_error_answers(app)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(state.settings))

    prometheus = metrics_registry(state)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {METRICS_CONTENT_TYPE: {}}}},
        dependencies=[reads],
    )
    def metrics() -> Response:
        """Messages received, stored, rejected by reason, batch timing, write errors, backlog."""
        return Response(render(prometheus), media_type=METRICS_CONTENT_TYPE)

    @app.get("/healthz", tags=["health"], summary="The process is up", response_model=Health)
    def healthz() -> Health:
        return Health()

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Broker and InfluxDB are reachable",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "something is down"}},
    )
    def readyz() -> JSONResponse:
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

    @app.get(
        "/api/v1/indicators",
        tags=["indicators"],
        summary="The plan's indicators for a year",
        description=(
            "One row per indicator and scope: the city first (all counties added up: "
            "numerators and denominators are summed, never rates averaged), then every "
            "county of the registry. With `county`, only that county's four rows.\n\n"
            "A year is a calendar year in Asia/Shanghai; values are as of its end, or as "
            "of now for the current year. `value` is null and `met` false when the "
            "denominator is 0.\n\nCSV (UTF-8, header row) with `format=csv` or "
            "`Accept: text/csv`; `bom=true` adds a byte-order mark for Excel."
        ),
        response_model=list[IndicatorValue],
        dependencies=[reads],
        responses={
            200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
            404: {"model": UnknownCounty, "description": "no such county in the registry"},
            503: {"model": ErrorMessage, "description": "InfluxDB unreachable"},
        },
    )
    def indicators(
        request: Request,
        year: Annotated[
            int | None,
            Query(
                ge=MIN_YEAR,
                le=MAX_YEAR,
                description="calendar year; default: the current one",
            ),
        ] = None,
        county: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=200,
                description="one county/district, e.g. 平城区",
            ),
        ] = None,
        output_format: Annotated[
            Literal["json", "csv"] | None,
            Query(
                alias="format",
                description="json or csv; overrides the Accept header",
            ),
        ] = None,
        bom: Annotated[bool, Query(description="CSV only: start with a UTF-8 BOM")] = False,
    ) -> Any:
        year = year if year is not None else datetime.now(state.settings.tz).year
        try:
            rows = engine.compute(year, county)
        except UnknownCountyError as exc:
            return JSONResponse(
                UnknownCounty(detail=str(exc), known_counties=exc.known).model_dump(),
                status_code=status.HTTP_404_NOT_FOUND,
            )
        ensure_finite(rows)
        as_csv = output_format == "csv" or (
            output_format is None and wants_csv(request.headers.get("accept"))
        )
        if not as_csv:
            return rows
        text = ("\ufeff" if bom else "") + indicators_csv(rows)
        return Response(
            text.encode("utf-8"),
            media_type=CSV_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="indicators-{year}.csv"'},
        )

    @app.get(
        "/api/v1/rejections",
        tags=["operations"],
        summary="Recent rejected messages",
        description=(
            "Messages (or parts) that ingest did not store, newest first, from the "
            "`rejection` measurement, with counts by reason since `since` (all reasons)."
        ),
        response_model=Rejections,
        dependencies=[reads],
        responses={503: {"model": ErrorMessage, "description": "InfluxDB unreachable"}},
    )
    def rejections(
        reason: Annotated[str | None, Query(max_length=200, description="only this reason")] = None,
        since: Annotated[
            Since | None,
            Query(
                description="RFC 3339 time with offset, e.g. 2026-05-01T00:00:00+08:00",
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Rejections:
        table = quote_ident(schema.REJECTION)
        time_clause = f"time >= {time_literal(since)}" if since is not None else ""
        conditions = [time_clause] if time_clause else []
        if reason is not None:
            conditions.append(f"{quote_ident('reason')} = {quote_literal(reason)}")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        recent = engine.query(
            (
                f"SELECT {quote_ident('reason')}, {quote_ident('topic')}, {quote_ident('detail')}, "
                f"{quote_ident('payload')} FROM {table}{where} ORDER BY time DESC LIMIT {limit}"
            ),
        )
        count_where = f" WHERE {time_clause}" if time_clause else ""
        counted = engine.query(
            (
                f"SELECT count({quote_ident('detail')}) FROM {table}{count_where} "
                f"GROUP BY {quote_ident('reason')}"
            ),
        )
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

    @app.get(
        "/api/v1/stats",
        tags=["operations"],
        summary="Ingest counters since start",
        response_model=dict[str, Any],
        dependencies=[reads],
    )
    def stats() -> dict[str, Any]:
        return state.stats.snapshot().as_json()

    @app.get(
        "/api/v1/registry/sites",
        tags=["registry"],
        summary="All sites",
        response_model=list[Site],
        dependencies=[reads],
    )
    def registry_sites() -> list[Site]:
        return list(state.registry.get().sites.values())

    @app.get(
        "/api/v1/registry/devices",
        tags=["registry"],
        summary="All devices",
        response_model=list[Device],
        dependencies=[reads],
    )
    def registry_devices() -> list[Device]:
        return list(state.registry.get().devices.values())

    @app.post(
        "/api/v1/registry",
        tags=["registry"],
        summary="Import a new registry (token needed)",
        description=(
            "Replaces the whole registry with `sites.csv` and `devices.csv` (contract §5), "
            'sent as JSON `{"sites_csv": "...", "devices_csv": "..."}` or as a multipart '
            "form with files `sites` and `devices`. Nothing changes unless both files are "
            "valid; otherwise 422 lists every problem with its file, row and column."
        ),
        response_model=RegistryImported,
        dependencies=[writes],
        responses={
            401: {"model": ErrorMessage},
            403: {"model": ErrorMessage},
            422: {"model": RegistryProblems, "description": "the CSV files have problems"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": RegistryUpload.model_json_schema()},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["sites", "devices"],
                            "properties": {
                                "sites": {"type": "string", "format": "binary"},
                                "devices": {"type": "string", "format": "binary"},
                            },
                        }
                    },
                },
            }
        },
    )
    async def import_registry(request: Request) -> Any:
        sites_csv, devices_csv = await _read_upload(request)
        try:
            registry = await run_in_threadpool(Registry.from_csv, sites_csv, devices_csv)
        except RegistryError as exc:
            return JSONResponse(
                RegistryProblems(
                    detail=f"registry not imported: {len(exc.problems)} problem(s)",
                    problems=exc.problems,
                ).model_dump(),
                status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            )
        try:
            await run_in_threadpool(state.registry.replace, registry)
        except OSError as exc:
            raise HTTPException(
                status.HTTP_500_INTERNAL_SERVER_ERROR,
                f"registry is valid but could not be saved: {exc}",
            ) from None
        return RegistryImported(
            sites=len(registry.sites),
            devices=len(registry.devices),
            counties=registry.counties,
        )

    from ingest_service.api.admin import admin_router  # here: it imports this module

    app.include_router(admin_router(state), dependencies=[writes])
    app.include_router(report_router(state, engine), dependencies=[reads])
    return app
