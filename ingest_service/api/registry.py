"""The registry routes: read the sites and devices, import a new registry (contract §5).

Reads follow the read rule; the import changes state, so it always needs the token.
Parsing and saving run in the thread pool: a registry of thousands of rows is
validated off the event loop.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from farm_contract.registry import Device, Registry, RegistryError, Site
from ingest_service.api.deps import StateDep, reads, writes
from ingest_service.api.errors import ErrorMessage
from ingest_service.api.upload import RegistryUpload, read_registry_upload

router = APIRouter(tags=["registry"])

Upload = Annotated[tuple[str, str], Depends(read_registry_upload)]


class RegistryProblems(BaseModel):
    detail: str
    problems: list[str]


class RegistryImported(BaseModel):
    sites: int
    devices: int
    counties: list[str]


@router.get("/api/v1/registry/sites", summary="All sites", response_model=list[Site],
            dependencies=[reads])
def registry_sites(state: StateDep) -> list[Site]:
    return list(state.registry.get().sites.values())


@router.get("/api/v1/registry/devices", summary="All devices", response_model=list[Device],
            dependencies=[reads])
def registry_devices(state: StateDep) -> list[Device]:
    return list(state.registry.get().devices.values())


_UPLOAD_BODY = {
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
}
"""The body as OpenAPI shows it: the route reads it itself (JSON or multipart)."""


@router.post(
    "/api/v1/registry",
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
    openapi_extra=_UPLOAD_BODY,
)
async def import_registry(state: StateDep, upload: Upload) -> Any:
    sites_csv, devices_csv = upload
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
        sites=len(registry.sites), devices=len(registry.devices), counties=registry.counties
    )
