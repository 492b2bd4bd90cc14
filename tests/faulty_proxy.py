"""A test-only HTTP proxy in front of a real ``influxd`` that can be told to misbehave.

Writes (``POST /write`` and ``/api/v2/write``) can be made to fail with a 500 or
503 without reaching InfluxDB, to stall before reaching it (the client times out;
nothing was written), or to stall *after* InfluxDB stored them (the client times
out although the points landed, so its retry writes them a second time). Every
other request passes through untouched. The fault tests use it to prove that
ingest retries, and that a retried write never stores a reading twice.

It also counts how often each ``(device_id, seq)`` reached InfluxDB in a write
InfluxDB accepted (:attr:`FaultyProxy.written`): the direct evidence that a
message *was* written again (a retry after a timeout, a redelivery after a kill)
and absorbed, which the stored points alone cannot show since a rewrite lands on
the same point. And it can hold InfluxDB's answers (:meth:`FaultyProxy.hold_answers`),
so a test can kill ingest at a known moment: the batch stored, ingest not told.
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from devstack.servers import LOOPBACK, free_port


@dataclass
class Faults:
    """What the proxy does to writes now. Fractions are of all writes, drawn at random."""

    error_rate: float = 0.0
    """Answer 500 or 503 (alternately) without forwarding."""
    stall_before_rate: float = 0.0
    """Sleep ``stall_s`` and then drop the connection, without forwarding."""
    stall_after_rate: float = 0.0
    """Forward (InfluxDB stores the points), then sleep ``stall_s`` before answering."""
    stall_s: float = 0.0
    delay_s: float = 0.0
    """Every write takes at least this long (keeps a batch "in hand" for a kill)."""


_DEVICE_TAG = re.compile(rb",device_id=((?:[^,\\ ]|\\.)+)")
_SEQ_FIELD = re.compile(rb"[ ,]seq=(\d+)i")


def telemetry_seqs(body: bytes) -> list[tuple[str, int]]:
    """``(device_id, seq)`` of every ``telemetry`` line in a line-protocol body."""
    found: list[tuple[str, int]] = []
    for line in body.splitlines():
        if not line.startswith(b"telemetry,"):
            continue
        device, seq = _DEVICE_TAG.search(line), _SEQ_FIELD.search(line)
        assert device is not None and seq is not None, line
        found.append((device.group(1).decode(), int(seq.group(1))))
    return found


class FaultyProxy:
    """Forward to ``upstream``; misbehave on writes as :attr:`faults` says."""

    def __init__(self, upstream: str, seed: int = 4) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.faults = Faults()
        self.writes = 0
        self.errors = 0
        self.stalled_before = 0
        self.stalled_after = 0
        self.active = 0
        """Writes being handled right now."""
        self.written: Counter[tuple[str, int]] = Counter()
        """How many writes InfluxDB accepted carried each ``(device_id, seq)`` of telemetry."""
        self.held = 0
        """Writes stored by InfluxDB whose answer is being held back now."""
        self._release = threading.Event()
        self._release.set()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOOPBACK, self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def hold_answers(self) -> None:
        """From now on, forward writes (InfluxDB stores them) but keep the answer back."""
        self._release.clear()

    def release_answers(self) -> None:
        self._release.set()

    def rewritten(self) -> int:
        """``(device_id, seq)`` pairs that reached InfluxDB in more than one accepted write."""
        with self._lock:
            return sum(1 for times in self.written.values() if times > 1)

    def _stored(self, body: bytes | None) -> None:
        seqs = telemetry_seqs(body or b"")
        with self._lock:
            self.written.update(seqs)

    def _draw(self) -> str:
        """Which fault (if any) this write gets."""
        with self._lock:
            self.writes += 1
            faults = self.faults
            roll = self._random.random()
            for name, rate in (
                ("error", faults.error_rate),
                ("stall_before", faults.stall_before_rate),
                ("stall_after", faults.stall_after_rate),
            ):
                if roll < rate:
                    return name
                roll -= rate
            return "ok"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _forward(self, body: bytes | None) -> httpx.Response:
                headers = {
                    key: value
                    for key, value in self.headers.items()
                    if key.lower() not in ("host", "content-length", "connection")
                }
                return httpx.request(
                    self.command,
                    proxy.upstream + self.path,
                    headers=headers,
                    content=body,
                    timeout=60,
                )

            def _reply(self, response: httpx.Response) -> None:
                self.send_response(response.status_code)
                for key, value in response.headers.items():
                    skip = ("content-length", "content-encoding", "transfer-encoding", "connection")
                    if key.lower() not in skip:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)

            def _fail(self, code: int) -> None:
                body = b'{"error":"injected fault"}'
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                is_write = self.command == "POST" and self.path.split("?")[0] in (
                    "/write",
                    "/api/v2/write",
                )
                if not is_write:
                    self._reply(self._forward(body))
                    return
                fault = proxy._draw()
                with proxy._lock:
                    proxy.active += 1
                try:
                    self._write(fault, body)
                finally:
                    with proxy._lock:
                        proxy.active -= 1

            def _write(self, fault: str, body: bytes | None) -> None:
                faults = proxy.faults
                if faults.delay_s:
                    time.sleep(faults.delay_s)
                if fault == "error":
                    with proxy._lock:
                        proxy.errors += 1
                    self._fail(500 if proxy.errors % 2 else 503)
                    return
                if fault == "stall_before":
                    with proxy._lock:
                        proxy.stalled_before += 1
                    time.sleep(faults.stall_s)
                    self.close_connection = True
                    return
                response = self._forward(body)
                if response.is_success:
                    proxy._stored(body)
                if not proxy._release.is_set():
                    with proxy._lock:
                        proxy.held += 1
                    proxy._release.wait()
                    with proxy._lock:
                        proxy.held -= 1
                if fault == "stall_after":
                    with proxy._lock:
                        proxy.stalled_after += 1
                    time.sleep(faults.stall_s)
                with contextlib.suppress(OSError):  # the client gave up waiting, as intended
                    self._reply(response)

            do_GET = _handle
            do_POST = _handle
            do_HEAD = _handle

        return Handler
