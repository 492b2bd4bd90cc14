"""A fresh Mosquitto and InfluxDB per run, in a folder of their own, so runs cannot interfere."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType

import httpx

from devstack.servers import Influxd, Mosquitto

DB = "farm"


class Stack:
    """Broker and database on free loopback ports; everything removed on exit."""

    def __init__(self, parent: Path | None = None, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="farm-bench-", dir=parent))
        self.keep = keep
        self.broker = Mosquitto(self.root / "mosquitto")
        self.influxd = Influxd(self.root / "influxd")
        self._http: httpx.Client | None = None

    def __enter__(self) -> Stack:
        try:
            self.broker.start()
            self.influxd.start()
        except BaseException:
            self.close()
            raise
        self._http = httpx.Client(base_url=self.influxd.url, timeout=60)
        self._http.post("/query", data={"q": f'CREATE DATABASE "{DB}"'}).raise_for_status()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        self.influxd.stop()
        self.broker.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def http(self) -> httpx.Client:
        assert self._http is not None, "stack not started"
        return self._http

    def broker_pid(self) -> int:
        assert self.broker.process is not None
        return self.broker.process.pid

    def influxd_pid(self) -> int:
        assert self.influxd.process is not None
        return self.influxd.process.pid

    def query(self, q: str) -> list[list[object]]:
        """Rows of the first series of an InfluxQL result (empty when there is none)."""
        response = self.http.post("/query", data={"db": DB, "q": q, "epoch": "ns"})
        response.raise_for_status()
        for result in response.json().get("results", []):
            if "error" in result:
                raise RuntimeError(f"InfluxQL error: {result['error']}")
            for series in result.get("series", []):
                values: list[list[object]] = series.get("values", [])
                return values
        return []

    def stored(self, measurement: str = "telemetry") -> int:
        """Distinct stored points: a redelivered message lands on the same point, counted once."""
        rows = self.query(f'SELECT count("seq") FROM "{measurement}"')
        return int(rows[0][1]) if rows else 0  # type: ignore[call-overload]

    def shards(self) -> int:
        """How many shards the database has (a year in 7-day shards is ~53)."""
        response = self.http.post("/query", data={"q": "SHOW SHARDS"})
        response.raise_for_status()
        for result in response.json().get("results", []):
            for series in result.get("series", []):
                if series.get("name") == DB:
                    return len(series.get("values", []))
        return 0

    def write(self, body: bytes) -> None:
        """A raw line-protocol write (nanosecond precision)."""
        response = self.http.post("/write", params={"db": DB, "precision": "ns"}, content=body)
        if response.status_code >= 300:
            raise RuntimeError(f"InfluxDB answered {response.status_code}: {response.text[:300]}")
