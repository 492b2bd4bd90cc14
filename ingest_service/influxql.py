"""The InfluxQL read client: quoting, time literals, ``Series`` and ``QueryError``.

InfluxQL is the read language because InfluxDB 1.x, 2.x (its v1-compatible
``/query``, buckets mapped to databases) and 3.x all answer it; Flux they don't.
Everything that reads (indicators, roll-ups, the API, the report) imports this
module, never the writers in :mod:`ingest_service.outputs.influx`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from ingest_service.settings import Settings


class QueryError(Exception):
    """InfluxDB refused or failed an InfluxQL query, or answered what cannot be used.

    Anything malformed — a body that is not JSON (InfluxDB 1.x cuts its answer short
    when a sum overflows to ±Inf, which JSON cannot hold), an unexpected shape, a
    non-finite number — is a ``QueryError`` too, never another exception: callers
    answer it as "the data store failed", not as a crash.
    """


def _series_of(answer: Any, q: str) -> list[Series]:
    """The series of a decoded ``/query`` answer; :class:`QueryError` for any other shape."""
    if type(answer) is not dict or type(answer.get("results", [])) is not list:
        raise QueryError(f"InfluxDB answered an unexpected shape to {q[:300]}")
    series: list[Series] = []
    for result in answer.get("results", []):
        if type(result) is not dict:
            raise QueryError(f"InfluxDB answered an unexpected result to {q[:300]}")
        if "error" in result:
            raise QueryError(f"InfluxQL error: {str(result['error'])[:500]} in {q[:300]}")
        items = result.get("series", [])
        if type(items) is not list:
            raise QueryError(f"InfluxDB answered unexpected series to {q[:300]}")
        for item in items:
            if type(item) is not dict:
                raise QueryError(f"InfluxDB answered a malformed series to {q[:300]}")
            name, tags = item.get("name", ""), item.get("tags") or {}
            columns, values = item.get("columns", []), item.get("values", [])
            if (
                type(name) is not str
                or type(tags) is not dict
                or type(columns) is not list
                or type(values) is not list
                or any(type(row) is not list for row in values)
            ):
                raise QueryError(f"InfluxDB answered a malformed series to {q[:300]}")
            series.append(Series(name=name, tags=tags, columns=columns, values=values))
    return series


@dataclass(slots=True)
class Series:
    """One series of an InfluxQL result."""

    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """Each row as a dict of column → value, with the series' tags added."""
        return [{**self.tags, **dict(zip(self.columns, row, strict=False))} for row in self.values]


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_literal(value: str) -> str:
    """An InfluxQL string literal in single quotes: user input is never spliced in raw.

    InfluxQL ends a string at a raw CR, LF or NUL and has no escape for CR or NUL:
    CR and LF become spaces, as they do in stored tag values (line protocol), and
    NUL becomes U+FFFD, which matches nothing stored.
    """
    cleaned = value.replace("\\", "\\\\").replace("'", "\\'").replace("\x00", "\ufffd")
    return "'" + cleaned.replace("\r", " ").replace("\n", " ") + "'"


class InfluxQL:
    """InfluxQL over HTTP ``/query`` against either API's database (v1 db or v2 bucket)."""

    def __init__(self, settings: Settings, timeout_s: float = 60.0) -> None:
        headers: dict[str, str] = {}
        auth = None
        if settings.influx_api == "v2":
            self.database = settings.influx_bucket
            if settings.influx_token:
                headers["Authorization"] = f"Token {settings.influx_token.get_secret_value()}"
        else:
            self.database = settings.influx_db
            if settings.influx_user:
                password = (
                    settings.influx_password.get_secret_value() if settings.influx_password else ""
                )
                auth = httpx.BasicAuth(settings.influx_user, password)
        self._http = httpx.Client(
            base_url=settings.influx_url, headers=headers, auth=auth, timeout=timeout_s
        )

    def query(self, q: str, epoch: str = "ms") -> list[Series]:
        """Run one InfluxQL statement (or several; their series are concatenated).

        Times come as integers in ``epoch`` units (``ms``; ``ns`` to tell points apart).
        """
        try:
            response = self._http.post("/query", data={"db": self.database, "q": q, "epoch": epoch})
        except httpx.HTTPError as exc:
            raise QueryError(f"InfluxDB unreachable: {exc}") from None
        if response.status_code >= 300:
            raise QueryError(f"InfluxDB answered {response.status_code}: {response.text[:500]}")
        try:
            # orjson refuses NaN, Infinity and any number that overflows a double (1e999),
            # so every number of a decoded answer is finite: no scan of the values needed.
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise QueryError(f"InfluxDB answered malformed JSON ({exc}) to {q[:300]}") from None
        return _series_of(answer, q)

    def ping(self) -> bool:
        try:
            return self._http.get("/ping", timeout=2).status_code in (200, 204)
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._http.close()


def time_literal(moment: datetime) -> str:
    """An InfluxQL RFC 3339 time literal in UTC."""
    return quote_literal(moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
