"""The registry routes: read the sites and devices, import a new registry (contract §5).

Reads follow the read rule; the import changes state, so it always needs the token.
Parsing and saving run in the thread pool: a registry of thousands of rows is
validated off the event loop.
"""

from __future__ import annotations

import threading
from dataclasses import asdict
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from farm_contract.registry import Device, Registry, RegistryError, Site
from ingest_service.api.deps import StateDep, reads, writes
from ingest_service.api.errors import ErrorMessage
from ingest_service.api.upload import RegistryUpload, read_registry_upload
from ingest_service.state import ServiceState

router = APIRouter(tags=["registry"])

Upload = Annotated[tuple[str, str], Depends(read_registry_upload)]


class RegistryProblems(BaseModel):
    detail: str
    problems: list[str]


class RegistryVersionOut(BaseModel):
    """A kept registry version (``ingest_service.registry_versions.RegistryVersion``)."""

    digest: str
    saved_at: str
    source: str
    sites: int
    devices: int
    dated: bool
    who: str | None = None
    reason: str | None = None
    valid_from: str | None = None


class RegistryVersionFiles(RegistryVersionOut):
    sites_csv: str
    devices_csv: str


OnDay = Annotated[date | None, Query(
    description="the registry in effect on this day (Asia/Shanghai); default: today")]


@router.get("/api/v1/registry/sites", summary="The sites in effect (today or on a day)",
            response_model=list[Site], dependencies=[reads])
def registry_sites(state: StateDep, on: OnDay = None) -> list[Site]:
    registry = state.registry.get()
    return list((registry.at(on) if on else registry).sites.values())


@router.get("/api/v1/registry/devices", summary="The devices in effect (today or on a day)",
            response_model=list[Device], dependencies=[reads])
def registry_devices(state: StateDep, on: OnDay = None) -> list[Device]:
    registry = state.registry.get()
    return list((registry.at(on) if on else registry).devices.values())


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


_UPLOAD_DESCRIPTION = """\
Replaces the registry with `sites.csv` and `devices.csv` (contract §5), sent as JSON
`{"sites_csv": "...", "devices_csv": "..."}` or as a multipart form with files `sites` and
`devices`. Nothing changes unless both files are valid; otherwise 422 lists every problem
with its file, row and column.

* **Without `valid_from`** the files are the whole registry, history and all: a row with no
  date applies to *all time*. Changing a site's county in an undated row is a
  **correction** (the county was always wrong): past figures change with it.
* **With `valid_from=YYYY-MM-DD`** the files say how the registry is *from that day on*
  (rows without dates, every current site and device listed): each row that differs from
  the registry in effect on that day gets `valid_from` = that day, and every older row is
  kept, so figures before the day stay as they were. Use this for a real change (a farm
  moved, became large-scale; a device moved to another site).

Every accepted registry is kept as a version (`GET /api/v1/registry/versions`); `author`
and `reason` are recorded with it."""


class RegistryImported(BaseModel):
    sites: int
    devices: int
    counties: list[str]
    digest: str
    """The version now in effect (``GET /api/v1/registry/versions/{digest}``)."""
    history: list[str]
    """The history read (as ``check-registry`` says it); empty for an undated registry."""
    corrections: list[str]
    """What the upload rewrote for all time (undated rows changed, ids removed): past
    figures change with these. Empty for an upload from a day."""


def _accept(state: ServiceState, sites_csv: str, devices_csv: str, valid_from: date | None,
            who: str, reason: str | None) -> tuple[Registry, list[str]]:
    """Parse, merge from ``valid_from`` if given, and make it the registry (one at a time);
    also what it corrected for all time."""
    with _upload_lock:
        registry = Registry.from_csv(sites_csv, devices_csv)
        old = state.registry.get()
        if valid_from is not None:
            registry = old.changed_from(registry, valid_from)
        state.registry.replace(registry, who=who, reason=reason,
                               valid_from=valid_from.isoformat() if valid_from else None)
        return registry, registry.corrections_to(old)


_upload_lock = threading.Lock()
"""One upload at a time: an upload from a day merges into the registry it read."""


@router.post(
    "/api/v1/registry",
    summary="Import a new registry (token needed)",
    description=_UPLOAD_DESCRIPTION,
    response_model=RegistryImported,
    dependencies=[writes],
    responses={
        401: {"model": ErrorMessage},
        403: {"model": ErrorMessage},
        422: {"model": RegistryProblems, "description": "the CSV files have problems"},
    },
    openapi_extra=_UPLOAD_BODY,
)
async def import_registry(
    request: Request,
    state: StateDep,
    upload: Upload,
    valid_from: Annotated[date | None, Query(
        description="the day (Asia/Shanghai) the uploaded rows take effect; "
                    "omit for a correction to all time")] = None,
    author: Annotated[str | None, Query(max_length=200, description="who uploads")] = None,
    reason: Annotated[str | None, Query(max_length=1000, description="why")] = None,
) -> Any:
    sites_csv, devices_csv = upload
    client = request.client.host if request.client else "unknown"
    who = f"{author} (token holder at {client})" if author else f"token holder at {client}"
    try:
        registry, corrections = await run_in_threadpool(
            _accept, state, sites_csv, devices_csv, valid_from, who, reason)
    except RegistryError as exc:
        return JSONResponse(
            RegistryProblems(
                detail=f"registry not imported: {len(exc.problems)} problem(s)",
                problems=exc.problems,
            ).model_dump(),
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    except OSError as exc:
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            f"registry is valid but could not be saved: {exc}",
        ) from None
    return RegistryImported(
        sites=len(registry.sites), devices=len(registry.devices), counties=registry.counties,
        digest=registry.digest(), history=registry.history_lines(), corrections=corrections,
    )


@router.get("/api/v1/registry/versions", summary="Every registry version kept, oldest first",
            response_model=list[RegistryVersionOut], dependencies=[reads])
def registry_versions(state: StateDep) -> list[RegistryVersionOut]:
    return [RegistryVersionOut.model_validate(asdict(v))
            for v in state.registry.archive.versions()]


@router.get(
    "/api/v1/registry/versions/{digest}",
    summary="One registry version's files, by digest (12 hex digits or more)",
    response_model=RegistryVersionFiles, dependencies=[reads],
    responses={404: {"model": ErrorMessage}},
)
def registry_version(
    state: StateDep,
    digest: Annotated[str, Path(pattern="^[0-9a-fA-F]{12,64}$")],
) -> RegistryVersionFiles:
    found = state.registry.archive.get(digest)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no registry version {digest}")
    return RegistryVersionFiles(**asdict(found.version), sites_csv=found.sites_csv,
                                devices_csv=found.devices_csv)
