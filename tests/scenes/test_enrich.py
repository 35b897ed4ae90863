"""Enrichment at ingestion: events naming only a registered object get its product, through a
per-workspace cache of the registry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from worldflow.collect.ingest import Ingestor
from worldflow.events.catalogue import Catalogue
from worldflow.events.segment import SegmentTranslator
from worldflow.log import AppendResult, LogRecord, QuarantineRecord
from worldflow.metrics import Metrics
from worldflow.scenes.enrich import ObjectCache
from worldflow.store.scenes import Known

RUNNER: Known = ({"sku": "SNK-RUN", "category": "shoes"}, "Showroom/Sneakers/Runner")


class Registry:
    """A store stand-in that counts its reads."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Known]] = {"w": {"o_runner": RUNNER,
                                                           "lobby": (None, "Lobby")}}  # fmt: skip
        self.version = 1
        self.stamps = 0
        self.reads = 0
        self.fail = False

    def stamp(self, workspace_id: str) -> tuple[int, int, int]:
        self.stamps += 1
        if self.fail:
            raise OSError("the store is away")
        return (1 if workspace_id in self.objects else 0, self.version, 0)

    def known(self, workspace_id: str) -> dict[str, Known]:
        self.reads += 1
        return dict(self.objects.get(workspace_id, {}))


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


class CapturingLog:
    def __init__(self) -> None:
        self.records: list[LogRecord] = []

    async def append(self, records: Sequence[LogRecord],
                     quarantined: Sequence[QuarantineRecord] = ()) -> AppendResult:  # fmt: skip
        self.records.extend(records)
        return AppendResult(frozenset())


def test_the_cache_reads_the_registry_again_only_when_it_changed() -> None:
    registry, clock = Registry(), Clock()
    cache = ObjectCache(registry, ttl_s=5, clock=clock)

    async def scenario() -> None:
        assert (await cache.objects("w"))["o_runner"] == RUNNER
        await cache.objects("w")
        assert (registry.stamps, registry.reads) == (1, 1)  # within the TTL: from memory
        clock.now += 6
        await cache.objects("w")
        assert (registry.stamps, registry.reads) == (2, 1)  # checked, unchanged: not read
        registry.version += 1
        registry.objects["w"]["o_new"] = (None, "New")
        assert "o_new" not in await cache.objects("w")  # another process: seen after the TTL
        clock.now += 6
        assert "o_new" in await cache.objects("w")
        assert registry.reads == 2
        cache.invalidate("w")  # this process registered a scene: read at once
        await cache.objects("w")
        assert registry.stamps == 4
        assert await cache.objects("nobody") == {}
        assert registry.reads == 2  # a workspace without scenes: the stamp tells
        # Concurrent lookups share one read.
        clock.now += 6
        await asyncio.gather(*(cache.objects("w") for _ in range(20)))
        assert registry.stamps == 6

    asyncio.run(scenario())


def test_a_store_that_fails_leaves_events_unenriched_and_is_tried_again() -> None:
    registry, clock = Registry(), Clock()
    registry.fail = True
    cache = ObjectCache(registry, ttl_s=5, clock=clock)

    async def scenario() -> None:
        assert await cache.objects("w") == {}
        clock.now += 0.5
        await cache.objects("w")
        assert registry.stamps == 1
        registry.fail = False
        clock.now += 1
        assert "o_runner" in await cache.objects("w")

    asyncio.run(scenario())


def _ingest(ingestor: Ingestor, messages: list[dict[str, Any]],
            workspace: str = "w") -> list[dict[str, Any]]:  # fmt: skip
    log = ingestor.log
    assert isinstance(log, CapturingLog)
    log.records.clear()
    now = datetime.now(UTC)
    translator = SegmentTranslator(Catalogue.default(), 32 * 1024, 86400)
    raws = [json.dumps({"type": "track", "userId": "u1", "messageId": f"m{i}", **m}).encode()
            for i, m in enumerate(messages)]  # fmt: skip
    items = translator.translate(raws, workspace_id=workspace, source_id="s", received_at=now,
                                 sent_at=None, batch_context=None)  # fmt: skip
    asyncio.run(ingestor.ingest(items, workspace_id=workspace, source_id="s", channel="segment",
                                received_at=now))  # fmt: skip
    return [json.loads(r.body)["properties"] for r in log.records]


@pytest.fixture
def ingestor() -> Ingestor:
    return Ingestor(CapturingLog(), Metrics(), objects=ObjectCache(Registry()))  # type: ignore[arg-type]


def test_an_event_with_only_an_object_id_gets_the_product(ingestor: Ingestor) -> None:
    out = _ingest(ingestor, [
        {"event": "object.viewed", "properties": {"obj": {"object_id": "o_runner"}, "view_ms": 9}},
        {"event": "object.viewed", "properties": {"obj": {"object_id": "o_runner",
                                                          "node_path": "As/Sent"}}},
        {"event": "object.viewed", "properties": {"obj": {"object_id": "o_runner",
                                                          "product": {"sku": "MINE"}}}},
        {"event": "object.viewed", "properties": {"obj": {"object_id": "o_unknown"}}},
        {"event": "object.viewed", "properties": {"obj": {"object_id": "lobby"}}},
        {"event": "zone.entered", "properties": {"zone_id": "lobby"}},
        {"event": "my custom", "properties": {"obj": {"object_id": ["not", "a", "string"]}}},
        {"event": "my custom", "properties": {"obj": "o_runner"}},
    ])  # fmt: skip
    assert out[0] == {"obj": {"object_id": "o_runner", "node_path": "Showroom/Sneakers/Runner",
                              "product": {"sku": "SNK-RUN", "category": "shoes"}},
                      "view_ms": 9}  # fmt: skip
    assert out[1]["obj"] == {"object_id": "o_runner", "node_path": "As/Sent",
                             "product": {"sku": "SNK-RUN", "category": "shoes"}}  # fmt: skip
    assert out[2]["obj"] == {"object_id": "o_runner", "product": {"sku": "MINE"}}
    assert out[3]["obj"] == {"object_id": "o_unknown"}
    assert out[4]["obj"] == {"object_id": "lobby", "node_path": "Lobby"}  # no product to add
    assert out[5] == {"zone_id": "lobby"}
    assert out[6:] == [{"obj": {"object_id": ["not", "a", "string"]}}, {"obj": "o_runner"}]
    # Another workspace's registry is its own.
    assert _ingest(ingestor, [{"event": "object.viewed",
                               "properties": {"obj": {"object_id": "o_runner"}}}],
                   workspace="v") == [{"obj": {"object_id": "o_runner"}}]  # fmt: skip


def test_a_log_without_a_store_means_no_enrichment() -> None:
    assert Ingestor(CapturingLog(), Metrics()).objects is None  # type: ignore[arg-type]
