"""The scene registry in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tests.scenes.files import RUNNER_SKU, gltf_bytes, showroom, x3d
from worldflow.scenes.registry import object_id, parse_scene
from worldflow.store.scenes import SceneConflictError, SqlSceneStore
from worldflow.store.schema import metadata
from worldflow.store.sql import SqlStore

RUNNER = "Showroom/Sneakers/Runner"


@pytest.fixture
def store(store_url: str) -> Iterator[SqlSceneStore]:
    sql = SqlStore(store_url)
    sql.migrate()
    yield SqlSceneStore(sql.engine)
    sql.close()


def test_the_migration_builds_what_the_schema_declares(store: SqlSceneStore) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    mine = [d for d in diff if any(t in str(d) for t in ("'scenes'", "scene_objects"))]
    assert mine == []


def test_a_new_version_replaces_the_entries_and_keeps_the_ids(store: SqlSceneStore) -> None:
    first = store.put("w", parse_scene(gltf_bytes(showroom()), "paris"), "paris-world", 1000)
    assert (first.version, first.changed, first.added, first.removed) == (1, True, 6, 0)
    again = store.put("w", parse_scene(gltf_bytes(showroom(runner_at=(3, 0, 1))), "paris"),
                      "paris-world", 2000)  # fmt: skip
    assert (again.version, again.changed, again.kept) == (1, False, 6)  # same registry: no-op
    gone = store.put("w", parse_scene(gltf_bytes(showroom(without_trail=True)), "paris"),
                     "paris-world", 3000)  # fmt: skip
    # Trail is gone, and the unnamed node after it moved up a place: a path (and id) of its own.
    assert (gone.version, gone.changed, gone.added, gone.removed) == (2, True, 1, 2)
    scene = store.get_scene("w", "paris")
    assert scene is not None
    assert (scene["version"], scene["world"], scene["format"], scene["updated_ms"]) == (
        2, "paris-world", "gltf", 3000)  # fmt: skip
    entries = {e["node_path"]: e for e in scene["entries"]}
    assert "Showroom/Sneakers/Trail" not in entries
    assert ("Showroom/Sneakers/1" in entries, "Showroom/Sneakers/2" in entries) == (True, False)
    assert entries[RUNNER]["object_id"] == object_id("paris", RUNNER)
    assert entries[RUNNER]["tags"] == ["running", "new"]
    assert store.get_object("w", "trail-1") is None
    # The X3D of the same showroom is another version (format), the same ids.
    as_x3d = store.put("w", parse_scene(x3d(), "paris"), "paris-world", 4000)
    assert (as_x3d.version, as_x3d.added, as_x3d.removed) == (3, 2, 1)
    found = store.get_object("w", object_id("paris", RUNNER))
    assert found is not None
    assert (found["sku"], found["scene"], found["scene_version"], found["world"]) == (
        RUNNER_SKU, "paris", 3, "paris-world")  # fmt: skip
    assert store.list_scenes("w") == [{
        "key": "paris", "version": 3, "world": "paris-world", "format": "x3d",
        "updated_ms": 4000, "objects": 1, "products": 2, "zones": 2, "placements": 1}]  # fmt: skip
    assert store.list_scenes("other") == []
    assert store.get_scene("other", "paris") is None


def test_an_id_of_another_scene_is_refused(store: SqlSceneStore) -> None:
    store.put("w", parse_scene(gltf_bytes(showroom()), "paris"), None, 1000)
    with pytest.raises(SceneConflictError, match=r"'paris-showroom' \(scene 'paris'\), "
                       r"'trail-1' \(scene 'paris'\); give these"):  # fmt: skip
        store.put("w", parse_scene(gltf_bytes(showroom()), "berlin"), None, 2000)
    assert store.get_scene("w", "berlin") is None
    # In another workspace the same ids are free.
    assert store.put("v", parse_scene(gltf_bytes(showroom()), "berlin"), None, 2000).version == 1


def test_what_enrichment_reads(store: SqlSceneStore) -> None:
    assert store.stamp("w") == (0, 0, 0)
    store.put("w", parse_scene(gltf_bytes(showroom()), "paris"), None, 1000)
    stamp = store.stamp("w")
    known = store.known("w")
    assert known[object_id("paris", RUNNER)] == ({"sku": RUNNER_SKU, "category": "shoes"}, RUNNER)
    assert known["trail-1"] == ({"sku": "SNK-TRL"}, "Showroom/Sneakers/Trail")
    assert known["paris-showroom"] == (None, "Showroom")
    store.put("w", parse_scene(gltf_bytes(showroom(without_trail=True)), "paris"), None, 1000)
    assert store.stamp("w") != stamp  # the version moved, though the clock did not
    assert "trail-1" not in store.known("w")
    assert store.delete("w", "paris") is True
    assert store.delete("w", "paris") is False
    assert (store.stamp("w"), store.known("w")) == ((0, 0, 0), {})
