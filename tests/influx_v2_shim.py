"""Test-only: InfluxDB's v2 write API in front of a real InfluxDB 1.x.

Debian ships InfluxDB 1.6.7, which has only ``/write`` and ``/query``. To test
the v2 path (influxdb-client posting to ``/api/v2/write``) against the same real
server, this forwards ``/api/v2/write?bucket=B&precision=P`` to
``/write?db=B&precision=P`` and passes ``/query``, ``/ping`` and ``/health``
through, after checking the ``Authorization: Token …`` header the way
InfluxDB 2 does. Nothing else is emulated: every point lands in the real server.
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

TOKEN = "test-token"


class InfluxV2Shim:
    """A threaded HTTP server on a free loopback port; ``url`` is what settings point at."""

    def __init__(self, upstream: str, token: str = TOKEN) -> None:
        self.upstream = upstream
        self.token = token
        self.writes = 0
        shim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _reply(
                self, status: int, body: bytes = b"", ctype: str = "application/json"
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") != f"Token {shim.token}":
                    self._reply(401, b'{"code":"unauthorized","message":"unauthorized access"}')
                    return False
                return True

            def _body(self) -> bytes:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                return body

            def _forward(self, method: str, path: str, query: str, body: bytes) -> None:
                headers = {"Content-Type": self.headers.get("Content-Type", "text/plain")}
                response = httpx.request(
                    method,
                    f"{shim.upstream}{path}",
                    content=body if body else None,
                    headers=headers if body else None,
                    params=parse_qs(query),
                    timeout=60,
                )
                self._reply(
                    response.status_code,
                    response.content,
                    response.headers.get("Content-Type", "application/json"),
                )

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path in ("/ping", "/health"):
                    self._forward("GET", "/ping", "", b"")
                elif parts.path == "/query":
                    if self._authorised():
                        self._forward("GET", "/query", parts.query, b"")
                else:
                    self._reply(404, b'{"code":"not found"}')

            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                body = self._body()
                if not self._authorised():
                    return
                if parts.path == "/api/v2/write":
                    params = parse_qs(parts.query)
                    bucket = params.get("bucket", [""])[0]
                    if not bucket:
                        self._reply(400, b'{"code":"invalid","message":"bucket is required"}')
                        return
                    query = urlencode(
                        {"db": bucket, "precision": params.get("precision", ["ns"])[0]}
                    )
                    shim.writes += 1
                    self._forward("POST", "/write", query, body)
                elif parts.path == "/query":
                    self._forward("POST", "/query", parts.query, body)
                else:
                    self._reply(404, b'{"code":"not found"}')

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
