"""The read client refuses any answer it cannot trust as a QueryError, never a crash.

InfluxDB 1.6.7 answers an overflowing ``sum()`` with HTTP 200 and a Go error text
(tests/test_hostile_values.py covers that against the real server). Other servers,
versions or proxies may send numbers no double can hold, NaN or odd shapes; the real
InfluxDB does not write those, so a loopback server sends the bytes here. The client
relies on orjson to refuse overflowing numbers instead of scanning every value: this
proves it does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ingest_service.influxql import InfluxQL, QueryError
from ingest_service.settings import Settings

BODIES = {
    "overflow": b'{"results":[{"series":[{"name":"e","columns":["time","sum"],'
                b'"values":[[0,1e999]]}]}]}',
    "negative overflow": b'{"results":[{"series":[{"name":"e","columns":["time","sum"],'
                         b'"values":[[0,-1e400]]}]}]}',
    "nan": b'{"results":[{"series":[{"name":"e","columns":["time","sum"],'
           b'"values":[[0,NaN]]}]}]}',
    "infinity": b'{"results":[{"series":[{"name":"e","columns":["time","sum"],'
                b'"values":[[0,Infinity]]}]}]}',
    "go error text": b'json: unsupported value: +Inf',
    "values not rows": b'{"results":[{"series":[{"name":"e","columns":["time"],'
                       b'"values":[1,2]}]}]}',
}
LARGEST = (b'{"results":[{"series":[{"name":"e","columns":["time","sum"],'
           b'"values":[[0,1.7976931348623157e308]]}]}]}')


class _Answer(BaseHTTPRequestHandler):
    body = b""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: nothing here reads the server's log."""


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _client(httpd: ThreadingHTTPServer) -> InfluxQL:
    host, port = httpd.server_address[:2]
    return InfluxQL(Settings(influx_url=f"http://{host!s}:{port}", influx_api="v1"))


@pytest.mark.parametrize("body", list(BODIES.values()), ids=list(BODIES))
def test_an_untrustworthy_answer_is_a_query_error(server: ThreadingHTTPServer,
                                                  body: bytes) -> None:
    _Answer.body = body
    with pytest.raises(QueryError):
        _client(server).query("SELECT sum(mass_t) FROM event")


def test_the_largest_finite_number_is_an_answer(server: ThreadingHTTPServer) -> None:
    _Answer.body = LARGEST
    (series,) = _client(server).query("SELECT sum(mass_t) FROM event")
    assert series.values == [[0, 1.7976931348623157e308]]
