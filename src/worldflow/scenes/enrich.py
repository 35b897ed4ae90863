"""Events about a registered object, enriched at ingestion: an event whose ``properties.obj``
names an ``object_id`` of the workspace's scene registry but no ``product`` gets the object's
``product`` ({sku, category}) and, when missing, its ``node_path``, before it is written to
the log. The log, and so replay, hold the enriched event.

This is on the ingest path: each worker keeps, per workspace, a dict of the registry loaded
from the store, looked up only for events that carry an ``obj`` without a product, checked
again after ``ttl_s`` (a cheap query that tells whether any scene changed, then a full read if
one did) and dropped at once when this process registers a scene.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from worldflow.events.model import Event
from worldflow.store.scenes import Known, SqlSceneStore

log = logging.getLogger(__name__)

TTL_S = 5.0
RETRY_S = 1.0  # after the store failed to answer: enrichment waits, ingestion does not


class Registry(Protocol):
    def stamp(self, workspace_id: str) -> tuple[int, int, int]: ...

    def known(self, workspace_id: str) -> dict[str, Known]: ...


@dataclass(slots=True)
class _Cached:
    objects: Mapping[str, Known]
    stamp: tuple[int, int, int] | None
    expires: float
    generation: int


class ObjectCache:
    """Per workspace: object id → (product, node path), from the store."""

    def __init__(self, registry: Registry, ttl_s: float = TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.registry = registry
        self.ttl_s = ttl_s
        self.clock = clock
        self._cached: dict[str, _Cached] = {}
        self._loading: dict[str, asyncio.Future[_Cached]] = {}
        self._generation: dict[str, int] = {}

    @classmethod
    def for_log(cls, log: object) -> ObjectCache | None:
        """The cache over the store an event log reads from (None for a log without one)."""
        engine = getattr(log, "engine", None)
        return cls(SqlSceneStore(engine)) if isinstance(engine, Engine) else None

    def invalidate(self, workspace_id: str) -> None:
        """The workspace's registry changed: the next lookup reads it again (a read already
        under way does not count)."""
        self._generation[workspace_id] = self._generation.get(workspace_id, 0) + 1
        cached = self._cached.get(workspace_id)
        if cached is not None:
            cached.expires = 0.0

    async def objects(self, workspace_id: str) -> Mapping[str, Known]:
        cached = self._cached.get(workspace_id)
        if cached is not None and self.clock() < cached.expires:
            return cached.objects
        loading = self._loading.get(workspace_id)
        if loading is None:
            loading = asyncio.ensure_future(asyncio.to_thread(self._load, workspace_id, cached))
            self._loading[workspace_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(workspace_id, None))
        fresh = await asyncio.shield(loading)
        if fresh.generation == self._generation.get(workspace_id, 0):
            self._cached[workspace_id] = fresh
        else:  # registered again while this read ran: keep it, read again next time
            fresh.expires = 0.0
            self._cached.setdefault(workspace_id, fresh)
        return fresh.objects

    def _load(self, workspace_id: str, cached: _Cached | None) -> _Cached:
        generation = self._generation.get(workspace_id, 0)
        try:
            stamp = self.registry.stamp(workspace_id)
            if cached is not None and cached.stamp == stamp:
                objects = cached.objects
            else:
                objects = self.registry.known(workspace_id) if stamp[0] else {}
        except Exception:  # the store is away: events go on, unenriched for a moment
            log.warning("the scene registry of %s could not be read", workspace_id,
                        exc_info=True)  # fmt: skip
            objects = cached.objects if cached is not None else {}
            return _Cached(objects, None, self.clock() + RETRY_S, generation)
        return _Cached(objects, stamp, self.clock() + self.ttl_s, generation)


def enrich(event: Event, obj: dict[str, Any], objects: Mapping[str, Known]) -> None:
    """Add the registry's product (and node path) to the event's ``obj`` when it has none."""
    object_id = obj.get("object_id")
    known = objects.get(object_id) if type(object_id) is str else None
    if known is None:
        return
    product, node_path = known
    if product is None and obj.get("node_path") is not None:
        return
    enriched = dict(obj)
    if product is not None:
        enriched["product"] = dict(product)
    if obj.get("node_path") is None:
        enriched["node_path"] = node_path
    event.properties["obj"] = enriched
