"""The log writer process: the single writer of ``event_log``, with group commit.

It runs in its own process so that fsyncs and SQLite's per-row work never compete with request
handling for the interpreter lock. Every ingest worker of the server connects to it over a Unix
socket. After the first frame it takes every frame already waiting (from all workers), writes
them in one transaction (inserts, quarantine rows), commits once, and only then answers each
frame. An answer therefore means "durable".

Deduplication is by (workspace, message id) within a window of receipt time (24 hours by
default, bounded in keys), like Segment's own and like JetStream's duplicate window: a client
retrying a batch is not counted twice.

Frames are a 4-byte big-endian length and a msgpack body:
request ``[request_id, records, quarantined]``, answer ``[request_id, duplicate_indexes,
end_offset, error, commit_seconds, group_events]``; a connection is greeted with an answer of
id 0 that carries the end offset. On SIGTERM, or when the server that started it has died, the
writer commits what it has received and exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import selectors
import signal
import socket
import sqlite3
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, Any

import msgspec

from worldflow.children import spawn_child, stop_child

log = logging.getLogger(__name__)

HEADER = struct.Struct(">I")
WRITER_LOCK_ID = 0x776F726C64  # PostgreSQL advisory lock key of the log writer
_CHUNK = 500  # rows per statement (x 8 columns stays below SQLite's bound-parameter limit)
_LOG_INSERT = "INSERT INTO event_log (workspace_id, message_id, partition, received_at_ms, body)"
_QUARANTINE_INSERT = (
    "INSERT INTO quarantine (workspace_id, source_id, received_at_ms, channel, message_id, code, "
    "errors, payload)"
)

Request = tuple[int, list[list[Any]], list[list[Any]]]


class DedupeWindow:
    """Message keys seen within the deduplication window, in memory.

    Keys are Python's 64-bit hash of (workspace, message id). The writer builds the window from
    the log when it starts, so the per-process hash seed does not matter. The window keeps
    ``window_ms`` of receipt time and at most ``max_keys`` keys (about 70 bytes each), evicting
    whole minutes, oldest first.
    """

    def __init__(self, window_ms: int, max_keys: int) -> None:
        self.window_ms = window_ms
        self.max_keys = max_keys
        self._keys: set[int] = set()
        self._minutes: deque[tuple[int, list[int]]] = deque()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: int) -> bool:
        return key in self._keys

    def add(self, key: int, received_at_ms: int) -> None:
        minute = received_at_ms // 60_000
        if not self._minutes or self._minutes[-1][0] < minute:
            self._minutes.append((minute, []))
        self._minutes[-1][1].append(key)
        self._keys.add(key)

    def evict(self, now_ms: int) -> None:
        oldest = (now_ms - self.window_ms) // 60_000
        while self._minutes and (self._minutes[0][0] < oldest or len(self._keys) > self.max_keys):
            _minute, keys = self._minutes.popleft()
            self._keys.difference_update(keys)


class LogWriter:
    """Writes groups of requests in one transaction on a DBAPI connection."""

    def __init__(self, raw: Any, dialect: str, window: DedupeWindow) -> None:
        self.raw = raw
        self.window = window
        self.mark = "?" if dialect == "sqlite" else "%s"
        self._statements: dict[tuple[str, int], str] = {}
        self.end_offset = self._load_window()

    def _load_window(self) -> int:
        """Fill the window from the newest entries of the log; return the end offset."""
        cursor = self.raw.cursor()
        cursor.execute('SELECT max("offset") FROM event_log')
        end = int(cursor.fetchone()[0] or 0)
        now_ms = int(time.time() * 1000)
        cutoff = now_ms - self.window.window_ms
        loaded: list[tuple[int, int]] = []
        upper = end
        while upper > 0 and len(loaded) < self.window.max_keys:
            lower = max(0, upper - 50_000)
            cursor.execute(
                "SELECT workspace_id, message_id, received_at_ms FROM event_log "
                f'WHERE "offset" > {self.mark} AND "offset" <= {self.mark}',
                [lower, upper],
            )
            rows = [(at, hash((ws, mid))) for ws, mid, at in cursor.fetchall() if at >= cutoff]
            if not rows:
                break
            loaded.extend(rows)
            upper = lower
        loaded.sort()
        for at, key in loaded:
            self.window.add(key, at)
        self.window.evict(now_ms)
        cursor.close()
        self.raw.commit()
        return end

    def _insert_many(
        self, cursor: Any, head: str, width: int, rows: Sequence[Sequence[Any]]
    ) -> None:
        """Multi-row INSERTs: one statement per chunk instead of one per row."""
        group = "(" + ",".join([self.mark] * width) + ")"
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            sql = self._statements.get((head, len(chunk)))
            if sql is None:
                sql = f"{head} VALUES {','.join([group] * len(chunk))}"
                self._statements[(head, len(chunk))] = sql
            cursor.execute(sql, [value for row in chunk for value in row])

    def write(self, group: list[Request]) -> list[list[int]]:
        """Append a group in one transaction; per request, the indexes that were duplicates."""
        window = self.window
        fresh: dict[int, int] = {}
        rows: list[list[Any]] = []
        duplicates: list[list[int]] = []
        for _rid, records, _q in group:
            dups: list[int] = []
            for index, record in enumerate(records):
                key = hash((record[0], record[1]))
                if key in window or key in fresh:
                    dups.append(index)
                else:
                    fresh[key] = record[3]
                    rows.append(record)
            duplicates.append(dups)
        quarantined = [q for _rid, _r, qs in group for q in qs]
        end_offset = self.end_offset
        cursor = self.raw.cursor()
        try:
            if rows:
                self._insert_many(cursor, _LOG_INSERT, 5, rows)
                cursor.execute('SELECT max("offset") FROM event_log')
                end_offset = int(cursor.fetchone()[0])
            if quarantined:
                self._insert_many(cursor, _QUARANTINE_INSERT, 8, quarantined)
            self.raw.commit()
        except BaseException:
            self.raw.rollback()
            raise
        finally:
            cursor.close()
        self.end_offset = end_offset
        for key, received_at_ms in fresh.items():
            window.add(key, received_at_ms)
        window.evict(int(time.time() * 1000))
        return duplicates


def sockaddr(address: str) -> str:
    """``@name`` is a Linux abstract-namespace socket (no file to clean up); else a path."""
    return "\0" + address[1:] if address.startswith("@") else address


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


class WriterProcess:
    """Starts and stops the writer process, which listens on a Unix socket (abstract namespace)
    that every ingest worker of this server connects to."""

    def __init__(
        self, store_url: str, max_group_events: int, dedupe_window_ms: int, dedupe_max_keys: int
    ) -> None:
        self.address = f"@worldflow-log-{os.getpid()}-{secrets.token_hex(6)}"
        self._args = (store_url, self.address, max_group_events, dedupe_window_ms, dedupe_max_keys)
        self._process: Any = None

    def start(self, timeout: float = 60) -> None:
        self._process = spawn_child(serve, self._args, "log writer", timeout)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM: the writer commits what it has received, then exits."""
        if self._process is not None:
            stop_child(self._process, timeout)
            self._process = None


