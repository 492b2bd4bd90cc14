"""What routes depend on, taken from ``request.app.state`` (FastAPI dependencies).

:func:`ingest_service.api.app.create_app` puts the running service's state, its
indicator engine and its Prometheus registry on ``app.state``; routers ask for them
here, so a router is a plain module with no closure over the service. The read and
write checks are the one :class:`~ingest_service.api.security.BearerCheck`, reading
the settings of the request's app each time (a changed token applies at once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from ingest_service.api.security import BearerCheck
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.influxql import Series
from ingest_service.settings import Settings
from ingest_service.state import ServiceState

Querier = Callable[[str], list[Series]]
"""Runs one InfluxQL query (a database nothing was written to yet has no data)."""


def service_state(request: Request) -> ServiceState:
    """The running service's shared state."""
    state: ServiceState = request.app.state.service
    return state


def service_settings(request: Request) -> Settings:
    """The service's settings, as they are now."""
    return service_state(request).settings


def indicator_engine(request: Request) -> IndicatorEngine:
    """The engine that computes the plan's indicators."""
    engine: IndicatorEngine = request.app.state.engine
    return engine


def influxql(request: Request) -> Querier:
    """The InfluxQL read path, through the engine (so an empty database has no data)."""
    return indicator_engine(request).query


def prometheus(request: Request) -> CollectorRegistry:
    """The Prometheus registry over the service's counters."""
    registry: CollectorRegistry = request.app.state.prometheus
    return registry


StateDep = Annotated[ServiceState, Depends(service_state)]
EngineDep = Annotated[IndicatorEngine, Depends(indicator_engine)]
QueryDep = Annotated[Querier, Depends(influxql)]
PrometheusDep = Annotated[CollectorRegistry, Depends(prometheus)]

reads = Depends(BearerCheck(service_settings, reads=True))
"""Data reads: open only on a loopback API with no token or open reads (contract §7)."""
writes = Depends(BearerCheck(service_settings, reads=False))
"""State changes: always the bearer token."""
