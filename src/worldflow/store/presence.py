"""The push channel's state in the store: who is connected where (``presence``), and the
in-world deliveries (``deliveries`` rows of channel ``inworld``) as they go from pending to
sent, acknowledged, waiting for the person's next visit, or expired.

States of an in-world delivery: ``pending`` (to send to a connection of its person, now),
``sent`` (sent, waiting for the acknowledgement until ``next_attempt_ms``, then pending
again), ``waiting`` (its person is in no world: waits for their next connection, until it
expires at ``next_attempt_ms``), ``delivered`` (acknowledged) and ``dead`` (expired).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worldflow.identity.types import normalise
from worldflow.store.schema import deliveries, identities, presence, profiles

INWORLD: Final = "inworld"
PENDING, SENT, WAITING, DELIVERED, DEAD = "pending", "sent", "waiting", "delivered", "dead"
STALE_MS: Final = 60_000  # a presence row not refreshed for this long is a worker gone


@dataclass(frozen=True, slots=True)
class InWorld:
    """A due in-world delivery."""

    id: str
    workspace_id: str
    world: str  # the world it is for ("*": any)
    profile_id: str | None
    state: str
    attempts: int
    created_ms: int
    next_attempt_ms: int
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Present:
    connection_id: str
    workspace_id: str
    world: str
    profile_id: str | None
    anonymous_id: str | None
    user_id: str | None
    zone: str | None


class PresenceStore:
    def __init__(self, engine: Engine, worker: str) -> None:
        self.engine = engine
        self.worker = worker

    # -- presence ----------------------------------------------------------------------

    def upsert(self, people: Sequence[Present], now_ms: int) -> None:
        if not people:
            return
        ids = [p.connection_id for p in people]
        with self.engine.begin() as conn:
            conn.execute(sa.delete(presence).where(presence.c.connection_id.in_(ids)))
            conn.execute(sa.insert(presence), [
                {"connection_id": p.connection_id, "workspace_id": p.workspace_id,
                 "world": p.world, "worker": self.worker, "profile_id": p.profile_id,
                 "anonymous_id": p.anonymous_id, "user_id": p.user_id, "zone": p.zone,
                 "connected_ms": now_ms, "seen_ms": now_ms} for p in people])  # fmt: skip

    def remove(self, connection_ids: Iterable[str]) -> None:
        ids = list(connection_ids)
        if ids:
            with self.engine.begin() as conn:
                conn.execute(sa.delete(presence).where(presence.c.connection_id.in_(ids)))

    def refresh(self, now_ms: int) -> None:
        """This worker's rows are fresh; rows of workers gone stale are deleted."""
        c = presence.c
        with self.engine.begin() as conn:
            conn.execute(sa.update(presence).where(c.worker == self.worker)
                         .values(seen_ms=now_ms))  # fmt: skip
            conn.execute(sa.delete(presence).where(c.seen_ms < now_ms - 5 * STALE_MS))

    def forget_worker(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(presence).where(presence.c.worker == self.worker))

    def in_world(self, workspace_id: str, world: str, now_ms: int) -> list[dict[str, Any]]:
        c = presence.c
        query = (sa.select(c.profile_id, c.anonymous_id, c.user_id, c.zone, c.connected_ms,
                           c.seen_ms)
                 .where(c.workspace_id == workspace_id, c.world == world,
                        c.seen_ms >= now_ms - STALE_MS)
                 .order_by(c.connected_ms))  # fmt: skip
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def elsewhere(self, keys: Iterable[tuple[str, str]], now_ms: int) -> set[tuple[str, str]]:
        """Of (workspace, profile id) pairs, those connected to another worker now."""
        wanted = set(keys)
        if not wanted:
            return set()
        c = presence.c
        query = sa.select(c.workspace_id, c.profile_id).where(
            c.profile_id.in_({p for _, p in wanted}), c.worker != self.worker,
            c.seen_ms >= now_ms - STALE_MS)  # fmt: skip
        with self.engine.connect() as conn:
            return {(ws, p) for ws, p in conn.execute(query)} & wanted

    def resolve(self, workspace_id: str, anonymous_id: str | None,
                user_id: str | None) -> str | None:  # fmt: skip
        """The profile behind a connection's identities (its user id first), merges followed."""
        return self.resolve_many([(workspace_id, anonymous_id, user_id)])[0]

    def resolve_many(self, people: Sequence[tuple[str, str | None, str | None]],
                     chunk: int = 500) -> list[str | None]:  # fmt: skip
        """`resolve` for many (workspace, anonymous id, user id) at once, in a few queries
        whatever their number: a worker holding thousands of connections looks them all up
        again every few seconds."""
        wanted: dict[tuple[str, str], set[str]] = {}  # (workspace, type) → values
        for workspace_id, anonymous_id, user_id in people:
            for type_name, value in (("user_id", user_id), ("anonymous_id", anonymous_id)):
                if value:
                    wanted.setdefault((workspace_id, type_name), set()).add(
                        normalise(type_name, value))  # fmt: skip
        c, p = identities.c, profiles.c
        found: dict[tuple[str, str, str], str] = {}  # (workspace, type, value) → profile
        with self.engine.connect() as conn:
            for (workspace_id, type_name), values in wanted.items():
                ordered = sorted(values)
                for start in range(0, len(ordered), chunk):
                    query = sa.select(c.value, c.profile_id).where(
                        c.workspace_id == workspace_id, c.type == type_name,
                        c.value.in_(ordered[start : start + chunk]))  # fmt: skip
                    for value, profile_id in conn.execute(query):
                        found[workspace_id, type_name, value] = profile_id
            survivors: dict[str, str | None] = {}  # a merged profile points at the survivor
            todo = set(found.values())
            for _ in range(8):
                todo -= survivors.keys()
                if not todo:
                    break
                ordered = sorted(todo)
                for start in range(0, len(ordered), chunk):
                    query = sa.select(p.id, p.merged_into).where(
                        p.id.in_(ordered[start : start + chunk])
                    )
                    for profile_id, merged_into in conn.execute(query):
                        survivors[profile_id] = merged_into
                todo = {s for s in survivors.values() if s is not None}
        out: list[str | None] = []
        for workspace_id, anonymous_id, user_id in people:
            profile: str | None = None
            for type_name, value in (("user_id", user_id), ("anonymous_id", anonymous_id)):
                if value and profile is None:
                    profile = found.get((workspace_id, type_name, normalise(type_name, value)))
            out.append(_survivor(profile, survivors) if profile is not None else None)
        return out

    # -- in-world deliveries -------------------------------------------------------------

    def due(self, now_ms: int, limit: int = 500) -> list[InWorld]:
        """The in-world deliveries due by ``now_ms``, soonest first. Driver SQL: each worker
        asks every few milliseconds, and the expression layer would cost more than the read."""
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        sql = ("SELECT id, workspace_id, destination_id, profile_id, state, attempts,"
               " created_ms, next_attempt_ms, payload FROM deliveries"
               f" WHERE channel = {mark} AND state IN ({mark}, {mark}, {mark})"
               f" AND next_attempt_ms <= {mark} ORDER BY next_attempt_ms LIMIT {mark}")  # fmt: skip
        params = (INWORLD, PENDING, SENT, WAITING, now_ms, limit)
        with self.engine.connect() as conn:
            return [InWorld(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]))
                    for r in conn.exec_driver_sql(sql, params)]  # fmt: skip

    def settle(self, sent: Sequence[tuple[str, int]], waiting: Sequence[tuple[str, int]],
               later: Sequence[tuple[str, int]], expired: Sequence[str],
               acked: Sequence[tuple[str, str]], now_ms: int) -> None:  # fmt: skip
        """One transaction: sent (id, ack deadline), waiting (id, expiry), later (id, next
        look: a person connected to another worker), expired ids, acknowledged (workspace,
        id)."""
        if not (sent or waiting or later or expired or acked):
            return
        d = deliveries.c
        with self.engine.begin() as conn:
            if sent:
                conn.execute(sa.update(deliveries).where(d.id == sa.bindparam("b_id")).values(
                    state=SENT, attempts=d.attempts + 1,
                    next_attempt_ms=sa.bindparam("b_next")),
                    [{"b_id": i, "b_next": n} for i, n in sent])  # fmt: skip
            for rows, state in ((waiting, WAITING), (later, PENDING)):
                if rows:
                    conn.execute(sa.update(deliveries).where(d.id == sa.bindparam("b_id"))
                                 .values(state=state, next_attempt_ms=sa.bindparam("b_next")),
                                 [{"b_id": i, "b_next": n} for i, n in rows])  # fmt: skip
            if expired:
                conn.execute(sa.update(deliveries).where(d.id.in_(expired)).values(
                    state=DEAD, last_error="expired before its person was in a world to "
                    "receive it"))  # fmt: skip
            for workspace_id, ident in acked:
                conn.execute(sa.update(deliveries).where(
                    d.id == ident, d.workspace_id == workspace_id, d.channel == INWORLD,
                    d.state.in_((PENDING, SENT, WAITING))).values(
                    state=DELIVERED, delivered_ms=now_ms))  # fmt: skip

    def wake(self, people: Iterable[tuple[str, str]], now_ms: int) -> int:
        """The waiting deliveries of these (workspace, profile id) are due now."""
        d = deliveries.c
        woken = 0
        with self.engine.begin() as conn:
            for workspace_id, profile_id in set(people):
                woken += conn.execute(sa.update(deliveries).where(
                    d.channel == INWORLD, d.workspace_id == workspace_id,
                    d.profile_id == profile_id, d.state == WAITING).values(
                    state=PENDING, next_attempt_ms=now_ms)).rowcount  # fmt: skip
        return woken


def _survivor(profile_id: str, survivors: dict[str, str | None]) -> str | None:
    """The profile a merge chain from ``profile_id`` ends at (at most 8 merges followed)."""
    current = profile_id
    for _ in range(8):
        merged_into = survivors.get(current)
        if merged_into is None:
            return current
        current = merged_into
    return None