class _Inbox:
    """Reads frames from every connected worker on one thread (a selector, no reader threads:
    they would fight the commit loop for the interpreter lock)."""

    def __init__(self, listener: socket.socket, greeting: Callable[[], bytes]) -> None:
        self.listener = listener
        self.greeting = greeting
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)
        self.buffers: dict[socket.socket, bytearray] = {}
        self.ready: deque[tuple[socket.socket, Request]] = deque()
        self.decoder = msgspec.msgpack.Decoder(Request)

    def poll(self, timeout: float) -> None:
        """Move every complete frame that has arrived into ``ready``."""
        for key, _mask in self.selector.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is self.listener:
                conn, _ = sock.accept()
                conn.sendall(self.greeting())
                self.buffers[conn] = bytearray()
                self.selector.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:  # that worker is gone
                self.selector.unregister(sock)
                del self.buffers[sock]
                sock.close()
                continue
            buffer = self.buffers[sock]
            buffer += data
            while len(buffer) >= HEADER.size:
                size = HEADER.unpack_from(buffer)[0]
                end = HEADER.size + size
                if len(buffer) < end:
                    break
                self.ready.append((sock, self.decoder.decode(bytes(buffer[HEADER.size : end]))))
                del buffer[:end]


def serve(
    store_url: str,
    address: str,
    max_group_events: int,
    dedupe_window_ms: int,
    dedupe_max_keys: int,
    ready: Any,
    parent_pid: int,
) -> None:
    """Entry point of the writer process."""
    from worldflow.store.sql import create_store_engine

    logging.basicConfig(level=logging.WARNING)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        engine = create_store_engine(store_url)
        raw = engine.raw_connection()
        lock = _single_writer(store_url, raw)
        if store_url.startswith("sqlite:///"):
            _checkpoint_in_background(raw, store_url.removeprefix("sqlite:///"), stopping)
        writer = LogWriter(
            raw, engine.dialect.name, DedupeWindow(dedupe_window_ms, dedupe_max_keys)
        )
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sockaddr(address))
        listener.listen(128)
    except Exception as exc:
        ready.send(f"{type(exc).__name__}: {exc}")
        raise
    ready.send(None)
    ready.close()
    encoder = msgspec.msgpack.Encoder()
    inbox = _Inbox(
        listener, lambda: frame(encoder.encode([0, [], writer.end_offset, None, 0.0, 0]))
    )
    while True:
        # Group commit: take everything that arrived while the last commit ran.
        inbox.poll(0 if inbox.ready else 0.2)
        if not inbox.ready:
            if stopping.is_set() or os.getppid() != parent_pid:
                break  # stopped, or the server died: everything received is committed
            continue
        group = []
        size = 0
        while inbox.ready and size < max_group_events:
            item = inbox.ready.popleft()
            group.append(item)
            size += len(item[1][1]) + len(item[1][2])
        started = time.perf_counter()
        try:
            duplicates = writer.write([request for _conn, request in group])
            error = None
        except Exception as exc:  # every waiting request hears about it; nothing is acknowledged
            log.exception("event log commit failed")
            duplicates = [[] for _ in group]
            error = f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        # The first answer of a group carries the group's size and commit time (for metrics).
        replies: dict[socket.socket, list[bytes]] = {}
        for i, ((conn, (rid, _r, _q)), dups) in enumerate(zip(group, duplicates, strict=True)):
            stats = (elapsed, size) if i == 0 else (0.0, 0)
            replies.setdefault(conn, []).append(
                frame(encoder.encode([rid, dups, writer.end_offset, error, *stats]))
            )
        for conn, frames in replies.items():
            with contextlib.suppress(OSError):  # a worker that is gone: committed all the same
                conn.sendall(b"".join(frames))
    listener.close()
    raw.close()
    engine.dispose()
    if lock is not None:
        lock.close()


