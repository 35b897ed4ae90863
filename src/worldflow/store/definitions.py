"""Segment and score definitions, their status, and what the processor derived from them.

The API writes definitions here (every version kept) and tells the processor through the log
(``definition_record``); the processor reports progress in ``definition_status`` and keeps
memberships and sizes, which the API reads.
"""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worldflow.engine import TICK_WORKSPACE
from worldflow.log import LogRecord
from worldflow.store.schema import (
    active_definitions,
    definition_status,
    definitions,
    deliveries,
    journey_stats,
    segment_members,
    segment_sizes,
)


def definition_record(workspace_id: str, kind: str, key: str, version: int, partition: int,
                      now_ms: int) -> LogRecord:  # fmt: skip
    """The log record that activates a definition version at its place in the log."""
    body = {"definition": {"workspace_id": workspace_id, "kind": kind, "key": key,
                           "version": version}}  # fmt: skip
    return LogRecord(TICK_WORKSPACE, f"def-{workspace_id}-{kind}-{key}-{version}-{partition}",
                     partition, now_ms, json.dumps(body).encode())  # fmt: skip


def _canonical(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class SqlDefinitionStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def put(self, workspace_id: str, document: dict[str, Any]) -> tuple[int, bool]:
        """Store a validated document as the next version, unless it equals the latest;
        returns (version, whether it is new)."""
        kind, key = document["kind"], document["key"]
        d, s = definitions.c, definition_status.c
        text = _canonical(document)
        now = time.time_ns() // 1_000_000
        with self.engine.begin() as conn:
            latest = conn.execute(
                sa.select(d.version, d.document)
                .where(d.workspace_id == workspace_id, d.kind == kind, d.key == key)
                .order_by(d.version.desc())
                .limit(1)
            ).first()
            if latest is not None and latest.document == text:
                return latest.version, False
            version = 1 if latest is None else latest.version + 1
            conn.execute(sa.insert(definitions).values(
                workspace_id=workspace_id, kind=kind, key=key, version=version, document=text,
                created_at_ms=now))  # fmt: skip
            status = {"version": version, "state": "pending", "done": 0, "total": 0,
                      "updated_at_ms": now}  # fmt: skip
            updated = conn.execute(
                sa.update(definition_status)
                .where(s.workspace_id == workspace_id, s.kind == kind, s.key == key)
                .values(**status)
            ).rowcount
            if not updated:
                conn.execute(sa.insert(definition_status).values(
                    workspace_id=workspace_id, kind=kind, key=key, **status))  # fmt: skip
        return version, True

    def latest(self, workspace_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        """The latest version of every definition (of one kind), with status."""
        d, s = definitions.c, definition_status.c
        query = (
            sa.select(d.kind, d.key, d.version, d.document, d.created_at_ms, s.state, s.done,
                      s.total, s.updated_at_ms)
            .join(definition_status, sa.and_(
                d.workspace_id == s.workspace_id, d.kind == s.kind, d.key == s.key,
                d.version == s.version))
            .where(d.workspace_id == workspace_id)
            .order_by(d.kind, d.key)
        )  # fmt: skip
        if kind is not None:
            query = query.where(d.kind == kind)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [{**row._mapping, "document": json.loads(row.document)} for row in rows]

    def get(self, workspace_id: str, kind: str, key: str) -> dict[str, Any] | None:
        found = [r for r in self.latest(workspace_id, kind) if r["key"] == key]
        if not found:
            return None
        a, d = active_definitions.c, definitions.c
        with self.engine.connect() as conn:
            active = conn.execute(sa.select(a.version).where(
                a.workspace_id == workspace_id, a.kind == kind, a.key == key)).scalar()  # fmt: skip
            versions = conn.execute(
                sa.select(d.version, d.created_at_ms)
                .where(d.workspace_id == workspace_id, d.kind == kind, d.key == key)
                .order_by(d.version)
            ).all()
        return {**found[0], "active_version": active,
                "versions": [dict(v._mapping) for v in versions]}  # fmt: skip

    def documents(self, workspace_id: str) -> list[tuple[int, dict[str, Any]]]:
        """(version, document) of the latest version of every definition."""
        return [(r["version"], r["document"]) for r in self.latest(workspace_id)]

    def journey_stats(self, workspace_id: str, key: str) -> list[dict[str, Any]]:
        """Per version, the journey's counters grouped (docs/JOURNEYS.md, "Stats"), with the
        outcomes of its deliveries so far by channel."""
        c = journey_stats.c
        query = (sa.select(c.version, c.metric, c.count)
                 .where(c.workspace_id == workspace_id, c.journey == key)
                 .order_by(c.version, c.metric))  # fmt: skip
        d = deliveries.c
        sent = (sa.select(d.channel, d.state, sa.func.count())
                .where(d.workspace_id == workspace_id,
                       d.payload.like(f'%"journey":"{key}",%'))
                .group_by(d.channel, d.state))  # fmt: skip
        versions: dict[int, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for version, metric, count in conn.execute(query):
                found = versions.setdefault(version, {"version": version, "at": {},
                                                      "reached": {}, "branches": {},
                                                      "actions": {}, "ends": {}})  # fmt: skip
                head, _, rest = metric.partition(":")
                if head in ("at", "reached", "actions"):
                    if count:
                        found[head][rest] = count
                elif head in ("branch", "split", "event", "timeout"):
                    step, _, arm = rest.partition(":")
                    found["branches"].setdefault(step, {})[arm or head] = count
                elif head in ("capped", "quiet"):  # per channel; per step
                    found.setdefault(head, {})[rest] = count
                elif head == "entered":
                    found["entered"] = count
                else:  # how runs ended: completed, converted, exited, holdout…
                    found["ends"][metric] = count
            outcomes: dict[str, dict[str, int]] = {}
            for channel, state, count in conn.execute(sent):
                outcomes.setdefault(channel, {})[state] = int(count)
        return [{**v, "entered": v.get("entered", 0),
                 "converted": v["ends"].get("converted", 0), "deliveries": outcomes}
                for v in versions.values()]  # fmt: skip

    def size(self, workspace_id: str, key: str) -> int:
        c = segment_members.c
        query = sa.select(sa.func.count()).where(c.workspace_id == workspace_id, c.key == key)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def sizes(self, workspace_id: str) -> dict[str, int]:
        c = segment_members.c
        query = (sa.select(c.key, sa.func.count()).where(c.workspace_id == workspace_id)
                 .group_by(c.key))  # fmt: skip
        with self.engine.connect() as conn:
            return {key: int(n) for key, n in conn.execute(query)}

    def history(self, workspace_id: str, key: str, limit: int = 1440) -> list[dict[str, int]]:
        """The size at the end of each minute it changed in (the latest ``limit`` minutes)."""
        c = segment_sizes.c
        query = (sa.select(c.minute, c.entered, c.exited)
                 .where(c.workspace_id == workspace_id, c.key == key)
                 .order_by(c.minute))  # fmt: skip
        size, points = 0, []
        with self.engine.connect() as conn:
            for minute, entered, exited in conn.execute(query):
                size += entered - exited
                points.append({"minute": minute, "size": size, "entered": entered,
                               "exited": exited})  # fmt: skip
        return points[-limit:]

    def members(self, workspace_id: str, key: str, after: str = "",
                limit: int = 100) -> list[tuple[str, int]]:  # fmt: skip
        c = segment_members.c
        query = (sa.select(c.profile_id, c.since_ms)
                 .where(c.workspace_id == workspace_id, c.key == key, c.profile_id > after)
                 .order_by(c.profile_id).limit(limit))  # fmt: skip
        with self.engine.connect() as conn:
            return [(pid, since) for pid, since in conn.execute(query)]
