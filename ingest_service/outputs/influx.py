"""Writing points to InfluxDB: v1 ``/write`` or v2 ``/api/v2/write``.

Reading is :mod:`ingest_service.influxql`'s job; this module only sends bytes out.
"""

from __future__ import annotations

from typing import Protocol

import httpx

from ingest_service.settings import Settings


class WriteError(Exception):
    """A write that failed. ``transient`` errors are retried; the others mean bad points."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


BAD_POINTS_STATUSES = frozenset({400, 413, 422})
"""Answers that blame the points themselves: the batch is split to find the culprit."""


def _is_transient(status: int) -> bool:
    """Anything but "bad points" is retried: 5xx and timeouts, but also 401/403/404.

    A revoked token or a missing database is an operator's problem to fix, not the
    messages'; treating it as bad points would turn every message into a
    ``db_rejected`` rejection (that InfluxDB refuses too) and acknowledge it: lost.
    """
    return status not in BAD_POINTS_STATUSES


class Writer(Protocol):
    """Writes one line-protocol body, or raises :class:`WriteError`."""

    def write(self, body: bytes) -> None: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


SHARD_DURATION = "52w"
"""Shard group duration of a v1 database ingest creates. InfluxDB's default, 7 days,
cuts a year into ~53 shards, and the indicators' per-site queries open an iterator per
series per shard: 10,000 sites took ~7 s instead of ~1 s (docs/performance.md)."""


class InfluxV1Writer:
    """InfluxDB 1.x: ``POST /write?db=…`` (creates the database on first use).

    A database it creates gets 52-week shard groups (:data:`SHARD_DURATION`). An
    existing database is left as it is: InfluxDB answers the ``CREATE`` with a
    "conflicts with an existing policy" error, which is ignored.
    """

    def __init__(self, settings: Settings, timeout_s: float | None = None) -> None:
        timeout_s = settings.influx_timeout_s if timeout_s is None else timeout_s
        auth = None
        if settings.influx_user:
            secret = settings.influx_password
            password = secret.get_secret_value() if secret else ""
            auth = httpx.BasicAuth(settings.influx_user, password)
        self._db = settings.influx_db
        self._http = httpx.Client(base_url=settings.influx_url, auth=auth, timeout=timeout_s)
        self._db_ready = False

    def _ensure_database(self) -> None:
        if self._db_ready:
            return
        name = self._db.replace("\\", "\\\\").replace('"', '\\"')
        try:
            response = self._http.post(
                "/query",
                data={"q": f'CREATE DATABASE "{name}" WITH SHARD DURATION {SHARD_DURATION}'},
            )
        except httpx.HTTPError as exc:
            raise WriteError(f"InfluxDB unreachable: {exc}", transient=True) from None
        # A user without admin rights may not create databases; the write will tell.
        self._db_ready = response.status_code < 500

    def write(self, body: bytes) -> None:
        self._ensure_database()
        try:
            response = self._http.post(
                "/write", params={"db": self._db, "precision": "ns"}, content=body
            )
        except httpx.HTTPError as exc:
            raise WriteError(f"InfluxDB unreachable: {exc}", transient=True) from None
        if response.status_code == 404 and "database not found" in response.text:
            self._db_ready = False  # dropped under us: create it again on the next attempt
        if response.status_code >= 300:
            raise WriteError(
                f"InfluxDB answered {response.status_code}: {response.text[:500]}",
                transient=_is_transient(response.status_code),
                status=response.status_code,
            )

    def ping(self) -> bool:
        try:
            return self._http.get("/ping", timeout=2).status_code == 204
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._http.close()


class InfluxV2Writer:
    """InfluxDB 2.x/3.x (and 1.8+): ``/api/v2/write`` through influxdb-client.

    influxdb-client (~30 MiB once imported) is imported here, not at module level,
    so a v1 ingest process never loads it.
    """

    def __init__(self, settings: Settings, timeout_s: float | None = None) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        timeout_s = settings.influx_timeout_s if timeout_s is None else timeout_s
        token = settings.influx_token.get_secret_value() if settings.influx_token else ""
        self._bucket = settings.influx_bucket
        self._org = settings.influx_org or "-"
        self._client = InfluxDBClient(
            url=settings.influx_url,
            token=token,
            org=self._org,
            timeout=int(timeout_s * 1000),
            retries=False,
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        import urllib3.exceptions
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self._write_api.write(
                bucket=self._bucket,
                org=self._org,
                record=body,
                write_precision=WritePrecision.NS,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            raise WriteError(
                f"InfluxDB answered {status}: {str(exc.body or exc.reason)[:500]}",
                transient=_is_transient(status) or status == 0,
                status=status,
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise WriteError(f"InfluxDB unreachable: {exc}", transient=True) from None

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except Exception:
            return False

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]


def make_writer(settings: Settings) -> Writer:
    """The writer ``FARM_INFLUX_API`` asks for."""
    if settings.influx_api == "v1":
        return InfluxV1Writer(settings)
    return InfluxV2Writer(settings)
