"""Running the processor: its loop, its process beside the server, and replay.

The loop polls the log (a cheap indexed range read) and applies what it finds in
micro-batches. When the log is idle and a durable timer is due, it appends a clock tick through
the log writer, so timers fire as entries of the log itself and replay fires them identically.
Each partition is owned by one processor: a file lock beside an SQLite store, an advisory
lock on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worldflow.children import child_stop, spawn_child, stop_child
from worldflow.engine import TICK_WORKSPACE, Processor, tick_record_body
from worldflow.log import LogError, LogRecord
from worldflow.log.sql import SqlEventLog, read_entries
from worldflow.store.profiles import SqlProfileStore
from worldflow.store.schema import event_log
from worldflow.store.sql import create_store_engine

log = logging.getLogger(__name__)

POLL_S = 0.01  # idle poll interval: bounds the added end-to-end latency
GATHER_S = 0.01  # after a small batch, let the next one gather: fewer commits under load
TICK_AFTER_MS = 100  # an idle log gets a tick once a timer is this overdue (bounds timer lag)


class PartitionBusyError(RuntimeError):
    """Another processor owns the partition."""


@contextmanager
def owning(engine: Engine, partitions: Sequence[int], wait_s: float = 0) -> Any:
    """Hold the partitions' ownership for the duration of the block, waiting up to ``wait_s``
    for a previous owner to let go (a killed server's processor notices within a second)."""
    deadline = time.monotonic() + wait_s
    with ExitStack() as stack:
        conn = (
            stack.enter_context(engine.connect()) if engine.dialect.name == "postgresql" else None
        )
        db = Path(str(engine.url.database))
        for partition in partitions:
            handle = None
            if conn is None:
                handle = stack.enter_context((db.parent / f"{db.name}.p{partition}.lock").open("w"))
            while True:
                if conn is not None:
                    key = 0x57F1_0000 + partition
                    taken = conn.execute(sa.text(f"SELECT pg_try_advisory_lock({key})")).scalar()
                else:
                    assert handle is not None
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        taken = True
                    except BlockingIOError:
                        taken = False
                if taken:
                    break
                if time.monotonic() >= deadline:
                    raise PartitionBusyError(f"partition {partition} is owned by another processor")
                time.sleep(0.1)
        yield


def tune_gc() -> None:
    """The processor holds many small long-lived objects (profiles) and allocates many
    short-lived ones (decoded events): with the default thresholds the collector walks the
    whole heap every few thousand events and takes a third of the CPU."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def settle_gc() -> None:
    """After a micro-batch: collect what it left in the young generations (cycles included),
    then freeze the survivors (mostly hot profiles), so no later collection walks them again.
    Frozen objects are still freed when their last reference goes (an evicted profile)."""
    gc.collect(1)
    gc.freeze()


def build(engine: Engine, partitions: Sequence[int], **options: Any) -> Processor:
    processor = Processor(
        SqlProfileStore(engine),
        lambda after, limit: read_entries(engine, after, limit),
        partitions,
        **options,
    )
    processor.start()
    return processor


def run(
    store_url: str,
    partitions: Sequence[int],
    writer_address: str | None,
    stop: threading.Event,
    on_step: Callable[[Processor, int], None] | None = None,
    wait_s: float = 30,
    options: dict[str, Any] | None = None,
) -> None:
    """The processor loop until ``stop`` is set; commits what it applied before returning."""
    engine = create_store_engine(store_url, derived_only=True)
    try:
        with owning(engine, partitions, wait_s):
            fresh = functools.partial(build, engine, partitions, **(options or {}))
            processor = fresh()
            tune_gc()
            asyncio.run(_loop(processor, fresh, engine, writer_address, stop, on_step))
    finally:
        engine.dispose()


async def _loop(
    processor: Processor,
    fresh: Callable[[], Processor],
    engine: Engine,
    writer_address: str | None,
    stop: threading.Event,
    on_step: Callable[[Processor, int], None] | None,
) -> None:
    ticks = None
    if writer_address:
        ticks = SqlEventLog(engine, writer_address)
        await ticks.start()
    store = SqlProfileStore(engine)
    failures = 0
    current: Processor | None = processor
    try:
        while not stop.is_set():
            try:
                # After a failure, what was applied in memory is not committed: start again
                # from the committed state.
                current = current or fresh()
                n = current.step()
                failures = 0
                if n:
                    settle_gc()
                if ticks is not None and current.emit:
                    await _flush_outbox(store, ticks)
            except Exception:  # the store failed: a PostgreSQL restart, a full disk…
                current = None
                failures += 1
                log.exception("processing failed; retrying from the last commit")
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))
                continue
            processor = current
            if on_step is not None:
                on_step(processor, n)
            if n >= processor.batch_size // 4:
                continue  # a backlog: keep going
            if n:
                await asyncio.sleep(GATHER_S)
                continue
            due = processor.next_timer_ms()
            now = time.time_ns() // 1_000_000
            if ticks is not None and due is not None and due + TICK_AFTER_MS <= now:
                record = LogRecord(TICK_WORKSPACE, f"tick-{now}", processor.partitions[0], now,
                                   tick_record_body(now))  # fmt: skip
                await ticks.append([record])
                continue
            await asyncio.sleep(POLL_S)
    finally:
        if ticks is not None:
            await ticks.close()


async def _flush_outbox(store: SqlProfileStore, events: SqlEventLog) -> None:
    """Membership events committed with the profiles go to the log; a crash in between sends
    them again with the same message ids, which the log's deduplication drops."""
    while pending := store.outbox_pending():
        try:
            await events.append([record for _, record in pending])
        except LogError as exc:  # overloaded or restarting: the rows wait for the next turn
            log.warning("membership events wait in the outbox: %s", exc)
            return
        store.outbox_done([row_id for row_id, _ in pending])


def _process_main(store_url: str, partitions: Sequence[int], writer_address: str | None,
                  options: dict[str, Any], ready: Any, parent_pid: int) -> None:  # fmt: skip
    stop = child_stop(parent_pid)
    ready.send("")
    ready.close()
    try:
        run(store_url, partitions, writer_address, stop, options=options)
    except Exception:
        log.exception("the processor stopped")
        raise


@dataclass
class ProcessorProcess:
    """The processor in a process of its own beside the server's workers and log writer."""

    store_url: str
    partitions: Sequence[int]
    writer_address: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # Processor keyword arguments
    _process: Any = None

    def start(self) -> None:
        args = (self.store_url, tuple(self.partitions), self.writer_address, self.options)
        self._process = spawn_child(_process_main, args, "processor")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM: the processor finishes and commits its micro-batch, then exits."""
        if self._process is not None:
            stop_child(self._process, timeout)
            self._process = None


def _checkpointer(engine: Engine, every_s: float = 2.0) -> Callable[..., None]:
    """On SQLite, copy the WAL into the database now and then: the processor's connections
    leave that to the log writer, which does not run during a replay."""
    last = time.monotonic()

    def checkpoint(force: bool = False) -> None:
        nonlocal last
        if engine.dialect.name != "sqlite" or not (force or time.monotonic() - last > every_s):
            return
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        last = time.monotonic()

    return checkpoint


def replay(store_url: str, partitions: Sequence[int] = (0,),
           on_progress: Callable[[int, int], None] | None = None,
           options: dict[str, Any] | None = None) -> dict[str, int]:  # fmt: skip
    """Forget all derived state and rebuild it from the whole log; returns the counters."""
    engine = create_store_engine(store_url, derived_only=True)
    try:
        with owning(engine, partitions):
            store = SqlProfileStore(engine)
            store.clear_derived()
            with engine.connect() as conn:
                end = conn.execute(sa.select(sa.func.max(event_log.c.offset))).scalar()
            options = {"batch_size": 5_000, **(options or {}), "emit": False}
            processor = build(engine, partitions, **options)
            tune_gc()
            checkpoint = _checkpointer(engine)
            while processor.step():
                settle_gc()
                checkpoint()
                if on_progress is not None:
                    on_progress(processor.offset, int(end or 0))
            checkpoint(force=True)
            return processor.counters()
    finally:
        engine.dispose()
