"""The scene registry in the store, on SQLite and PostgreSQL: scenes (key, version, world,
format) and the objects, products, zones and placements each registered.

Registering a scene replaces its entries in one transaction: objects gone from the file are
removed, the others keep their ids (they are computed from the scene key and node path, or
given), and the version goes up when anything changed. An object id belongs to one scene of
its workspace: a scene that registers an id another scene holds is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worldflow.scenes.registry import Entry, Scene, count_kinds
from worldflow.store.schema import scene_objects, scenes
from worldflow.store.sql import StoreError

CHUNK = 500  # ids per IN (...): well under SQLite's limit on bound parameters

# What enrichment needs of one object: its product ({sku, category?}) if it has a SKU, and its
# node path.
Known = tuple[dict[str, str] | None, str]


class SceneConflictError(StoreError):
    """Object ids of the scene are registered by another scene of the workspace."""


@dataclass(frozen=True, slots=True)
class PutResult:
    version: int
    changed: bool
    added: int  # object ids new to the scene
    removed: int  # object ids gone from it
    kept: int


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _entry(row: Any) -> dict[str, Any]:
    """An entry as the API shows it."""
    return Entry(row.object_id, row.kind, row.node_path, row.name, row.sku, row.category,
                 json.loads(row.properties)).as_dict()  # fmt: skip


class SqlSceneStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def put(self, workspace_id: str, scene: Scene, world: str | None, now_ms: int) -> PutResult:
        """Register ``scene`` as the next version of its key, unless it registers exactly what
        the latest did (then nothing changes)."""
        s, o = scenes.c, scene_objects.c
        new = {e.object_id: (e.kind, e.node_path, e.name, e.sku, e.category, _json(e.properties))
               for e in scene.entries}  # fmt: skip
        with self.engine.begin() as conn:
            current = conn.execute(
                sa.select(s.version, s.world, s.format)
                .where(s.workspace_id == workspace_id, s.key == scene.key)
                .with_for_update()
            ).first()
            self._check_free(conn, workspace_id, scene.key, list(new))
            old = {r.object_id: (r.kind, r.node_path, r.name, r.sku, r.category, r.properties)
                   for r in conn.execute(
                       sa.select(o.object_id, o.kind, o.node_path, o.name, o.sku, o.category,
                                 o.properties)
                       .where(o.workspace_id == workspace_id, o.scene == scene.key))}  # fmt: skip
            added = len(new.keys() - old.keys())
            removed = len(old.keys() - new.keys())
            kept = len(new) - added
            same = current is not None and (current.world, current.format) == (world, scene.format)
            if current is not None and same and old == new:
                return PutResult(current.version, False, 0, 0, kept)
            version = 1 if current is None else current.version + 1
            conn.execute(sa.delete(scene_objects).where(o.workspace_id == workspace_id,
                                                        o.scene == scene.key))  # fmt: skip
            if new:
                conn.execute(sa.insert(scene_objects), [
                    {"workspace_id": workspace_id, "object_id": object_id, "scene": scene.key,
                     "kind": kind, "node_path": path, "name": name, "sku": sku,
                     "category": category, "properties": properties}
                    for object_id, (kind, path, name, sku, category, properties)
                    in new.items()])  # fmt: skip
            values = {"version": version, "world": world, "format": scene.format,
                      "updated_ms": now_ms}  # fmt: skip
            if current is None:
                conn.execute(sa.insert(scenes).values(workspace_id=workspace_id, key=scene.key,
                                                      **values))  # fmt: skip
            else:
                conn.execute(sa.update(scenes).values(**values).where(
                    s.workspace_id == workspace_id, s.key == scene.key))  # fmt: skip
        return PutResult(version, True, added, removed, kept)

    @staticmethod
    def _check_free(conn: Connection, workspace_id: str, key: str, ids: list[str]) -> None:
        o = scene_objects.c
        taken: list[tuple[str, str]] = []
        for chunk in _chunks(ids):
            taken.extend((object_id, scene) for object_id, scene in conn.execute(
                sa.select(o.object_id, o.scene)
                .where(o.workspace_id == workspace_id, o.object_id.in_(chunk), o.scene != key)
            ))  # fmt: skip
        if taken:
            taken.sort()
            shown = ", ".join(f"{i!r} (scene {other!r})" for i, other in taken[:5])
            more = f" and {len(taken) - 5} more" if len(taken) > 5 else ""
            raise SceneConflictError(f"object ids registered by another scene: {shown}{more}; "
                                     "give these nodes other explicit ids")  # fmt: skip

    def delete(self, workspace_id: str, key: str) -> bool:
        """Remove a scene and its entries; whether it existed."""
        s, o = scenes.c, scene_objects.c
        with self.engine.begin() as conn:
            conn.execute(sa.delete(scene_objects).where(o.workspace_id == workspace_id,
                                                        o.scene == key))  # fmt: skip
            gone = conn.execute(sa.delete(scenes).where(s.workspace_id == workspace_id,
                                                        s.key == key)).rowcount  # fmt: skip
        return bool(gone)

    def list_scenes(self, workspace_id: str) -> list[dict[str, Any]]:
        """Every scene of the workspace with its entries counted by kind, by key."""
        s, o = scenes.c, scene_objects.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(s.key, s.version, s.world, s.format, s.updated_ms)
                                .where(s.workspace_id == workspace_id)
                                .order_by(s.key)).all()  # fmt: skip
            counted = conn.execute(
                sa.select(o.scene, o.kind, sa.func.count())
                .where(o.workspace_id == workspace_id)
                .group_by(o.scene, o.kind)
            ).all()
        counts: dict[str, dict[str, int]] = {}
        for scene, kind, n in counted:
            counts.setdefault(scene, count_kinds(()))[f"{kind}s"] = n
        return [{**r._asdict(), **counts.get(r.key, count_kinds(()))} for r in rows]

    def get_scene(self, workspace_id: str, key: str) -> dict[str, Any] | None:
        """A scene with its entries (by node path), or None."""
        s, o = scenes.c, scene_objects.c
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(s.key, s.version, s.world, s.format, s.updated_ms)
                               .where(s.workspace_id == workspace_id,
                                      s.key == key)).first()  # fmt: skip
            if row is None:
                return None
            entries = [_entry(r) for r in conn.execute(
                sa.select(scene_objects).where(o.workspace_id == workspace_id, o.scene == key)
                .order_by(o.node_path, o.object_id))]  # fmt: skip
        return {**row._asdict(), **count_kinds(e["kind"] for e in entries), "entries": entries}

    def get_object(self, workspace_id: str, object_id: str) -> dict[str, Any] | None:
        """One entry with its scene's key, version and world, or None."""
        s, o = scenes.c, scene_objects.c
        query = (sa.select(scene_objects, s.version, s.world)
                 .join(scenes, sa.and_(s.workspace_id == o.workspace_id, s.key == o.scene))
                 .where(o.workspace_id == workspace_id, o.object_id == object_id))  # fmt: skip
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return {**_entry(row), "scene": row.scene, "scene_version": row.version,
                "world": row.world}  # fmt: skip

    def stamp(self, workspace_id: str) -> tuple[int, int, int]:
        """Changes whenever a scene of the workspace is registered, changed or removed: what a
        cache checks before it reads every object again."""
        s = scenes.c
        query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(s.version), 0),
                          sa.func.coalesce(sa.func.max(s.updated_ms), 0)).where(
            s.workspace_id == workspace_id)  # fmt: skip
        with self.engine.connect() as conn:
            count, versions, updated = conn.execute(query).one()
        return int(count), int(versions), int(updated)

    def known(self, workspace_id: str) -> dict[str, Known]:
        """Object id → (product, node path) of every entry of the workspace."""
        o = scene_objects.c
        query = sa.select(o.object_id, o.node_path, o.sku, o.category)
        query = query.where(o.workspace_id == workspace_id)
        out: dict[str, Known] = {}
        with self.engine.connect() as conn:
            for object_id, node_path, sku, category in conn.execute(query):
                product = None
                if sku is not None:
                    product = {"sku": sku}
                    if category is not None:
                        product["category"] = category
                out[object_id] = (product, node_path)
        return out
