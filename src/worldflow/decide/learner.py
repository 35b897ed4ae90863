"""The ``recommend`` strategy's models: item-to-item co-engagement learnt from the log.

Each ingest worker keeps one :class:`~worldflow.decide.recommend.CoEngagement` for each
workspace that has a live ``recommend`` placement, and feeds it that workspace's object and
product events as they are appended: every second it looks up which workspaces those are and
reads each one's entries from its own offset (for a workspace new to it, from the first entry
received within the model's horizon, 30 days), so every worker learns the same stream and the
processor is not involved. A workspace without a recommend placement costs nothing: its
entries are not read (they would otherwise cost an ingest worker a quarter of its time under
load), and a model whose last recommend placement is gone is dropped.
An event of the catalogue's engagement kinds (`SUGGESTED_WEIGHTS`: views and gaze dwells
1, selections and grabs 1.5, details and configuration 2, try-ons 3, cart additions 4)
whose ``obj`` names a product's SKU or an object id engages its person with that item (the
SKU, else the object id) at the event's time, with that weight; an order, which names several
items, is not one. The person is the event's
anonymous id, else its user id.

A decision for a ``recommend`` placement asks :meth:`Learner.scores` how strongly what the
person engaged with recently recommends each candidate offer's ``item``: the histories the
model keeps for each of the profile's anonymous and user ids, oldest first. Someone the model
knows nothing of (or whose history leads to none of the items) gets the items' popularity.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from worldflow.decide.definition import PLACEMENT
from worldflow.decide.recommend import DAY_MS, SUGGESTED_WEIGHTS, CoEngagement
from worldflow.log.sql import read_entries
from worldflow.profiles.model import Profile
from worldflow.store.schema import active_definitions, definitions

if TYPE_CHECKING:
    from worldflow.decide.engine import Person

log = logging.getLogger(__name__)

HORIZON_MS: Final = 30 * DAY_MS
BATCH: Final = 2_000  # entries read at once
LOCK_EVERY: Final = 200  # entries learnt per hold of the lock (decisions wait at most that)
EVERY_S: Final = 1.0
# The engagements with one object (an order names several items and is left out).
_ENGAGEMENTS: Final = {name: weight for name, weight in SUGGESTED_WEIGHTS.items()
                       if name.startswith(("object.", "product.", "cart."))}  # fmt: skip


class _Name(msgspec.Struct):
    name: str | None = None


class _Engagement(msgspec.Struct):
    """What learning reads of an engagement event (decoding only this skips the rest)."""

    timestamp: datetime
    received_at: datetime
    anonymous_id: str | None = None
    user_id: str | None = None
    properties: dict[str, Any] = {}


_name = msgspec.json.Decoder(_Name).decode
_engagement = msgspec.json.Decoder(_Engagement).decode


class Learner:
    """One worker's co-engagement models, one per workspace with a recommend placement, fed
    from the log."""

    def __init__(self, engine: Engine, horizon_ms: int = HORIZON_MS) -> None:
        self.engine = engine
        self.horizon_ms = horizon_ms
        self.models: dict[str, CoEngagement] = {}
        self.offsets: dict[str, int] = {}  # per workspace learnt: the last entry read
        self.learnt = 0
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    # -- learning ------------------------------------------------------------------------

    def catch_up(self, now_ms: int | None = None, budget_s: float = 0.5) -> int:
        """Learn what the log holds past each wanted workspace's offset, for at most about
        ``budget_s`` (blocking); how many entries were read."""
        wanted = self.wanted()
        with self._lock:
            for gone in set(self.models) - wanted:
                del self.models[gone], self.offsets[gone]
        read = 0
        deadline = time.monotonic() + budget_s
        for workspace_id in sorted(wanted):
            if workspace_id not in self.offsets:
                since = (now_ms or _now_ms()) - self.horizon_ms
                self.offsets[workspace_id] = self._start_offset(since)
                with self._lock:
                    self.models[workspace_id] = CoEngagement(horizon_ms=self.horizon_ms)
            while True:
                entries = read_entries(self.engine, self.offsets[workspace_id], BATCH,
                                       workspace_id=workspace_id)  # fmt: skip
                model = self.models[workspace_id]
                for start in range(0, len(entries), LOCK_EVERY):
                    chunk = entries[start : start + LOCK_EVERY]
                    with self._lock:
                        for entry in chunk:
                            if b'"obj"' in entry.body:  # cheap: most entries are skipped here
                                self._learn(model, entry.body)
                if entries:
                    self.offsets[workspace_id] = entries[-1].offset
                    read += len(entries)
                if len(entries) < BATCH or time.monotonic() > deadline:
                    break
            if time.monotonic() > deadline:
                break
        return read

    def wanted(self) -> set[str]:
        """The workspaces with a live placement of the recommend strategy."""
        a, d = active_definitions.c, definitions.c
        query = sa.select(a.workspace_id, d.document).join(definitions, sa.and_(
            a.workspace_id == d.workspace_id, a.kind == d.kind, a.key == d.key,
            a.version == d.version)).where(a.kind == PLACEMENT)  # fmt: skip
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {workspace_id for workspace_id, document in rows
                if json.loads(document).get("strategy") == "recommend"}  # fmt: skip

    def _start_offset(self, since_ms: int) -> int:
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        sql = f'SELECT min("offset") FROM event_log WHERE received_at_ms >= {mark}'
        with self.engine.connect() as conn:
            first = conn.exec_driver_sql(sql, (since_ms,)).scalar()
        return int(first) - 1 if first is not None else self._end_offset()

    def _end_offset(self) -> int:
        with self.engine.connect() as conn:
            last = conn.exec_driver_sql('SELECT max("offset") FROM event_log').scalar()
        return int(last) if last is not None else 0

    def _learn(self, model: CoEngagement, body: bytes) -> None:
        try:
            weight = _ENGAGEMENTS.get(_name(body).name or "")
            if weight is None:
                return
            event = _engagement(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # a tick or a definition record of the log, not an event
        person = event.anonymous_id or event.user_id
        item = _item(event.properties)
        if person is None or item is None:
            return
        at = min(event.timestamp, event.received_at)
        model.add(person, item, int(at.timestamp() * 1000), weight)
        self.learnt += 1

    # -- asking --------------------------------------------------------------------------

    def scores(self, workspace_id: str, profile: Person | Profile | None,
               items: Sequence[str]) -> dict[str, float]:  # fmt: skip
        """How strongly the person's recent engagements recommend each item (blocking)."""
        model = self.models.get(workspace_id)
        if model is None:
            return {}
        with self._lock:
            history: list[str] = []
            if profile is not None:
                for type_name in ("anonymous_id", "user_id"):
                    for value in profile.identities.get(type_name, ()):
                        history.extend(i for i in model.history(value) if i not in history)
            return model.score(history, items)

    # -- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="recommend learner")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                read = await run_in_threadpool(self.catch_up)
            except Exception:  # the store is away: try again later
                log.exception("learning recommendations from the log failed; trying again")
                read = 0
            if read < BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), EVERY_S)


def _item(properties: dict[str, Any]) -> str | None:
    obj = properties.get("obj")
    if not isinstance(obj, dict):
        return None
    product = obj.get("product")
    sku = product.get("sku") if isinstance(product, dict) else None
    item = sku if isinstance(sku, str) and sku else obj.get("object_id")
    return item if isinstance(item, str) and item else None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
