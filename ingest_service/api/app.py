"""The HTTP API (contract §7): health, the plan's indicators, rejections, stats, registry.

``create_app`` only assembles: the service's state, engine and Prometheus registry
go on ``app.state`` (routes take them through :mod:`ingest_service.api.deps`), then
the error answers, the trusted-host check and one router per area. Who may call
what is :mod:`ingest_service.api.security`: reads are open only on a loopback API
(with no token, or ``FARM_API_OPEN_READS``), anything that changes state needs
``Authorization: Bearer $FARM_API_TOKEN``, and requests must name a trusted host.
No query answer becomes a 500: an InfluxDB failure is a 503, a bad parameter a 422.
``/docs`` serves Swagger UI from the package (``fastapi-offline``): no CDN.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.middleware.trustedhost import TrustedHostMiddleware

from farm_contract import CONTRACT_VERSION
from ingest_service.api import (
    admin,
    devices,
    facilities,
    health,
    indicators,
    members,
    registry,
    rejections,
    report,
    stats,
    years,
)
from ingest_service.api.errors import install_error_answers
from ingest_service.api.security import allowed_hosts
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.metrics import metrics_registry
from ingest_service.state import ServiceState

_DESCRIPTION = """
Field data from Datong's farms, turned into the green-agriculture indicators of
the city's plan (同政发〔2022〕30号, section 七).

* **Indicators**: per county and for the whole city, per calendar year
  (Asia/Shanghai), with numerator and denominator, as JSON or CSV.
* **Rejections**: messages that ingest refused, and why.
* **Registry**: the sites and devices; importing a new registry needs the bearer
  token `FARM_API_TOKEN`.
"""

_TAGS = [
    {"name": "health", "description": "Liveness and readiness probes."},
    {"name": "indicators", "description": "The plan's four farm indicators (§8)."},
    {"name": "operations", "description": "Rejections and counters."},
    {"name": "registry", "description": "Sites and devices (§5)."},
    {"name": "devices", "description": "Did it arrive? A device's newest data and rejections."},
]

_ROUTERS = (stats, health, indicators, members, years, rejections, devices, facilities,
            registry, admin, report)
"""In the order the OpenAPI document lists them."""


def create_app(state: ServiceState, engine: IndicatorEngine) -> FastAPI:
    """The FastAPI app over the running service's state and indicator engine."""
    app = FastAPIOffline(
        title="farm-iot-collector",
        summary="Datong farm field data and green-agriculture indicators",
        description=_DESCRIPTION,
        version=f"contract v{CONTRACT_VERSION}",
        openapi_tags=_TAGS,
    )
    app.state.service = state
    app.state.engine = engine
    app.state.prometheus = metrics_registry(state)
    install_error_answers(app)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(state.settings))
    for module in _ROUTERS:
        app.include_router(module.router)
    return app
