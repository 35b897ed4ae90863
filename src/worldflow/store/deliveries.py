"""Deliveries, webhook destinations (and the workspace settings e-mail is sent with) on SQLite
and PostgreSQL.

Producers (the journeys, inside the processor's transaction) call :func:`insert_deliveries`;
the dispatcher (``actions/deliver.py``) and the admin API (``actions/api.py``) use
:class:`SqlDeliveryStore`. Calls are synchronous, like the rest of the store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from worldflow.store.schema import deliveries, webhook_destinations, workspaces
from worldflow.store.sql import now_ms

WEBHOOK: Final = "webhook"
EMAIL: Final = "email"  # sent with the workspace's SMTP settings (destination "smtp")
STATES: Final = ("pending", "delivered", "dead")
_REQUIRED: Final = ("id", "workspace_id", "destination_id", "event_type", "payload", "created_ms")
_OPTIONAL: Final = ("channel", "state", "attempts", "next_attempt_ms", "profile_id")
_BRANCHES: Final = 50  # destinations per query when fetching what is due
DEFAULT_MAX_IN_FLIGHT: Final = 32  # requests at once to a destination, unless it says otherwise


def delivery_id(*parts: object) -> str:
    """A deterministic delivery id (the ``webhook-id``) from what caused the action, so that
    deciding the same action again inserts nothing and receivers see the same id."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16)
    return "dlv_" + digest.hexdigest()


def delivery_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row of ``deliveries`` from a producer's dict; ValueError names a missing or unknown
    key. ``payload`` is a JSON string, or a value to encode."""
    missing = [key for key in _REQUIRED if key not in row]
    unknown = sorted(set(row) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else [])  # fmt: skip
        raise ValueError(f"delivery {row.get('id')!r}: {'; '.join(problems)}")
    payload = row["payload"]
    if not isinstance(payload, str):
        payload = json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str)
    state = row.get("state", "pending")
    if state not in STATES:
        raise ValueError(f"delivery {row['id']!r}: state {state!r} is not one of {STATES}")
    if len(row["id"]) > 64:
        raise ValueError(f"delivery {row['id']!r}: id is longer than 64 characters")
    return {
        "id": row["id"],
        "workspace_id": row["workspace_id"],
        "channel": row.get("channel", WEBHOOK),
        "destination_id": row["destination_id"],
        "event_type": row["event_type"],
        "payload": payload,
        "created_ms": int(row["created_ms"]),
        "state": state,
        "attempts": int(row.get("attempts", 0)),
        "next_attempt_ms": int(row.get("next_attempt_ms", row["created_ms"])),
        "profile_id": row.get("profile_id"),
    }


def insert_deliveries(conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add deliveries in the caller's transaction. A row whose id exists already is skipped
    (ON CONFLICT DO NOTHING): producing the same action twice delivers it once."""
    if not rows:
        return
    values = [delivery_row(row) for row in rows]
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(insert(deliveries).on_conflict_do_nothing(index_elements=["id"]), values)


@dataclass(frozen=True, slots=True)
class DueDelivery:
    id: str
    workspace_id: str
    destination_id: str
    event_type: str
    payload: str
    created_ms: int
    attempts: int
    replayed_ms: int | None

    @property
    def window_start_ms(self) -> int:
        return self.replayed_ms if self.replayed_ms is not None else self.created_ms


@dataclass(frozen=True, slots=True)
class Want:
    """Up to ``limit`` due deliveries of one destination, except those in ``exclude``."""

    workspace_id: str
    destination_id: str
    limit: int
    exclude: Collection[str] = ()


@dataclass(frozen=True, slots=True)
class Result:
    """An attempt's outcome, to record."""

    id: str
    attempts: int
    state: str  # delivered | pending | dead
    next_attempt_ms: int
    last_status: int | None
    last_error: str | None
    at_ms: int


@dataclass(frozen=True, slots=True)
class CircuitRow:
    workspace_id: str
    destination_id: str
    state: str
    failures: int
    opened_at_ms: int | None
    reopen_at_ms: int | None


@dataclass(frozen=True, slots=True)
class Deferral:
    """Move a destination's pending deliveries due before ``until_ms`` to it (its circuit
    opened), without counting an attempt; ``exclude``: those in flight. Those whose retry
    window (``window_ms``) ends before then are dead instead: they could not be retried in
    it, and a circuit that stays open would otherwise keep them pending long past it."""

    workspace_id: str
    destination_id: str
    until_ms: int
    exclude: Collection[str] = ()
    window_ms: int | None = None
    window: str = ""  # the window, for the reason


