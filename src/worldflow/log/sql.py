"""The embedded event log: a table in the store, appended by a writer process (group commit).

``append`` sends the records to the writer process (:mod:`worldflow.log.writer`) and waits for
its answer, which comes only after the commit that holds them. Many requests, from every ingest
worker, share one commit, so one fsync serves them all. Reading happens here, on the store's
own connections.

The writer is the only writer of ``event_log``, so offsets grow in commit order on both SQLite
(rowid) and PostgreSQL (identity column).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from sqlalchemy.engine import Engine

from worldflow.log import (
    AppendResult,
    LogEntry,
    LogError,
    LogOverloaded,
    LogRecord,
    QuarantineRecord,
)
from worldflow.log import writer as writer_process

CommitObserver = Callable[[int, float], None]  # (events in the commit, seconds it took)


class SqlEventLog:
    """Appends through the writer process at ``writer_address``; reads on the store's engine."""

    def __init__(
        self,
        engine: Engine,
        writer_address: str,
        *,
        max_pending_events: int = 200_000,
        on_commit: CommitObserver | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.on_lost = on_lost
        self.writer_address = writer_address
        self.max_pending_events = max_pending_events
        self.on_commit = on_commit
        self._pending = 0
        self._end_offset = 0
        self._next_id = 0
        self._waiting: dict[int, tuple[asyncio.Future[AppendResult], int]] = {}
        self._stream: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._encoder = msgspec.msgpack.Encoder()
        self._failure: str | None = None

    @property
    def pending_events(self) -> int:
        return self._pending

    @property
    def running(self) -> bool:
        return self._stream is not None and self._failure is None

    async def start(self) -> None:
        """Connect to the writer process and learn the log's end offset."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(writer_process.sockaddr(self.writer_address))
        reader, self._stream = await asyncio.open_connection(sock=sock)
        hello = await self._read_frame(reader)
        self._end_offset = int(hello[2])
        self._reader_task = asyncio.create_task(self._read_answers(reader))

    @staticmethod
    async def _read_frame(reader: asyncio.StreamReader) -> list[Any]:
        head = await reader.readexactly(writer_process.HEADER.size)
        body = await reader.readexactly(writer_process.HEADER.unpack(head)[0])
        decoded: list[Any] = msgspec.msgpack.decode(body)
        return decoded

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                rid, dups, end_offset, error, elapsed, group_size = await self._read_frame(reader)
                self._end_offset = end_offset
                future, count = self._waiting.pop(rid)
                self._pending -= count
                if group_size and error is None and self.on_commit is not None:
                    self.on_commit(group_size, elapsed)
                if error is None:
                    if not future.done():
                        future.set_result(AppendResult(frozenset(dups)))
                elif not future.done():
                    future.set_exception(LogError(f"could not write the event log: {error}"))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if self._stream is not None:  # not our own close(): the writer went away
                self._fail(f"the log writer stopped ({exc.__class__.__name__})")
                if self.on_lost is not None:
                    self.on_lost(self._failure or "")

    def _fail(self, reason: str) -> None:
        self._failure = reason
        for future, _count in self._waiting.values():
            if not future.done():
                future.set_exception(LogError(reason))
        self._waiting.clear()
        self._pending = 0

    async def append(
        self, records: Sequence[LogRecord], quarantined: Sequence[QuarantineRecord] = ()
    ) -> AppendResult:
        if not records and not quarantined:
            return AppendResult(frozenset())
        if self._stream is None or self._failure is not None:
            raise LogError(self._failure or "the event log is not running")
        count = len(records) + len(quarantined)
        if self._pending and self._pending + count > self.max_pending_events:
            raise LogOverloaded(retry_after_s=1 + self._pending // 50_000)
        self._next_id += 1
        rid = self._next_id
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = (future, count)
        self._pending += count
        payload = self._encoder.encode((rid, records, quarantined))
        self._stream.write(writer_process.HEADER.pack(len(payload)) + payload)
        # Shielded: a client that goes away does not cancel what the writer already has.
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Wait for the answers to everything sent, then disconnect."""
        if self._stream is not None:
            if self._waiting:
                await asyncio.gather(
                    *(f for f, _ in list(self._waiting.values())), return_exceptions=True
                )
            stream, self._stream = self._stream, None
            stream.close()
        if self._reader_task is not None:
            await asyncio.gather(self._reader_task, return_exceptions=True)
            self._reader_task = None

    # -- reading ----------------------------------------------------------------------------

    def end_offset(self) -> int:
        return self._end_offset

    def read(
        self,
        after_offset: int,
        limit: int,
        partition: int | None = None,
        workspace_id: str | None = None,
    ) -> list[LogEntry]:
        return read_entries(self.engine, after_offset, limit, partition, workspace_id)


def read_entries(
    engine: Engine,
    after_offset: int,
    limit: int,
    partition: int | None = None,
    workspace_id: str | None = None,
) -> list[LogEntry]:
    """Entries with offset > after_offset, in offset order (a consumer needs no writer).

    Driver SQL on the driver's cursor: the processor reads every entry through here, and the
    expression layer's per-row work would cost it more than the read itself."""
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    sql = ('SELECT "offset", workspace_id, message_id, "partition", received_at_ms, body'
           f' FROM event_log WHERE "offset" > {mark}')  # fmt: skip
    params: list[Any] = [after_offset]
    if partition is not None:
        sql += f' AND "partition" = {mark}'
        params.append(partition)
    if workspace_id is not None:
        sql += f" AND workspace_id = {mark}"
        params.append(workspace_id)
    sql += f' ORDER BY "offset" LIMIT {mark}'
    params.append(limit)
    make = LogEntry._make
    with engine.connect() as conn:  # the driver's own cursor: no Row object per entry
        cursor = conn.connection.cursor()
        try:
            cursor.execute(sql, tuple(params))
            return [make(row) for row in cursor.fetchall()]
        finally:
            cursor.close()
