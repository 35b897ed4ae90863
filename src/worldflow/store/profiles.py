"""Profiles, identities and processor state on SQLite and PostgreSQL.

The processor writes through :meth:`SqlProfileStore.commit` only (one transaction per
micro-batch); the profile API reads with the other methods, from committed state.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from worldflow.engine import Commit, IdentityKey, PartitionState
from worldflow.identity.types import normalise
from worldflow.log import LogRecord
from worldflow.profiles.model import Profile, profile_decoder, profile_encoder
from worldflow.store.deliveries import insert_deliveries
from worldflow.store.schema import (
    active_definitions,
    decision_stats,
    definition_status,
    definitions,
    event_log,
    identities,
    journey_stats,
    outbox,
    processor_state,
    profile_merges,
    profiles,
    segment_members,
    segment_sizes,
    workspaces,
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


CHUNK = 500  # bound parameters per IN list: SQLite allows 32766, keep statements small
TRAIT_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SqlProfileStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._mark = mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._upsert_identity = (
            "INSERT INTO identities (workspace_id, type, value, profile_id)"
            f" VALUES ({mark}, {mark}, {mark}, {mark})"
            " ON CONFLICT (workspace_id, type, value)"
            " DO UPDATE SET profile_id = excluded.profile_id"
        )
        self._upsert_profile = (
            "INSERT INTO profiles (id, workspace_id, partition, first_seen_ms, last_seen_ms,"
            f" next_timer_ms, body) VALUES ({', '.join([mark] * 7)}) ON CONFLICT (id) DO UPDATE"
            " SET first_seen_ms = excluded.first_seen_ms, last_seen_ms = excluded.last_seen_ms,"
            " next_timer_ms = excluded.next_timer_ms, body = excluded.body"
        )

    # -- the processor's port ---------------------------------------------------------------

    def load_partitions(self, partitions: Sequence[int]) -> dict[int, PartitionState]:
        query = sa.select(processor_state).where(processor_state.c.partition.in_(partitions))
        with self.engine.connect() as conn:
            found = {
                row.partition: PartitionState(
                    row.offset, row.stream_time_ms, json.loads(row.counters)
                )
                for row in conn.execute(query)
            }
        return {p: found.get(p, PartitionState()) for p in partitions}

    def lookup_identities(self, keys: Sequence[IdentityKey]) -> dict[IdentityKey, str]:
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for ws, type_name, value in keys:
            groups[(ws, type_name)].append(value)
        found: dict[IdentityKey, str] = {}
        mark = self._mark
        with self.engine.connect() as conn:
            for (ws, type_name), values in groups.items():
                for chunk in _chunks(values):
                    marks = ", ".join([mark] * len(chunk))
                    sql = ("SELECT value, profile_id FROM identities WHERE workspace_id = "
                           f"{mark} AND type = {mark} AND value IN ({marks})")  # fmt: skip
                    for value, profile_id in conn.exec_driver_sql(sql, (ws, type_name, *chunk)):
                        found[(ws, type_name, value)] = profile_id
        return found

    def load_profiles(self, ids: Sequence[str]) -> dict[str, Profile | str]:
        found: dict[str, Profile | str] = {}
        mark = self._mark
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids)):
                sql = ("SELECT id, merged_into, body FROM profiles WHERE id IN "
                       f"({', '.join([mark] * len(chunk))})")  # fmt: skip
                for profile_id, merged_into, body in conn.exec_driver_sql(sql, tuple(chunk)):
                    found[profile_id] = merged_into or profile_decoder.decode(body)
        return found

    def timers(self, partitions: Sequence[int]) -> list[tuple[int, str]]:
        c = profiles.c
        query = sa.select(c.next_timer_ms, c.id).where(
            c.partition.in_(partitions), c.next_timer_ms.is_not(None), c.merged_into.is_(None)
        )
        with self.engine.connect() as conn:
            return [(due, profile_id) for due, profile_id in conn.execute(query)]

    def workspace_settings(self, workspace_id: str) -> dict[str, Any]:
        query = sa.select(workspaces.c.settings).where(workspaces.c.id == workspace_id)
        with self.engine.connect() as conn:
            raw = conn.execute(query).scalar()
        settings = json.loads(raw) if raw else {}
        return settings if isinstance(settings, dict) else {}

    def active_definitions(
        self, workspace_id: str, kinds: tuple[str, ...] = ()
    ) -> list[tuple[int, dict[str, Any]]]:
        """(version, document) of the workspace's active definitions (of ``kinds`` only, when
        given)."""
        a, d = active_definitions.c, definitions.c
        query = sa.select(a.version, d.document).join(definitions, sa.and_(
            a.workspace_id == d.workspace_id, a.kind == d.kind, a.key == d.key,
            a.version == d.version)).where(a.workspace_id == workspace_id)  # fmt: skip
        if kinds:
            query = query.where(a.kind.in_(kinds))
        with self.engine.connect() as conn:
            return [(version, json.loads(document)) for version, document in conn.execute(query)]

    def definition(self, workspace_id: str, kind: str, key: str,
                   version: int) -> dict[str, Any] | None:  # fmt: skip
        d = definitions.c
        query = sa.select(d.document).where(d.workspace_id == workspace_id, d.kind == kind,
                                            d.key == key, d.version == version)  # fmt: skip
        with self.engine.connect() as conn:
            document = conn.execute(query).scalar()
        return None if document is None else dict(json.loads(document))

    def profile_ids(self, workspace_id: str, partitions: Sequence[int], after: str,
                    limit: int) -> list[str]:  # fmt: skip
        c = profiles.c
        query = (
            sa.select(c.id)
            .where(c.workspace_id == workspace_id, c.partition.in_(partitions),
                   c.merged_into.is_(None), c.id > after)
            .order_by(c.id)
            .limit(limit)
        )  # fmt: skip
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def workspace_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(workspaces.c.id).order_by(workspaces.c.id))
                        .scalars())  # fmt: skip

    def segment_member_ids(self, workspace_id: str, key: str, partitions: Sequence[int],
                           after: str, limit: int) -> list[str]:  # fmt: skip
        """The members of a segment whose profiles are on ``partitions``, in id order."""
        m, c = segment_members.c, profiles.c
        query = (
            sa.select(m.profile_id)
            .join(profiles, c.id == m.profile_id)
            .where(m.workspace_id == workspace_id, m.key == key, m.profile_id > after,
                   c.partition.in_(partitions), c.merged_into.is_(None))
            .order_by(m.profile_id)
            .limit(limit)
        )  # fmt: skip
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def count_profiles(self, workspace_id: str, partitions: Sequence[int]) -> int:
        c = profiles.c
        query = sa.select(sa.func.count()).where(
            c.workspace_id == workspace_id, c.partition.in_(partitions), c.merged_into.is_(None)
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def definition_progress(self, workspace_id: str, kind: str, key: str, version: int,
                            state: str, done: int, total: int) -> None:  # fmt: skip
        c = definition_status.c
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(definition_status)
                .where(c.workspace_id == workspace_id, c.kind == kind, c.key == key,
                       c.version == version)
                .values(state=state, done=done, total=total, updated_at_ms=_now_ms())
            )  # fmt: skip

    def commit(self, commit: Commit) -> None:
        with self.engine.begin() as conn:
            self._write_profiles(conn, commit)
            if commit.transitions:
                self._write_memberships(conn, commit)
            if commit.effects.stats:
                self._write_journey_stats(conn, commit.effects.stats)
            if commit.effects.decisions:
                self._write_decision_stats(conn, commit.effects.decisions)
            if commit.effects.deliveries and commit.deliver:
                insert_deliveries(conn, commit.effects.deliveries)  # an id decided twice: once
            if commit.outbox:
                conn.execute(sa.insert(outbox), [
                    {"workspace_id": r.workspace_id, "message_id": r.message_id,
                     "partition": r.partition, "received_at_ms": r.received_at_ms, "body": r.body}
                    for r in commit.outbox
                ])  # fmt: skip
            for ws, kind, key, version in commit.activated:
                stmt = self._insert(active_definitions).values(
                    workspace_id=ws, kind=kind, key=key, version=version
                )
                conn.execute(stmt.on_conflict_do_update(
                    index_elements=["workspace_id", "kind", "key"],
                    set_={"version": version}))  # fmt: skip
                s = definition_status.c
                conn.execute(sa.update(definition_status).where(
                    s.workspace_id == ws, s.kind == kind, s.key == key, s.version == version,
                ).values(state="active", done=s.total, updated_at_ms=_now_ms()))  # fmt: skip
            if commit.identities:
                conn.exec_driver_sql(
                    self._upsert_identity, [(*key, pid) for key, pid in commit.identities.items()]
                )
            if commit.merges:
                conn.execute(sa.insert(profile_merges), [
                    {"workspace_id": m.workspace_id, "survivor_id": m.survivor_id,
                     "merged_id": m.merged_id, "offset": m.offset, "at_ms": m.at_ms,
                     "identity": m.identity[:260]}
                    for m in commit.merges
                ])  # fmt: skip
            stmt = self._insert(processor_state)
            stmt = stmt.on_conflict_do_update(
                index_elements=["partition"],
                set_={"offset": stmt.excluded.offset,
                      "stream_time_ms": stmt.excluded.stream_time_ms,
                      "counters": stmt.excluded.counters},
            )  # fmt: skip
            conn.execute(stmt, [
                {"partition": p, "offset": s.offset, "stream_time_ms": s.stream_time_ms,
                 "counters": json.dumps(s.counters, sort_keys=True)}
                for p, s in commit.partitions.items()
            ])  # fmt: skip

    def _write_memberships(self, conn: Connection, commit: Commit) -> None:
        # The last word per membership, and whether it was a member before (its first
        # transition says): one that ends as it began is left as it is.
        final: dict[tuple[str, str, str], int | None] = {}
        before: dict[tuple[str, str, str], bool] = {}
        flows: dict[tuple[str, str, int], list[int]] = defaultdict(lambda: [0, 0])
        for t in commit.transitions:
            key = (t.workspace_id, t.key, t.profile_id)
            final[key] = t.at if t.entered else None
            before.setdefault(key, not t.entered)
            flows[(t.workspace_id, t.key, t.at // 60_000)][0 if t.entered else 1] += 1
        for key, was in before.items():
            if not was and final[key] is None:
                del final[key]  # entered and left within the commit
        mark = self._mark
        gone = [key for key, since in final.items() if since is None]
        if gone:
            conn.exec_driver_sql(
                "DELETE FROM segment_members WHERE workspace_id = "
                f"{mark} AND key = {mark} AND profile_id = {mark}", gone)  # fmt: skip
        joined = [(*key, since) for key, since in final.items() if since is not None]
        if joined:
            conn.exec_driver_sql(
                "INSERT INTO segment_members (workspace_id, key, profile_id, since_ms) VALUES "
                f"({mark}, {mark}, {mark}, {mark}) ON CONFLICT (workspace_id, key, profile_id) "
                "DO UPDATE SET since_ms = excluded.since_ms", joined)  # fmt: skip
        conn.exec_driver_sql(
            "INSERT INTO segment_sizes (workspace_id, key, minute, entered, exited) VALUES "
            f"({mark}, {mark}, {mark}, {mark}, {mark}) ON CONFLICT (workspace_id, key, minute) "
            "DO UPDATE SET entered = segment_sizes.entered + excluded.entered,"
            " exited = segment_sizes.exited + excluded.exited",
            [(*key, entered, exited) for key, (entered, exited) in flows.items()])  # fmt: skip

    def _write_journey_stats(self, conn: Connection, stats: dict[Any, int]) -> None:
        mark = self._mark
        conn.exec_driver_sql(
            "INSERT INTO journey_stats (workspace_id, journey, version, metric, count) VALUES "
            f"({mark}, {mark}, {mark}, {mark}, {mark}) ON CONFLICT "
            "(workspace_id, journey, version, metric) DO UPDATE SET "
            "count = journey_stats.count + excluded.count",
            [(*key, n) for key, n in stats.items() if n])  # fmt: skip

    def _write_decision_stats(self, conn: Connection, stats: dict[Any, list[int]]) -> None:
        mark = self._mark
        conn.exec_driver_sql(
            "INSERT INTO decision_stats (workspace_id, placement, arm, offer, served, "
            f"impressions, interactions) VALUES ({mark}, {mark}, {mark}, {mark}, {mark}, "
            f"{mark}, {mark}) ON CONFLICT (workspace_id, placement, arm, offer) DO UPDATE SET "
            "served = decision_stats.served + excluded.served, "
            "impressions = decision_stats.impressions + excluded.impressions, "
            "interactions = decision_stats.interactions + excluded.interactions",
            [(*key, *counts) for key, counts in stats.items()])  # fmt: skip

    def outbox_pending(self, limit: int = 5000) -> list[tuple[int, LogRecord]]:
        c = outbox.c
        query = sa.select(outbox).order_by(c.id).limit(limit)
        with self.engine.connect() as conn:
            return [
                (row.id, LogRecord(row.workspace_id, row.message_id, row.partition,
                                   row.received_at_ms, bytes(row.body)))
                for row in conn.execute(query)
            ]  # fmt: skip

    def outbox_done(self, ids: Sequence[int]) -> None:
        with self.engine.begin() as conn:
            for chunk in _chunks(list(ids)):
                conn.execute(sa.delete(outbox).where(outbox.c.id.in_(chunk)))

    def _write_profiles(self, conn: Connection, commit: Commit) -> None:
        if commit.profiles:
            # The hottest statement of the processor (one row per changed profile per batch):
            # sent as driver SQL, without the expression layer's per-row work.
            encode = profile_encoder.encode
            partition_of = commit.partition_of_profile
            conn.exec_driver_sql(self._upsert_profile, [
                (p.id, p.workspace_id, partition_of.get(p.id, 0), p.first_seen, p.last_seen,
                 p.next_timer(), encode(p).decode())
                for p in commit.profiles
            ])  # fmt: skip
        if commit.tombstones:
            stmt = self._insert(profiles)
            stmt = stmt.on_conflict_do_update(
                index_elements=["id"],
                set_={"merged_into": stmt.excluded.merged_into, "body": "{}",
                      "next_timer_ms": None, "first_seen_ms": stmt.excluded.first_seen_ms,
                      "last_seen_ms": stmt.excluded.last_seen_ms},
            )  # fmt: skip
            conn.execute(stmt, [
                {"id": merged.id, "workspace_id": merged.workspace_id, "merged_into": survivor,
                 "first_seen_ms": merged.first_seen, "last_seen_ms": merged.last_seen,
                 "next_timer_ms": None, "body": "{}"}
                for merged, survivor in commit.tombstones
            ])  # fmt: skip

    # -- reads for the API -----------------------------------------------------------------

    def profile(self, workspace_id: str, profile_id: str) -> Profile | None:
        """The live profile for an id, following merges."""
        c = profiles.c
        with self.engine.connect() as conn:
            for _ in range(16):
                row = conn.execute(
                    sa.select(c.merged_into, c.body).where(
                        c.id == profile_id, c.workspace_id == workspace_id
                    )
                ).first()
                if row is None:
                    return None
                if row.merged_into is None:
                    return profile_decoder.decode(row.body)
                profile_id = row.merged_into
        return None

    def profile_by_identity(self, workspace_id: str, type_name: str, value: str) -> Profile | None:
        c = identities.c
        query = sa.select(c.profile_id).where(
            c.workspace_id == workspace_id, c.type == type_name,
            c.value == normalise(type_name, value),
        )  # fmt: skip
        with self.engine.connect() as conn:
            profile_id = conn.execute(query).scalar()
        return None if profile_id is None else self.profile(workspace_id, profile_id)

    def search(self, workspace_id: str, trait: str, value: str, limit: int = 50) -> list[Profile]:
        """Profiles whose trait equals value (compared as text), most recently seen first."""
        if not TRAIT_KEY.fullmatch(trait):
            raise ValueError(f"trait: {trait!r} is not a trait name (letters, digits, _ . -)")
        c = profiles.c
        if self.engine.dialect.name == "postgresql":
            field = sa.cast(c.body, postgresql.JSONB)["traits"][trait].astext
        else:
            field = sa.cast(sa.func.json_extract(c.body, f'$.traits."{trait}"'), sa.Text)
        query = (
            sa.select(c.body)
            .where(c.workspace_id == workspace_id, c.merged_into.is_(None), field == value)
            .order_by(c.last_seen_ms.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [profile_decoder.decode(body) for (body,) in conn.execute(query)]

    def merges(self, workspace_id: str, survivor_id: str) -> list[dict[str, Any]]:
        c = profile_merges.c
        query = (
            sa.select(c.merged_id, c.offset, c.at_ms, c.identity)
            .where(c.workspace_id == workspace_id, c.survivor_id == survivor_id)
            .order_by(c.id)
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def counts(self, workspace_id: str) -> dict[str, int]:
        c = profiles.c
        with self.engine.connect() as conn:
            live = conn.execute(
                sa.select(sa.func.count()).where(
                    c.workspace_id == workspace_id, c.merged_into.is_(None)
                )
            ).scalar()
            merged = conn.execute(
                sa.select(sa.func.count()).where(
                    c.workspace_id == workspace_id, c.merged_into.is_not(None)
                )
            ).scalar()
        return {"profiles": int(live or 0), "merged": int(merged or 0)}

    def processor_states(self) -> dict[int, PartitionState]:
        with self.engine.connect() as conn:
            return {
                row.partition: PartitionState(
                    row.offset, row.stream_time_ms, json.loads(row.counters)
                )
                for row in conn.execute(sa.select(processor_state))
            }

    def log_end(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(event_log.c.offset))).scalar() or 0)

    def clear_derived(self) -> None:
        """Forget every derived row (replay rebuilds them from the log)."""
        with self.engine.begin() as conn:
            for table in (processor_state, profile_merges, identities, profiles,
                          active_definitions, segment_members, segment_sizes, outbox,
                          journey_stats, decision_stats):  # fmt: skip
                conn.execute(sa.delete(table))
