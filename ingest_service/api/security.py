"""Who may call the HTTP API (contract §7): one bearer check, the listen rule, trusted hosts.

Reads may be open only on a loopback API: beyond loopback every data read needs
``Authorization: Bearer $FARM_API_TOKEN`` as state changes always do. With a token
set, reads need it on loopback too unless ``FARM_API_OPEN_READS=true``. The Host
check (Starlette's ``TrustedHostMiddleware``) keeps a page on another site from
reaching a loopback API through DNS rebinding: its requests carry the other site's name.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ingest_service.settings import Settings

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""Host header values of a loopback API, always trusted."""


class UnsafeListenError(ValueError):
    """The API was asked to serve beyond loopback in a way contract §7 forbids."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, 127.0.0.0/8 or ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def configured_token(settings: Settings) -> str | None:
    """The API token, or None when unset or blank."""
    if settings.api_token is None:
        return None
    token = settings.api_token.get_secret_value()
    return token if token.strip() else None


def reads_open(settings: Settings) -> bool:
    """Whether reads answer without the token: on loopback only, with no token or by choice."""
    if not is_loopback(settings.api_host):
        return False
    return configured_token(settings) is None or settings.api_open_reads


def check_listen_allowed(settings: Settings) -> None:
    """Refuse to serve beyond loopback without a token, or with open reads (contract §7)."""
    if is_loopback(settings.api_host):
        return
    if configured_token(settings) is None:
        raise UnsafeListenError(
            f"refusing to listen on {settings.api_host!r}: the API may listen beyond loopback "
            "only with a token. Set FARM_API_TOKEN, or FARM_API_HOST=127.0.0.1."
        )
    if settings.api_open_reads:
        raise UnsafeListenError(
            f"refusing to listen on {settings.api_host!r} with open reads: "
            "FARM_API_OPEN_READS=true is for a loopback API only. Unset it, or "
            "FARM_API_HOST=127.0.0.1."
        )


def host_header_value(host: str) -> str:
    """``host`` as it appears in a Host header (IPv6 literals in brackets), lower case."""
    bare = host.strip().strip("[]").lower()
    try:
        return f"[{bare}]" if ipaddress.ip_address(bare).version == 6 else bare
    except ValueError:
        return bare


def allowed_hosts(settings: Settings) -> list[str]:
    """Loopback names, the bind host unless a wildcard address, and ``FARM_API_ALLOWED_HOSTS``."""
    hosts = list(LOOPBACK_HOSTS)
    try:
        wildcard = ipaddress.ip_address(settings.api_host.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False
    if settings.api_host.strip() and not wildcard:
        hosts.append(host_header_value(settings.api_host))
    hosts += [host_header_value(host) if host != "*" else host
              for host in settings.api_allowed_hosts]
    return list(dict.fromkeys(hosts))


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="FARM_API_TOKEN",
    description=(
        "The token set in FARM_API_TOKEN: needed for calls that change state, and for "
        "reads unless the API listens on loopback with no token (or FARM_API_OPEN_READS)."
    ),
)
"""Module level so FastAPI can resolve the (postponed) annotation that uses it."""


class BearerCheck:
    """The API's one bearer-token dependency; ``reads=True`` lets reads pass where open.

    Settings are read per request (``settings`` of the request), so a changed token
    applies at once; the token is compared in constant time.
    """

    def __init__(self, settings: Callable[[Request], Settings], *, reads: bool) -> None:
        self._settings = settings
        self._reads = reads

    def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        settings = self._settings(request)
        if self._reads and reads_open(settings):
            return
        token = configured_token(settings)
        if token is None:
            what = "reads beyond loopback are" if self._reads else "state-changing calls are"
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"{what} disabled: set FARM_API_TOKEN and send it as "
                "'Authorization: Bearer <token>'",
            )
        if credentials is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing 'Authorization: Bearer <token>' header",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "invalid token",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
