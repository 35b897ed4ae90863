"""Choosing what a placement shows to one person now (docs/DECIDE.md).

Each worker keeps the workspace's active offers and placements (read again when their
versions change, looked at every second) and each placement's bandit evidence (every two
seconds). A decision reads the person's profile (as the processor last committed it: their
segments, offers' hidden eligibility segments included, and the offers already served), then:

1. **candidates**: the offers of the placement that are active, valid now, for which the
   person is eligible, and not capped (served to them ``per_day`` times in the last 24 hours
   or ``per_week`` in the last 7 days — counting the serves of this worker the processor has
   not applied yet);
2. **rules and priorities**: the candidates of the highest priority;
3. **the placement's strategy** among them: ``priority`` (the first by key), ``bandit``
   (Thompson sampling: for each offer a draw from Beta(1 + interactions, 1 + impressions −
   interactions) of the placement's evidence — of the first ``by_segment`` segment the person
   is in, else the placement's own — and the highest draw wins), or ``recommend`` (the offer
   whose ``item`` the person's recent products and objects recommend most);
4. none: the placement's **fallback**. Any failure or a slow store also answers with it.

Every answer has a ``decision_id``; a ``decision.served`` event of the person is appended to
the log without the answer waiting for it (attribution and caps follow from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worldflow.decide.definition import (
    OFFER,
    PLACEMENT,
    Offer,
    Placement,
    compile_offer,
    compile_placement,
)
from worldflow.decide.learn import served_since
from worldflow.events.catalogue import Catalogue
from worldflow.events.model import Event
from worldflow.identity.types import normalise
from worldflow.profiles.model import Profile
from worldflow.segments.definition import DefinitionError
from worldflow.store.profiles import SqlProfileStore
from worldflow.store.schema import active_definitions, decision_stats

log = logging.getLogger(__name__)

DECIDE_SOURCE: Final = "_decide"  # the source of decision.served events
CATALOG_TTL_S: Final = 1.0
STATS_TTL_S: Final = 2.0
LOCAL_SERVES_MS: Final = 600_000  # this worker's serves kept until the processor has them
DAY_MS: Final = 86_400_000
WEEK_MS: Final = 7 * DAY_MS
STRATEGY_EVENT: Final = {"priority": "rule", "bandit": "experiment", "recommend": "model",
                         "fallback": "default"}  # fmt: skip


@dataclass(slots=True)
class Catalog:
    """One workspace's live offers (by placement) and placements."""

    versions: frozenset[tuple[str, str, int]] = frozenset()
    placements: dict[str, Placement] = field(default_factory=dict)
    offers: dict[str, list[Offer]] = field(default_factory=dict)  # placement → offers, by key
    loaded: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    decision_id: str
    placement: str
    offer: str | None
    content: dict[str, Any] | None
    strategy: str  # priority | bandit | recommend | fallback
    arm: str = ""

    @property
    def fallback(self) -> bool:
        return self.offer is None

    def body(self) -> dict[str, Any]:
        content = self.content
        if content is not None and self.offer is not None:  # what impressions name
            content = {**content, "creative_id": self.offer}
        return {"decision_id": self.decision_id, "placement": self.placement,
                "offer": self.offer, "content": content, "strategy": self.strategy,
                "fallback": self.fallback}  # fmt: skip


class Person(msgspec.Struct, frozen=True):
    """What a decision reads of a profile. Decoding only this skips the rest of the body
    (behaviour aggregates, sessions, recent events), which would cost more than choosing."""

    id: str
    identities: dict[str, list[str]] = {}
    segments: dict[str, int] = {}
    sends: list[tuple[int, str, str]] = []


_person = msgspec.json.Decoder(Person).decode


def beta(rng: random.Random, a: float, b: float) -> float:
    """A draw from Beta(a, b). With a or b equal to 1 (an offer nobody has acted on yet, the
    common case) the inverse of its distribution function gives it from one uniform draw, a
    tenth of the time of two gamma draws; a bandit draws one per candidate per decision."""
    if a == 1:
        return 1.0 - math.pow(rng.random(), 1.0 / b)
    if b == 1:
        return math.pow(rng.random(), 1.0 / a)
    return rng.betavariate(a, b)


Evidence = dict[tuple[str, str], tuple[int, int]]  # (arm, offer) → (impressions, interactions)
Recommend = Callable[[str, Person | Profile | None, Sequence[str]], dict[str, float]]


