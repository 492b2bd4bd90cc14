"""A minimal MQTT 3.1.1 QoS 1 publisher over a raw socket, to load the broker at its speed.

paho's ``publish()`` costs tens of microseconds of Python per message; on a
2-core machine the publisher would then compete with the broker and be the
bottleneck, and every subject would measure our publisher. Here PUBLISH packets
are encoded before the clock starts, sent in large ``sendall`` chunks, and
PUBACKs are only counted (a v3.1.1 PUBACK is exactly 4 bytes), so the
publisher costs little CPU and the broker sets the pace. Delivery is still real
QoS 1: a message counts as published when its PUBACK arrives, and a window
bounds the unacknowledged messages (packet ids stay unique within it).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

CHUNK = 256
"""Packets per ``sendall``."""
WINDOW = 30_000
"""Unacknowledged messages allowed per connection (below 65,535 packet ids)."""
_CONNACK = b"\x20\x02\x00\x00"


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def connect_packet(client_id: str, keepalive: int = 300) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session."""
    body = _string(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive)
    body += _string(client_id.encode())
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    """PUBLISH at QoS 1, not retained."""
    body = _string(topic.encode()) + struct.pack("!H", packet_id) + payload
    return b"\x32" + _remaining_length(len(body)) + body


def chunks(messages: Iterable[tuple[str, bytes]], size: int = CHUNK) -> Iterator[tuple[bytes, int]]:
    """Encode messages into ``(bytes, count)`` chunks with cycling packet ids."""
    parts: list[bytes] = []
    packet_id = 0
    for topic, payload in messages:
        packet_id = packet_id % 65535 + 1
        parts.append(publish_packet(topic, payload, packet_id))
        if len(parts) == size:
            yield b"".join(parts), size
            parts = []
    if parts:
        yield b"".join(parts), len(parts)


class Connection:
    """One publisher connection; a reader thread counts PUBACKs."""

    def __init__(self, host: str, port: int, client_id: str, window: int = WINDOW) -> None:
        self.window = window
        self.sent = 0
        self.acked = 0
        self._cond = threading.Condition()
        self._sock = socket.create_connection((host, port), timeout=30)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.sendall(connect_packet(client_id))
        reply = b""
        while len(reply) < 4:
            data = self._sock.recv(4 - len(reply))
            if not data:
                raise ConnectionError("broker closed the connection before CONNACK")
            reply += data
        if reply != _CONNACK:
            raise ConnectionError(f"broker refused the connection: {reply!r}")
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._read, daemon=True, name="puback-reader")
        self._reader.start()

    def _read(self) -> None:
        received = 0
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    self.acked = -1 if self.acked < self.sent else self.acked
                    self._cond.notify_all()
                    return
                received += len(data)
                self.acked = received // 4
                self._cond.notify_all()

    def send(self, chunk: bytes, count: int) -> None:
        """Send a chunk once the window has room for it."""
        with self._cond:
            while self.sent - self.acked + count > self.window:
                if self.acked < 0:
                    raise ConnectionError("broker closed the publisher connection")
                self._cond.wait(1.0)
            self.sent += count
        self._sock.sendall(chunk)

    def wait_acked(self, timeout: float) -> bool:
        """Wait until every sent message is PUBACKed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.acked != self.sent:
                if self.acked < 0:
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        try:
            self._sock.sendall(b"\xe0\x00")  # DISCONNECT
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._reader.join(5)


@dataclass
class Published:
    """What a flood achieved: the first send and the last PUBACK (wall clock, epoch s)."""

    messages: int
    first_send: float
    last_ack: float

    @property
    def rate(self) -> float:
        elapsed = self.last_ack - self.first_send
        return self.messages / elapsed if elapsed > 0 else 0.0


def flood(
    host: str, port: int, streams: list[Iterable[tuple[bytes, int]]], tag: str = "bench-pub",
    ack_timeout: float = 600.0,
) -> Published:
    """Send each stream of chunks on its own connection as fast as the broker acknowledges."""
    connections = [Connection(host, port, f"{tag}-{i}") for i in range(len(streams))]
    start = threading.Barrier(len(streams) + 1)
    errors: list[BaseException] = []

    def run(connection: Connection, stream: Iterable[tuple[bytes, int]]) -> None:
        start.wait()
        try:
            for chunk, count in stream:
                connection.send(chunk, count)
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=pair, daemon=True)
        for pair in zip(connections, streams, strict=True)
    ]
    for thread in threads:
        thread.start()
    first = time.time()
    start.wait()
    for thread in threads:
        thread.join()
    try:
        if errors:
            raise errors[0]
        for connection in connections:
            if not connection.wait_acked(ack_timeout):
                raise TimeoutError("the broker did not acknowledge every message")
        last = time.time()
    finally:
        for connection in connections:
            connection.close()
    return Published(sum(c.sent for c in connections), first, last)


def paced(
    host: str, port: int, chunks_at: list[tuple[float, bytes, int]], tag: str = "bench-paced"
) -> list[tuple[float, int]]:
    """Send each ``(due wall time, chunk, count)`` at its time; return (actual send time, count)."""
    connection = Connection(host, port, tag)
    sent: list[tuple[float, int]] = []
    try:
        for due, chunk, count in chunks_at:
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            sent.append((time.time(), count))
            connection.send(chunk, count)
        if not connection.wait_acked(60):
            raise TimeoutError("the broker did not acknowledge every paced message")
    finally:
        connection.close()
    return sent