_PUBLIC = ("id", "url", "headers", "timeout_ms", "rate_per_s", "max_in_flight", "disabled",
           "circuit_state", "consecutive_failures", "opened_at_ms", "reopen_at_ms",
           "created_at_ms", "updated_at_ms")  # fmt: skip


def _destination(row: Any, with_secret: bool = False) -> dict[str, Any]:
    item = {key: getattr(row, key) for key in _PUBLIC}
    item["headers"] = json.loads(item["headers"] or "{}")
    item["disabled"] = bool(item["disabled"])
    if with_secret:
        item["workspace_id"] = row.workspace_id
        item["secret"] = row.secret
    return item


class SqlDeliveryStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- destinations ---------------------------------------------------------------------

    def put_destination(
        self,
        workspace_id: str,
        destination_id: str,
        *,
        url: str,
        secret: str | None,
        secret_if_new: str,
        headers: Mapping[str, str],
        timeout_ms: int,
        rate_per_s: float | None,
        disabled: bool,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> tuple[dict[str, Any], bool]:
        """Create or replace a destination; whether it was created. A new one gets ``secret``
        or else ``secret_if_new``, and only then does the answer hold it; a replaced one keeps
        its secret unless given another. Disabling it ends its pending deliveries (dead)."""
        t = webhook_destinations
        at = now_ms()
        values: dict[str, Any] = {
            "url": url, "headers": json.dumps(dict(headers), sort_keys=True),
            "timeout_ms": timeout_ms, "rate_per_s": rate_per_s, "max_in_flight": max_in_flight,
            "disabled": disabled, "updated_at_ms": at,
        }  # fmt: skip
        if secret is not None:
            values["secret"] = secret
        key = (t.c.workspace_id == workspace_id, t.c.id == destination_id)
        with self.engine.begin() as conn:
            updated = conn.execute(sa.update(t).where(*key).values(**values)).rowcount
            created = not updated
            if created:
                values.setdefault("secret", secret_if_new)
                conn.execute(sa.insert(t).values(workspace_id=workspace_id, id=destination_id,
                                                 created_at_ms=at, **values))  # fmt: skip
            if disabled:
                self._end_pending(conn, workspace_id, destination_id, at,
                                  f"destination {destination_id!r} is disabled; enable it, "
                                  "then replay")  # fmt: skip
            row = conn.execute(sa.select(t).where(*key)).one()
        return _destination(row, with_secret=False) | (
            {"secret": row.secret} if created else {}), created  # fmt: skip

    def get_destination(self, workspace_id: str, destination_id: str) -> dict[str, Any] | None:
        t = webhook_destinations
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t).where(t.c.workspace_id == workspace_id, t.c.id == destination_id)
            ).first()
        return _destination(row) if row is not None else None

    def list_destinations(self, workspace_id: str) -> list[dict[str, Any]]:
        t = webhook_destinations
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t).where(t.c.workspace_id == workspace_id).order_by(t.c.id)
            )
            return [_destination(row) for row in rows]

    def delete_destination(self, workspace_id: str, destination_id: str) -> bool:
        """Delete it; its pending deliveries end (dead), to be replayed once it is back."""
        t = webhook_destinations
        with self.engine.begin() as conn:
            deleted = conn.execute(
                sa.delete(t).where(t.c.workspace_id == workspace_id, t.c.id == destination_id)
            ).rowcount
            if deleted:
                self._end_pending(conn, workspace_id, destination_id, now_ms(),
                                  f"destination {destination_id!r} was deleted; create it "
                                  "again, then replay")  # fmt: skip
        return bool(deleted)

    def counts(self, workspace_id: str, destination_id: str) -> dict[str, int]:
        """Deliveries per state for one destination."""
        c = deliveries.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.state, sa.func.count())
                .where(c.channel == WEBHOOK, c.workspace_id == workspace_id,
                       c.destination_id == destination_id)
                .group_by(c.state)
            ).all()  # fmt: skip
        return dict.fromkeys(STATES, 0) | {row[0]: int(row[1]) for row in rows}

    def dispatch_destinations(self) -> list[dict[str, Any]]:
        """Every workspace's destinations, secrets included: what the dispatcher signs with."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(webhook_destinations))
            return [_destination(row, with_secret=True) for row in rows]

    # -- what the dispatcher does ---------------------------------------------------------

    def pending_destinations(self, channel: str) -> list[tuple[str, str]]:
        """The (workspace, destination) pairs with pending deliveries of ``channel`` (read
        from the index alone)."""
        c = deliveries.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.workspace_id, c.destination_id)
                .where(c.channel == channel, c.state == "pending")
                .distinct()
            ).all()
        return [(row.workspace_id, row.destination_id) for row in rows]

    def workspace_settings(self, workspace_ids: Collection[str]) -> dict[str, dict[str, Any]]:
        """The settings of these workspaces (those that exist), decoded."""
        if not workspace_ids:
            return {}
        t = workspaces.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.id, t.settings).where(t.id.in_(list(workspace_ids)))
            ).all()
        out: dict[str, dict[str, Any]] = {}
        for workspace_id, raw in rows:
            value = json.loads(raw) if raw else {}
            out[workspace_id] = value if isinstance(value, dict) else {}
        return out

    def due(self, wants: Sequence[Want], at_ms: int, channel: str = WEBHOOK) -> list[DueDelivery]:
        """Due pending deliveries, up to each want's limit, oldest due first per destination.
        One indexed range per destination, so a destination with a large backlog costs the
        others nothing."""
        c = deliveries.c
        columns = (c.id, c.workspace_id, c.destination_id, c.event_type, c.payload,
                   c.created_ms, c.attempts, c.replayed_ms)  # fmt: skip
        out: list[DueDelivery] = []
        with self.engine.connect() as conn:
            wanted = [w for w in wants if w.limit > 0]
            for chunk in (wanted[i : i + _BRANCHES] for i in range(0, len(wanted), _BRANCHES)):
                selects = []
                for want in chunk:
                    query = sa.select(*columns).where(
                        c.channel == channel, c.state == "pending",
                        c.workspace_id == want.workspace_id,
                        c.destination_id == want.destination_id, c.next_attempt_ms <= at_ms,
                    )  # fmt: skip
                    if want.exclude:
                        query = query.where(c.id.not_in(list(want.exclude)))
                    selects.append(query.order_by(c.next_attempt_ms).limit(want.limit))
                if len(selects) == 1:
                    statement: sa.Executable = selects[0]
                else:  # each branch's LIMIT needs a subquery of its own on SQLite
                    statement = sa.union_all(*(sa.select(q.subquery()) for q in selects))
                out.extend(DueDelivery(*row) for row in conn.execute(statement))
        return out

    def record(
        self,
        results: Sequence[Result],
        circuits: Sequence[CircuitRow] = (),
        deferrals: Sequence[Deferral] = (),
    ) -> None:
        """Write attempts' outcomes, circuit states and deferrals in one transaction. A
        delivery ended meanwhile (its destination deleted) stays ended unless it was
        delivered after all."""
        c = deliveries.c
        delivered = [r for r in results if r.state == "delivered"]
        others = [r for r in results if r.state != "delivered"]
        with self.engine.begin() as conn:
            if delivered:
                conn.execute(
                    sa.update(deliveries).where(c.id == sa.bindparam("b_id")).values(
                        state="delivered", attempts=sa.bindparam("b_attempts"),
                        last_status=sa.bindparam("b_status"), last_error=None,
                        delivered_ms=sa.bindparam("b_at"),
                    ),
                    [{"b_id": r.id, "b_attempts": r.attempts, "b_status": r.last_status,
                      "b_at": r.at_ms} for r in delivered],
                )  # fmt: skip
            if others:
                conn.execute(
                    sa.update(deliveries)
                    .where(c.id == sa.bindparam("b_id"), c.state == "pending")
                    .values(
                        state=sa.bindparam("b_state"), attempts=sa.bindparam("b_attempts"),
                        next_attempt_ms=sa.bindparam("b_next"),
                        last_status=sa.bindparam("b_status"),
                        last_error=sa.bindparam("b_error"),
                    ),
                    [{"b_id": r.id, "b_state": r.state, "b_attempts": r.attempts,
                      "b_next": r.next_attempt_ms, "b_status": r.last_status,
                      "b_error": r.last_error} for r in others],
                )  # fmt: skip
            t = webhook_destinations
            for circuit in circuits:
                conn.execute(
                    sa.update(t)
                    .where(t.c.workspace_id == circuit.workspace_id,
                           t.c.id == circuit.destination_id)
                    .values(circuit_state=circuit.state,
                            consecutive_failures=circuit.failures,
                            opened_at_ms=circuit.opened_at_ms,
                            reopen_at_ms=circuit.reopen_at_ms)
                )  # fmt: skip
            for deferral in deferrals:
                query = sa.update(deliveries).where(
                    c.channel == WEBHOOK, c.state == "pending",
                    c.workspace_id == deferral.workspace_id,
                    c.destination_id == deferral.destination_id,
                    c.next_attempt_ms < deferral.until_ms,
                )  # fmt: skip
                if deferral.exclude:
                    query = query.where(c.id.not_in(list(deferral.exclude)))
                if deferral.window_ms is not None:
                    reason = (f"gave up: the retry window of {deferral.window or 'its window'} "
                              "ended while the destination's circuit was open; last: ")  # fmt: skip
                    start = sa.func.coalesce(c.replayed_ms, c.created_ms)
                    last = sa.literal(reason) + sa.func.coalesce(c.last_error, "not attempted")
                    expired = query.where(start + deferral.window_ms < deferral.until_ms)
                    conn.execute(expired.values(state="dead", last_error=last))
                conn.execute(query.values(next_attempt_ms=deferral.until_ms))

    def end_orphans(self, channel: str = WEBHOOK) -> int:
        """End (dead) the pending deliveries of destinations that do not exist or are
        disabled, with the reason; how many. Reads which destinations have pending rows from
        the index alone, then the destinations, in one transaction: a destination created
        before its first delivery was written is always seen."""
        c = deliveries.c
        t = webhook_destinations
        ended = 0
        at = now_ms()
        with self.engine.begin() as conn:
            pending = conn.execute(
                sa.select(c.workspace_id, c.destination_id)
                .where(c.channel == channel, c.state == "pending")
                .distinct()
            ).all()
            if not pending:
                return 0
            known = {(row.workspace_id, row.id): bool(row.disabled) for row in
                     conn.execute(sa.select(t.c.workspace_id, t.c.id, t.c.disabled))}  # fmt: skip
            for workspace_id, destination_id in pending:
                disabled = known.get((workspace_id, destination_id))
                if disabled is None:
                    reason = (f"destination {destination_id!r} does not exist in workspace "
                              f"{workspace_id!r}; create it, then replay")  # fmt: skip
                elif disabled:
                    reason = f"destination {destination_id!r} is disabled; enable it, then replay"
                else:
                    continue
                ended += self._end_pending(conn, workspace_id, destination_id, at, reason,
                                           channel)  # fmt: skip
        return ended

    @staticmethod
    def _end_pending(conn: sa.Connection, workspace_id: str, destination_id: str, at_ms: int,
                     reason: str, channel: str = WEBHOOK) -> int:  # fmt: skip
        c = deliveries.c
        return int(conn.execute(
            sa.update(deliveries)
            .where(c.channel == channel, c.state == "pending", c.workspace_id == workspace_id,
                   c.destination_id == destination_id)
            .values(state="dead", last_error=reason, last_status=None, next_attempt_ms=at_ms)
        ).rowcount)  # fmt: skip

    # -- the dead letters -----------------------------------------------------------------

    def list_deliveries(
        self,
        workspace_id: str,
        state: str | None = None,
        destination_id: str | None = None,
        limit: int = 100,
        before: tuple[int, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; ``before`` is the (created_ms, id) of the last one of a page."""
        c = deliveries.c
        query = sa.select(deliveries).where(c.workspace_id == workspace_id)
        if state is not None:
            query = query.where(c.state == state)
        if destination_id is not None:
            query = query.where(c.destination_id == destination_id)
        if before is not None:
            query = query.where(sa.tuple_(c.created_ms, c.id) < sa.tuple_(*before))
        query = query.order_by(c.created_ms.desc(), c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def get_delivery(self, workspace_id: str, delivery_id: str) -> dict[str, Any] | None:
        c = deliveries.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(deliveries).where(c.workspace_id == workspace_id, c.id == delivery_id)
            ).first()
        return dict(row._mapping) if row is not None else None

    def replay(
        self,
        workspace_id: str,
        ids: Iterable[str] | None = None,
        destination_id: str | None = None,
    ) -> int:
        """Dead deliveries (these ids, or all of a destination) pending again, due now, with
        no attempts and a new retry window; how many."""
        c = deliveries.c
        at = now_ms()
        with self.engine.begin() as conn:
            query = sa.update(deliveries).where(c.workspace_id == workspace_id, c.state == "dead")
            if ids is not None:
                query = query.where(c.id.in_(list(ids)))
            if destination_id is not None:
                query = query.where(c.destination_id == destination_id)
            return int(conn.execute(query.values(
                state="pending", attempts=0, next_attempt_ms=at, replayed_ms=at,
                last_status=None, last_error=None, delivered_ms=None,
            )).rowcount)  # fmt: skip