class Decider:
    def __init__(self, engine: Engine, catalogue: Catalogue,
                 recommend: Recommend | None = None,
                 rng: random.Random | None = None) -> None:  # fmt: skip
        self.engine = engine
        self.local_store = engine.dialect.name == "sqlite"  # reads need no thread
        self.profiles = SqlProfileStore(engine)
        self.catalogue = catalogue
        self.recommend = recommend  # (workspace, profile, items) → score per item
        self.rng = rng or random.Random()
        self._catalogs: dict[str, Catalog] = {}
        self._stats: dict[tuple[str, str], tuple[float, dict[tuple[str, str], tuple[int, int]]]]
        self._stats = {}
        self._local: dict[tuple[str, str], deque[tuple[int, str]]] = {}  # who → (at, offer)
        self._catalog_lock = threading.Lock()

    # -- what is live ---------------------------------------------------------------------

    def cached_catalog(self, workspace_id: str) -> Catalog | None:
        """The workspace's catalog when it was looked at within a second (no waiting)."""
        found = self._catalogs.get(workspace_id)
        fresh = found is not None and time.monotonic() - found.loaded < CATALOG_TTL_S
        return found if fresh else None

    def catalog(self, workspace_id: str) -> Catalog:
        """The workspace's live offers and placements (blocking: call on a thread). One
        thread looks at a time; the others meanwhile take the catalog they have, if any."""
        found = self._catalogs.get(workspace_id)
        now = time.monotonic()
        if found is not None and now - found.loaded < CATALOG_TTL_S:
            return found
        if not self._catalog_lock.acquire(blocking=found is None):
            assert found is not None
            return found
        try:
            return self._load_catalog(workspace_id)
        finally:
            self._catalog_lock.release()

    def _load_catalog(self, workspace_id: str) -> Catalog:
        found = self._catalogs.get(workspace_id)
        now = time.monotonic()
        if found is not None and now - found.loaded < CATALOG_TTL_S:
            return found  # another thread just looked
        a = active_definitions.c
        with self.engine.connect() as conn:
            query = sa.select(a.kind, a.key, a.version).where(
                a.workspace_id == workspace_id, a.kind.in_((OFFER, PLACEMENT))
            )
            versions = frozenset((kind, key, version) for kind, key, version in conn.execute(query))
        if found is not None and found.versions == versions:
            found.loaded = now
            return found
        catalog = Catalog(versions, loaded=now)
        for version, document in self.profiles.active_definitions(workspace_id,
                                                                  (OFFER, PLACEMENT)):  # fmt: skip
            try:
                if document.get("kind") == PLACEMENT:
                    placement = compile_placement(document, version)
                    catalog.placements[placement.key] = placement
                elif document.get("kind") == OFFER:
                    offer = compile_offer(document, version)
                    for key in offer.placements:
                        catalog.offers.setdefault(key, []).append(offer)
            except DefinitionError:
                log.exception("%s %s no longer compiles; left out", document.get("kind"),
                              document.get("key"))  # fmt: skip
        for offers in catalog.offers.values():
            offers.sort(key=lambda o: o.key)
        self._catalogs[workspace_id] = catalog
        return catalog

    def evidence(self, workspace_id: str,
                 placement: str) -> Evidence:  # fmt: skip
        """(arm, offer) → (impressions, interactions) of a placement (blocking)."""
        key = (workspace_id, placement)
        found = self._stats.get(key)
        now = time.monotonic()
        if found is not None and now - found[0] < STATS_TTL_S:
            return found[1]
        c = decision_stats.c
        query = sa.select(c.arm, c.offer, c.impressions, c.interactions).where(
            c.workspace_id == workspace_id, c.placement == placement
        )
        with self.engine.connect() as conn:
            stats = {(arm, offer): (int(shown), int(acted))
                     for arm, offer, shown, acted in conn.execute(query)}  # fmt: skip
        self._stats[key] = (now, stats)
        return stats

    def person(self, workspace_id: str, user_id: str | None,
               anonymous_id: str | None) -> Person | None:  # fmt: skip
        """What a decision reads of the person's profile as last committed (blocking; one
        query, merges followed); None for someone new."""
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        by_identity = ("SELECT p.merged_into, p.body FROM identities i JOIN profiles p"
                       f" ON p.id = i.profile_id WHERE i.workspace_id = {mark}"
                       f" AND i.type = {mark} AND i.value = {mark}")  # fmt: skip
        by_id = f"SELECT merged_into, body FROM profiles WHERE id = {mark}"
        with self.engine.connect() as conn:
            for type_name, value in (("user_id", user_id), ("anonymous_id", anonymous_id)):
                if not value:
                    continue
                row = conn.exec_driver_sql(by_identity, (
                    workspace_id, type_name, normalise(type_name, value))).first()  # fmt: skip
                for _ in range(16):  # a merged profile points at the survivor
                    if row is None:
                        break
                    if row[0] is None:
                        return _person(row[1])
                    row = conn.exec_driver_sql(by_id, (row[0],)).first()
        return None

    # -- choosing -------------------------------------------------------------------------

    def choose(self, workspace_id: str, placement: Placement, offers: Sequence[Offer],
               profile: Person | Profile | None, who: str, now_ms: int,
               evidence: Evidence | None = None) -> Decision:  # fmt: skip
        """The decision (blocking, unless a bandit's ``evidence`` is given: it may read it,
        and the recommend strategy asks its model)."""
        segments = profile.segments if profile is not None else {}
        local = self._local.get((workspace_id, who), ())
        candidates = [o for o in offers if o.status == "active" and o.valid_at(now_ms)
                      and (o.eligible is None or o.eligible in segments)
                      and not _capped(o, profile, local, now_ms)]  # fmt: skip
        if not candidates:
            return self.fallback(placement)
        ident = f"dc_{uuid.uuid4().hex[:24]}"
        top = max(o.priority for o in candidates)
        best = [o for o in candidates if o.priority == top]
        arm = ""
        chosen = best[0]
        if placement.strategy == "bandit" and len(best) > 1:
            arm = next((s for s in placement.by_segment if s in segments), "")
            stats = evidence if evidence is not None else self.evidence(workspace_id,
                                                                        placement.key)  # fmt: skip
            draws = []
            for offer in best:
                shown, acted = stats.get((arm, offer.key), (0, 0))
                acted = min(acted, shown)
                draws.append((beta(self.rng, 1 + acted, 1 + shown - acted), offer.key,
                              offer))  # fmt: skip
            chosen = max(draws, key=lambda d: (d[0], d[1]))[2]
        elif placement.strategy == "bandit":
            arm = next((s for s in placement.by_segment if s in segments), "")
        elif placement.strategy == "recommend" and self.recommend is not None:
            items = [o.item for o in best if o.item is not None]
            scores = self.recommend(workspace_id, profile, items) if items else {}
            chosen = max(best, key=lambda o: (scores.get(o.item or "", 0.0), -best.index(o)))
        return Decision(ident, placement.key, chosen.key, chosen.content, placement.strategy,
                        arm)  # fmt: skip

    def fallback(self, placement: Placement) -> Decision:
        return Decision(f"dc_{uuid.uuid4().hex[:24]}", placement.key, None, placement.fallback,
                        "fallback")  # fmt: skip

    def remember(self, workspace_id: str, who: str, offer: str, now_ms: int) -> None:
        """A serve the processor has not applied yet, for the caps."""
        serves = self._local.setdefault((workspace_id, who), deque())
        serves.append((now_ms, offer))
        while serves and serves[0][0] < now_ms - LOCAL_SERVES_MS:
            serves.popleft()
        if len(self._local) > 100_000:  # bounded: the oldest people are forgotten
            for key in list(self._local)[:10_000]:
                del self._local[key]

    def served_event(self, workspace_id: str, source_id: str, decision: Decision,
                     user_id: str | None, anonymous_id: str | None, context: dict[str, Any],
                     latency_ms: float, now: datetime) -> Event:  # fmt: skip
        spec = self.catalogue.get("decision.served")
        properties: dict[str, Any] = {
            "decision_id": decision.decision_id,
            "placement_id": decision.placement,
            "strategy": STRATEGY_EVENT[decision.strategy],
            "latency_ms": round(latency_ms, 3),
        }
        if decision.offer is not None:
            properties["variant"] = decision.offer
        if decision.arm:
            properties["arm"] = decision.arm
        return Event(message_id=decision.decision_id, workspace_id=workspace_id,
                     source_id=source_id, channel="decide", type="track",
                     name="decision.served", custom=False,
                     schema_version=spec.version if spec is not None else None, tier=1,
                     timestamp=now, received_at=now, properties=properties,
                     user_id=user_id, anonymous_id=anonymous_id, context=context)  # fmt: skip


