"""The body of ``POST /api/v1/registry``: two CSV texts, as JSON or as multipart files.

The standard library's MIME parser reads a multipart form well enough for two CSV
files, so the API needs no multipart dependency. The size is checked before and
after reading, so a lying ``Content-Length`` does not let a huge body through.
"""

from __future__ import annotations

import email.policy
from email.parser import BytesParser

from fastapi import HTTPException, Request, status
from pydantic import BaseModel, Field, ValidationError

MAX_REGISTRY_UPLOAD = 20 * 1024 * 1024


class RegistryUpload(BaseModel):
    sites_csv: str = Field(description="sites.csv text (contract §5)")
    devices_csv: str = Field(description="devices.csv text (contract §5)")


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The file parts of a ``multipart/form-data`` body, by field name."""
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


def _too_large() -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "registry upload is too large")


async def read_registry_upload(request: Request) -> tuple[str, str]:
    """The two CSV texts, from a JSON body or a multipart form with files ``sites``/``devices``."""
    content_type = request.headers.get("content-type", "")
    if int(request.headers.get("content-length") or 0) > MAX_REGISTRY_UPLOAD:
        raise _too_large()
    body = await request.body()
    if len(body) > MAX_REGISTRY_UPLOAD:
        raise _too_large()
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
