"""The part every edge shares: canonical events into the log, rejected messages into quarantine.

Both go to the log writer in one call, so one commit makes the valid events durable and the
invalid ones visible in the quarantine before the client gets an answer. Events about an
object of the workspace's scene registry that name no product get it first
(``scenes/enrich.py``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from worldflow.events.model import Event, Rejected, encoder
from worldflow.log import EventLog, LogRecord, QuarantineRecord
from worldflow.metrics import Metrics
from worldflow.scenes.enrich import ObjectCache, enrich


@dataclass(slots=True)
class IngestResult:
    accepted: list[str] = field(default_factory=list)  # message ids newly in the log
    duplicates: list[str] = field(default_factory=list)  # message ids the log already had
    rejected: list[Rejected] = field(default_factory=list)

    def rejected_json(self) -> list[dict[str, object]]:
        return [
            {
                "index": r.index,
                "messageId": r.message_id,
                "code": r.code,
                "reason": r.reason,
                "errors": [p.as_dict() for p in r.problems],
            }
            for r in self.rejected
        ]


encode = encoder.encode


def partition_of(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions if partitions > 1 else 0


class Ingestor:
    def __init__(self, log: EventLog, metrics: Metrics, partitions: int = 1,
                 objects: ObjectCache | None = None) -> None:  # fmt: skip
        self.log = log
        self.metrics = metrics
        self.partitions = partitions
        # The scene registry's objects, over the log's store unless given.
        self.objects = objects if objects is not None else ObjectCache.for_log(log)

    async def ingest(
        self,
        items: Iterable[Event | Rejected],
        *,
        workspace_id: str,
        source_id: str,
        channel: str,
        received_at: datetime,
    ) -> IngestResult:
        received_ms = int(received_at.timestamp() * 1000)
        records: list[LogRecord] = []
        events: list[Event] = []
        result = IngestResult()
        partitions = self.partitions
        cache = self.objects
        known = None
        for item in items:
            if type(item) is Event:
                if cache is not None:
                    obj = item.properties.get("obj")
                    if type(obj) is dict and obj.get("product") is None:
                        if known is None:
                            known = await cache.objects(workspace_id)
                        if known:
                            enrich(item, obj, known)
                events.append(item)
                partition = partition_of(item.identity_key, partitions) if partitions > 1 else 0
                records.append(
                    LogRecord(workspace_id, item.message_id, partition, received_ms, encode(item))
                )
            else:
                assert isinstance(item, Rejected)
                result.rejected.append(item)
        quarantined = [
            QuarantineRecord(
                workspace_id,
                source_id,
                received_ms,
                channel,
                r.message_id,
                r.code,
                json.dumps([p.as_dict() for p in r.problems]),
                r.payload,
            )
            for r in result.rejected
        ]
        appended = await self.log.append(records, quarantined)
        for index, event in enumerate(events):
            (result.duplicates if index in appended.duplicates else result.accepted).append(
                event.message_id
            )
        m = self.metrics
        if result.accepted:
            m.events_accepted.labels(workspace_id, channel).inc(len(result.accepted))
        if result.duplicates:
            m.events_duplicate.labels(workspace_id, channel).inc(len(result.duplicates))
        for rejected in result.rejected:
            m.events_quarantined.labels(workspace_id, channel, rejected.code).inc()
        return result
