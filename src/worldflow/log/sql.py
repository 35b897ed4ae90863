"""The embedded event log: a table in the store, written by one thread with group commit.

Requests hand their records to the writer and wait. The writer takes everything that queued up
while it was busy, writes it in one transaction (dedup check, inserts, quarantine rows) and
commits once (one fsync for many requests), then wakes every waiting request. A request is
answered only after the commit that holds its events.

The writer is the only writer of ``event_log``, so offsets grow in commit order on both SQLite
(rowid) and PostgreSQL (identity column).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worldflow.log import AppendResult, LogEntry, LogError, LogOverloaded, LogRecord, QuarantineRecord
from worldflow.store.schema import event_log

log = logging.getLogger(__name__)

_CHUNK = 500  # ids per dedup query (well below SQLite's bound-parameter limit)


@dataclass(slots=True)
class _Request:
    records: Sequence[LogRecord]
    quarantined: Sequence[QuarantineRecord]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[AppendResult]
    duplicates: set[int] = field(default_factory=set)


CommitObserver = Callable[[int, float], None]  # (events in the commit, seconds it took)


class SqlEventLog:
    def __init__(
        self,
        engine: Engine,
        *,
        max_pending_events: int = 200_000,
        max_commit_events: int = 20_000,
        on_commit: CommitObserver | None = None,
    ) -> None:
        self.engine = engine
        self.max_pending_events = max_pending_events
        self.max_commit_events = max_commit_events
        self.on_commit = on_commit
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._pending = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self._end_offset = 0
        self._dialect = engine.dialect.name
        mark = "?" if self._dialect == "sqlite" else "%s"
        cols = "workspace_id, message_id, partition, received_at_ms, body"
        self._insert_sql = (
            f'INSERT INTO event_log ({cols}) VALUES ({", ".join([mark] * 5)})'
        )
        qcols = "workspace_id, source_id, received_at_ms, channel, message_id, code, errors, payload"
        self._quarantine_sql = f"INSERT INTO quarantine ({qcols}) VALUES ({', '.join([mark] * 8)})"
        self._mark = mark

    # -- the asyncio side -------------------------------------------------------------------

    @property
    def pending_events(self) -> int:
        return self._pending

    def start(self) -> None:
        with self.engine.connect() as conn:
            self._end_offset = int(
                conn.execute(sa.select(sa.func.coalesce(sa.func.max(event_log.c.offset), 0)))
                .scalar_one()
            )
        self._thread = threading.Thread(target=self._run, name="worldflow-log-writer", daemon=True)
        self._thread.start()

    async def append(
        self, records: Sequence[LogRecord], quarantined: Sequence[QuarantineRecord] = ()
    ) -> AppendResult:
        if not records and not quarantined:
            return AppendResult(frozenset())
        count = len(records) + len(quarantined)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendResult] = loop.create_future()
        with self._cond:
            if self._closing or self._thread is None:
                raise LogError("the event log is not running")
            if self._pending and self._pending + count > self.max_pending_events:
                raise LogOverloaded(retry_after_s=1 + self._pending // 50_000)
            self._queue.append(_Request(records, quarantined, loop, future))
            self._pending += count
            self._cond.notify()
        return await future

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- reading ----------------------------------------------------------------------------

    def end_offset(self) -> int:
        return self._end_offset

    def read(self, after_offset: int, limit: int, partition: int | None = None) -> list[LogEntry]:
        query = (
            sa.select(event_log)
            .where(event_log.c.offset > after_offset)
            .order_by(event_log.c.offset)
            .limit(limit)
        )
        if partition is not None:
            query = query.where(event_log.c.partition == partition)
        with self.engine.connect() as conn:
            return [LogEntry(*row) for row in conn.execute(query)]

    # -- the writer thread ------------------------------------------------------------------

    def _take(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            taken: list[_Request] = []
            size = 0
            while self._queue and (not taken or size < self.max_commit_events):
                request = self._queue.popleft()
                taken.append(request)
                size += len(request.records) + len(request.quarantined)
            return taken

    def _run(self) -> None:
        raw = self.engine.raw_connection()
        try:
            while (batch := self._take()) is not None:
                started = time.perf_counter()
                error: BaseException | None = None
                try:
                    written = self._write(raw, batch)
                except Exception as exc:  # reported to every waiting request, never swallowed
                    log.exception("event log commit failed")
                    error = exc
                    try:
                        raw.rollback()
                    except Exception:
                        log.exception("rollback after failed commit failed")
                    written = 0
                count = sum(len(r.records) + len(r.quarantined) for r in batch)
                with self._cond:
                    self._pending -= count
                if error is None and self.on_commit is not None:
                    self.on_commit(written, time.perf_counter() - started)
                for request in batch:
                    self._resolve(request, error)
        finally:
            raw.close()

    @staticmethod
    def _resolve(request: _Request, error: BaseException | None) -> None:
        def settle() -> None:
            if request.future.done():  # the client went away; its events are written anyway
                return
            if error is None:
                request.future.set_result(AppendResult(frozenset(request.duplicates)))
            else:
                request.future.set_exception(LogError(f"could not write the event log: {error}"))

        try:
            request.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _existing(self, cursor: Any, workspace_id: str, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            if self._dialect == "sqlite":
                marks = ",".join("?" * len(chunk))
                cursor.execute(
                    "SELECT message_id FROM event_log WHERE workspace_id = ? "
                    f"AND message_id IN ({marks})",
                    [workspace_id, *chunk],
                )
            else:
                cursor.execute(
                    "SELECT message_id FROM event_log WHERE workspace_id = %s "
                    "AND message_id = ANY(%s)",
                    [workspace_id, chunk],
                )
            found.update(row[0] for row in cursor.fetchall())
        return found

    def _write(self, raw: Any, batch: list[_Request]) -> int:
        by_workspace: dict[str, list[str]] = {}
        for request in batch:
            for record in request.records:
                by_workspace.setdefault(record.workspace_id, []).append(record.message_id)
        cursor = raw.cursor()
        try:
            seen: set[tuple[str, str]] = set()
            for workspace_id, ids in by_workspace.items():
                seen.update((workspace_id, mid) for mid in self._existing(cursor, workspace_id, ids))
            rows: list[LogRecord] = []
            for request in batch:
                for index, record in enumerate(request.records):
                    key = (record.workspace_id, record.message_id)
                    if key in seen:
                        request.duplicates.add(index)
                    else:
                        seen.add(key)
                        rows.append(record)
            quarantined = [q for request in batch for q in request.quarantined]
            if rows:
                cursor.executemany(self._insert_sql, rows)
            if quarantined:
                cursor.executemany(self._quarantine_sql, quarantined)
            if rows:
                cursor.execute('SELECT max("offset") FROM event_log')
                self._end_offset = int(cursor.fetchone()[0])
            raw.commit()
        finally:
            cursor.close()
        return len(rows)