_WAL_RESTART_FRAMES = 16_384  # ~64 MB of 4 KB pages


def _checkpoint_in_background(raw: Any, path: str, stopping: threading.Event) -> None:
    """Copy the WAL into the database from another thread, so that commits do not wait for a
    checkpoint's fsync (SQLite would otherwise run one inside every ~1000th page's commit).

    Under steady writes a passive checkpoint never catches up at the moment a transaction
    starts, so the WAL would never start over; past ~64 MB a TRUNCATE checkpoint makes it,
    holding writers back only for the frames not yet copied.
    """
    raw.driver_connection.execute("PRAGMA wal_autocheckpoint=0")

    def run() -> None:
        conn = sqlite3.connect(path, timeout=30)
        while not stopping.wait(0.5):
            _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames > _WAL_RESTART_FRAMES:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    threading.Thread(target=run, daemon=True, name="checkpoint").start()


def _single_writer(store_url: str, raw: Any) -> IO[str] | None:
    """Wait until no other writer (say, of a killed server that is still finishing its last
    commit) holds this log: its window must be loaded after the other's last commit."""
    if store_url.startswith("sqlite:///"):
        handle = open(store_url.removeprefix("sqlite:///") + "-writer.lock", "w")  # noqa: SIM115
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle
    cursor = raw.cursor()
    cursor.execute("SELECT pg_advisory_lock(%s)", [WRITER_LOCK_ID])  # held for the session
    cursor.close()
    raw.commit()
    return None
