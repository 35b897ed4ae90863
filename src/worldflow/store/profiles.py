"""Profiles, identities and processor state on SQLite and PostgreSQL.

The processor writes through :meth:`SqlProfileStore.commit` only (one transaction per
micro-batch); the profile API reads with the other methods, from committed state.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from worldflow.engine import Commit, IdentityKey, PartitionState
from worldflow.identity.types import normalise
from worldflow.profiles.model import Profile, profile_decoder, profile_encoder
from worldflow.store.schema import (
    event_log,
    identities,
    processor_state,
    profile_merges,
    profiles,
    workspaces,
)

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

    def commit(self, commit: Commit) -> None:
        with self.engine.begin() as conn:
            self._write_profiles(conn, commit)
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
            for table in (processor_state, profile_merges, identities, profiles):
                conn.execute(sa.delete(table))
