"""The durable outbox: every reading and event is stored here before it is sent.

A record leaves the outbox only when the broker has acknowledged it (PUBACK),
so a lost link, a ``kill -9`` or a power cut loses nothing that was accepted.
SQLite in WAL mode with ``synchronous=FULL``: each append is one transaction
that is on disk (fsync'd) when :meth:`Outbox.append` returns. The device's
``seq`` counter lives in the same file and moves in the same transaction as the
append, so a crash can neither reuse a ``seq`` nor skip one silently.

The outbox is bounded (``max_records``). When it is full the policy decides:
``drop_oldest`` deletes the oldest record to make room (recent data matters
most for a live farm), ``reject_new`` refuses the new one (the history is
kept complete up to the outage). Either way the loss is counted in the file
(``dropped``) and survives restarts, so it can be reported, never silent.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

SCHEMA_VERSION = 1


class FullPolicy(StrEnum):
    """What :meth:`Outbox.append` does when the outbox holds ``max_records``."""

    DROP_OLDEST = "drop_oldest"
    REJECT_NEW = "reject_new"


class OutboxLocked(RuntimeError):
    """Another process already uses this outbox file (two agents for one device)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One stored message: ``body`` is the record's JSON without ``v`` (a batch element)."""

    id: int
    kind: str
    seq: int
    body: bytes


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    dropped: int
    next_seq: int
    max_records: int
    policy: FullPolicy


class Outbox:
    """A bounded, durable FIFO of messages waiting for their PUBACK.

    Thread-safe (one connection behind a lock): the agent appends on its
    thread, the sender reads and acknowledges on another. ``path=":memory:"``
    gives the same behaviour without durability (tests, benchmarks).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_records: int = 100_000,
        policy: FullPolicy | str = FullPolicy.DROP_OLDEST,
        first_seq: int = 0,
        synchronous: str = "FULL",
    ) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.path = str(path)
        self.max_records = max_records
        self.policy = FullPolicy(policy)
        self._lock = threading.Lock()
        self._lockfile: IO[bytes] | None = None
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._lockfile = self._take_lock(Path(self.path + ".lock"))
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                kind TEXT NOT NULL,
                seq INTEGER NOT NULL,
                body BLOB NOT NULL
            );
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            """
        )
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema', ?), ('next_seq', ?), ('dropped', 0)",
                (SCHEMA_VERSION, first_seq),
            )
        self._next_seq = self._meta("next_seq")
        self._dropped = self._meta("dropped")
        self._count = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    @staticmethod
    def _take_lock(path: Path) -> IO[bytes]:
        handle = path.open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise OutboxLocked(f"{path.with_suffix('')} is in use by another process") from None
        return handle

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def _transaction(self) -> _Tx:
        return _Tx(self._db)

    # -- writing --------------------------------------------------------------------------

    def append(self, kind: str, make_body: Callable[[int], bytes]) -> Record | None:
        """Store one record with the next ``seq``; ``None`` when ``reject_new`` refused it.

        ``make_body(seq)`` builds (and validates) the record, so a record that
        cannot be encoded consumes no ``seq`` and nothing is stored.
        """
        with self._lock:
            seq = self._next_seq
            body = make_body(seq)
            with self._transaction():
                if self._count >= self.max_records:
                    if self.policy is FullPolicy.REJECT_NEW:
                        self._db.execute(
                            "UPDATE meta SET value = value + 1 WHERE key = 'dropped'"
                        )
                        self._dropped += 1
                        return None
                    excess = self._count - self.max_records + 1
                    self._db.execute(
                        "DELETE FROM outbox WHERE id IN "
                        "(SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,)
                    )
                    self._db.execute(
                        "UPDATE meta SET value = value + ? WHERE key = 'dropped'", (excess,)
                    )
                    self._dropped += excess
                    self._count -= excess
                cursor = self._db.execute(
                    "INSERT INTO outbox (kind, seq, body) VALUES (?, ?, ?)", (kind, seq, body)
                )
                self._db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,)
                )
            self._next_seq = seq + 1
            self._count += 1
            assert cursor.lastrowid is not None
            return Record(cursor.lastrowid, kind, seq, body)

    def take_seq(self) -> int:
        """Consume a ``seq`` without storing a record (a message sent outside the outbox)."""
        with self._lock, self._transaction():
            seq = self._next_seq
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
            self._next_seq = seq + 1
            return seq

    def ack(self, ids: Iterable[int]) -> int:
        """Remove acknowledged records; unknown ids (already dropped) are ignored."""
        wanted = list(ids)
        if not wanted:
            return 0
        removed = 0
        with self._lock, self._transaction():
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                marks = ",".join("?" * len(chunk))
                removed += self._db.execute(
                    f"DELETE FROM outbox WHERE id IN ({marks})", chunk
                ).rowcount
            self._count -= removed
        return removed

    # -- reading --------------------------------------------------------------------------

    def oldest(self, limit: int, *, after_id: int = 0, upto_id: int | None = None) -> list[Record]:
        """Up to ``limit`` records with ``after_id < id <= upto_id``, oldest first."""
        bound = upto_id if upto_id is not None else 2**63 - 1
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, seq, body FROM outbox WHERE id > ? AND id <= ? "
                "ORDER BY id LIMIT ?", (after_id, bound, limit),
            ).fetchall()
        return [Record(int(i), str(k), int(s), bytes(b)) for i, k, s, b in rows]

    def last_id(self) -> int:
        """The id of the newest stored record (0 when empty)."""
        with self._lock:
            row = self._db.execute("SELECT max(id) FROM outbox").fetchone()
        return int(row[0] or 0)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def dropped(self) -> int:
        """Records lost to the full policy, over the file's whole life."""
        return self._dropped

    def __len__(self) -> int:
        return self._count

    def stats(self) -> OutboxStats:
        return OutboxStats(self._count, self._dropped, self._next_seq, self.max_records,
                           self.policy)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._lockfile is not None:
                self._lockfile.close()
                self._lockfile = None


class _Tx:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def read_stats(path: str | Path) -> tuple[int, int, int]:
    """``(pending, dropped, next_seq)`` of an outbox file, read-only (tests, operators).

    Works while an agent has the file open: WAL lets readers see the last commit.
    """
    uri = f"file:{os.fspath(path)}?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    try:
        pending = int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        return pending, int(meta["dropped"]), int(meta["next_seq"])
    finally:
        db.close()
