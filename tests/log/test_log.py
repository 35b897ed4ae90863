"""The event log on both engines: durable appends, offsets, group commit, deduplication."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from worldflow.log import LogOverloaded, LogRecord, QuarantineRecord
from worldflow.log.sql import SqlEventLog
from worldflow.log.writer import DedupeWindow, WriterProcess
from worldflow.store.sql import SqlStore


def records(prefix: str, n: int, workspace: str = "default") -> list[LogRecord]:
    now = int(time.time() * 1000)
    return [LogRecord(workspace, f"{prefix}-{i}", 0, now, b'{"i":%d}' % i) for i in range(n)]


class Opened:
    """A migrated store, a running writer process and a log client on it."""

    def __init__(self, url: str, **kw: object) -> None:
        self.store = SqlStore(url)
        self.store.migrate()
        self.writer = WriterProcess(url, 20_000, 24 * 3600 * 1000, 1_000_000)
        self.writer.start()
        self.log = SqlEventLog(self.store.engine, self.writer.address, **kw)  # type: ignore[arg-type]

    def close(self) -> None:
        self.writer.stop()
        self.store.close()


def open_log(url: str, **kw: object) -> tuple[Opened, SqlEventLog]:
    opened = Opened(url, **kw)
    return opened, opened.log


def test_appends_are_read_back_in_order_with_growing_offsets(store_url: str) -> None:
    store, log = open_log(store_url)

    async def run() -> None:
        await log.start()
        for k in range(3):
            result = await log.append(records(f"b{k}", 50))
            assert result.duplicates == frozenset()
        await log.close()

    asyncio.run(run())
    entries = log.read(0, 1000)
    assert [e.message_id for e in entries] == [f"b{k}-{i}" for k in range(3) for i in range(50)]
    offsets = [e.offset for e in entries]
    assert offsets == sorted(offsets) and len(set(offsets)) == 150
    assert log.end_offset() == offsets[-1]
    assert [e.message_id for e in log.read(offsets[99], 10)] == [f"b2-{i}" for i in range(10)]
    store.close()


def test_duplicates_within_and_across_requests_and_across_restarts(store_url: str) -> None:
    store, log = open_log(store_url)

    async def first() -> None:
        await log.start()
        result = await log.append([*records("a", 3), *records("a", 2)])
        assert result.duplicates == {3, 4}
        result = await log.append(records("a", 4))
        assert result.duplicates == {0, 1, 2}
        # Same message id in another workspace is another event.
        result = await log.append(records("a", 1, workspace="other"))
        assert result.duplicates == frozenset()
        await log.close()

    asyncio.run(first())
    store.writer.stop()
    store.writer = WriterProcess(store_url, 20_000, 24 * 3600 * 1000, 1_000_000)
    store.writer.start()
    restarted = SqlEventLog(store.store.engine, store.writer.address)

    async def second() -> None:
        await restarted.start()  # the window is rebuilt from the log
        result = await restarted.append(records("a", 6))
        assert result.duplicates == {0, 1, 2, 3}
        await restarted.close()

    asyncio.run(second())
    ids = [(e.workspace_id, e.message_id) for e in restarted.read(0, 100)]
    assert len(ids) == len(set(ids)) == 7
    store.close()


def test_concurrent_requests_share_commits_and_quarantine_is_written(store_url: str) -> None:
    commits: list[int] = []
    store, log = open_log(store_url, on_commit=lambda n, s: commits.append(n))

    async def run() -> None:
        await log.start()
        bad = QuarantineRecord("default", "src", 1, "segment", None, "invalid_json",
                               json.dumps([{"field": "body", "message": "x"}]), b"{")  # fmt: skip
        results = await asyncio.gather(
            *(log.append(records(f"c{k}", 20), [bad] if k == 0 else []) for k in range(50))
        )
        assert all(r.duplicates == frozenset() for r in results)
        await log.close()

    asyncio.run(run())
    assert sum(commits) == 50 * 20 + 1
    assert len(commits) < 50  # group commit: many requests per transaction
    assert len(log.read(0, 5000)) == 1000
    assert store.store.count_quarantine("default") == 1
    assert store.store.list_quarantine("default")[0]["code"] == "invalid_json"
    store.close()


def test_overload_is_refused_before_anything_is_queued(tmp_path: object) -> None:
    store, log = open_log(f"sqlite:///{tmp_path}/o.db", max_pending_events=100)

    async def run() -> None:
        await log.start()
        first = asyncio.ensure_future(log.append(records("x", 90)))
        await asyncio.sleep(0)
        with pytest.raises(LogOverloaded) as info:
            await log.append(records("y", 20))
        assert info.value.retry_after_s >= 1
        await first
        await log.close()

    asyncio.run(run())
    assert {e.message_id[0] for e in log.read(0, 1000)} == {"x"}
    store.close()


def test_dedupe_window_evicts_by_age_and_by_size() -> None:
    window = DedupeWindow(window_ms=10 * 60_000, max_keys=5)
    for i in range(3):
        window.add(i, 0)
    for i in range(3, 6):
        window.add(i, 5 * 60_000)
    window.evict(6 * 60_000)  # over the size bound: the oldest minute goes
    assert len(window) == 3 and 0 not in window and 5 in window
    window.evict(20 * 60_000)  # past the window
    assert len(window) == 0
