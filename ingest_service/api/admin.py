"""Admin endpoints of the HTTP API: ``POST /api/v1/devices`` provisions a device.

A router of its own, so what hands out credentials sits apart from the readers.
Every call needs ``Authorization: Bearer $FARM_API_TOKEN``: the router carries the
write check of :mod:`ingest_service.api.deps`.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from farm_contract.topics import ID_PATTERN
from ingest_service.api.deps import StateDep, writes
from ingest_service.provision import (
    AlreadyProvisioned,
    Provisioned,
    ProvisionError,
    make_device,
    provision,
)
from ingest_service.state import ServiceState

router = APIRouter(tags=["registry"], dependencies=[writes])
_provision_lock = threading.Lock()
"""One read-modify-write of the registry and the broker's password file at a time."""


class DeviceRequest(BaseModel):
    device_id: str = Field(pattern=ID_PATTERN, description="also the device's MQTT username")
    site_id: str = Field(pattern=ID_PATTERN)
    dev_eui: str | None = Field(default=None, description="16 hex digits (LoRaWAN devices)")
    model: str = ""
    password: str | None = Field(
        default=None, min_length=12, description="omit to have a strong one generated"
    )
    rotate: bool = Field(
        default=False,
        description="an existing device gets a new password only when this is true "
        "(a repeated request must not silently change the password a device uses)",
    )


class DeviceCredentials(BaseModel):
    device_id: str
    site_id: str
    dev_eui: str | None
    model: str
    mqtt_username: str
    mqtt_password: str = Field(description="shown this once; only a hash is kept")
    created: bool = Field(description="false when an existing device was updated")
    broker_reloaded: bool = Field(description="Mosquitto was sent SIGHUP")


class ProvisionProblems(BaseModel):
    detail: str
    problems: list[str]


def _provision(state: ServiceState, body: DeviceRequest) -> Provisioned:
    settings = state.settings
    if settings.broker_passwd_file is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "provisioning is not configured: set FARM_BROKER_PASSWD_FILE "
            "(and FARM_BROKER_PID_FILE so the broker reloads it)",
        )
    device = make_device(body.device_id, body.site_id, body.dev_eui, body.model)
    with _provision_lock:
        return provision(
            state.registry.get(),
            state.registry.replace,
            settings.broker_passwd_file,
            device,
            password=body.password,
            broker_pid_file=settings.broker_pid_file,
            rotate=body.rotate,
        )


@router.post(
    "/api/v1/devices",
    summary="Provision a device: broker credentials and registry row (token needed)",
    description=(
        "Adds the device to the registry (or updates it) and sets its MQTT password "
        "in the broker's password file, then signals the broker to reload. The "
        "password is returned once and never stored in clear."
    ),
    response_model=DeviceCredentials,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": DeviceCredentials, "description": "an existing device was updated"},
        409: {"model": ProvisionProblems,
              "description": "already provisioned; its password was kept (ask with rotate)"},
        422: {"model": ProvisionProblems, "description": "the device does not fit"},
    },
)
async def provision_device(state: StateDep, body: DeviceRequest) -> JSONResponse:
    try:
        done = await run_in_threadpool(_provision, state, body)
    except AlreadyProvisioned as exc:
        return JSONResponse(
            ProvisionProblems(detail="device already provisioned", problems=exc.problems)
            .model_dump(),
            status_code=status.HTTP_409_CONFLICT,
        )
    except ProvisionError as exc:
        return JSONResponse(
            ProvisionProblems(detail="device not provisioned", problems=exc.problems).model_dump(),
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    credentials = DeviceCredentials(
        device_id=done.device.device_id,
        site_id=done.device.site_id,
        dev_eui=done.device.dev_eui,
        model=done.device.model,
        mqtt_username=done.device.device_id,
        mqtt_password=done.password,
        created=done.created,
        broker_reloaded=done.broker_reloaded,
    )
    return JSONResponse(
        credentials.model_dump(),
        status_code=status.HTTP_201_CREATED if done.created else status.HTTP_200_OK,
        headers={"Cache-Control": "no-store"},
    )