def _capped(offer: Offer, profile: Person | Profile | None,
            local: Sequence[tuple[int, str]] | deque[Any],
            now_ms: int) -> bool:  # fmt: skip
    if offer.per_day is None and offer.per_week is None:
        return False
    for limit, span in ((offer.per_day, DAY_MS), (offer.per_week, WEEK_MS)):
        if limit is None:
            continue
        since = now_ms - span
        # The profile's serves, and this worker's newer ones the processor has not applied
        last = max((at for at, channel, _ in profile.sends if channel == "offer"),
                   default=0) if profile is not None else 0  # fmt: skip
        count = (served_since(profile, offer.key, since) if profile is not None else 0) + sum(
            1 for at, key in local if key == offer.key and at > last and at >= since
        )
        if count >= limit:
            return True
    return False


class DecisionLog:
    """``decision.served`` events appended in small batches off the answer's path: at most
    ``capacity`` wait (beyond: the oldest is dropped and counted); a failed append is tried
    again (same message ids: the log drops what it already has)."""

    def __init__(self, append: Callable[[list[Event]], Any], capacity: int = 10_000,
                 every_s: float = 0.005) -> None:  # fmt: skip
        self.append = append
        self.capacity = capacity
        self.every_s = every_s
        self.dropped = 0
        self._queue: deque[Event] = deque()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def add(self, event: Event) -> None:
        if len(self._queue) >= self.capacity:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision log")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        failures = 0
        while True:
            if self._queue:
                batch = list(self._queue)[:1000]
                try:
                    await self.append(batch)
                except Exception as exc:
                    failures += 1
                    log.warning("decisions wait for the log (%s)", exc)
                    await asyncio.sleep(min(5.0, 0.05 * 2**failures))
                    continue
                failures = 0
                for _ in batch:
                    self._queue.popleft()
                continue
            if self._stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every_s)
