"""The scene registry through a real ``worldflow serve``: the API, ``worldflow scenes`` and
enrichment of events sent by the official Segment library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from segment.analytics.client import Client as SegmentClient

from tests.conftest import ServerProcess, _reset_postgres
from tests.scenes.files import RUNNER_SKU, glb_bytes, gltf_bytes, showroom, x3d
from worldflow.scenes.registry import object_id

RUNNER = "Showroom/Sneakers/Runner"
RUNNER_ID = object_id("paris", RUNNER)


def test_the_scene_api(server: ServerProcess) -> None:
    with server.admin() as admin:
        put = admin.put("/v1/scenes/paris", params={"world": "paris-showroom"},
                        content=gltf_bytes(showroom()),
                        headers={"Content-Type": "model/gltf+json"})  # fmt: skip
        assert put.status_code == 200, put.text
        assert put.json() == {"key": "paris", "version": 1, "changed": True,
                              "world": "paris-showroom", "format": "gltf", "objects": 1,
                              "products": 2, "zones": 2, "placements": 1, "added": 6,
                              "removed": 0}  # fmt: skip
        # A GLB without a Content-Type: sniffed; its binary chunk is read past.
        data = glb_bytes(showroom(without_trail=True), b"\0" * 3_000_000)
        glb = admin.put("/v1/scenes/paris", params={"world": "paris-showroom"}, content=data)
        assert glb.status_code == 200, glb.text
        assert (glb.json()["version"], glb.json()["format"], glb.json()["products"],
                glb.json()["removed"]) == (2, "glb", 1, 2)  # fmt: skip
        listed = admin.get("/v1/scenes").json()["scenes"]
        assert [(s["key"], s["version"], s["world"], s["products"]) for s in listed] == [
            ("paris", 2, "paris-showroom", 1)]  # fmt: skip
        assert listed[0]["updated_at"].endswith("Z")
        scene = admin.get("/v1/scenes/paris").json()
        assert {e["node_path"] for e in scene["entries"]} == {
            "Showroom", "Showroom/Sneakers", RUNNER, "Showroom/Sneakers/1",
            "Showroom/Billboard"}  # fmt: skip
        found = admin.get(f"/v1/objects/{RUNNER_ID}").json()
        assert (found["sku"], found["category"], found["scene"], found["world"]) == (
            RUNNER_SKU, "shoes", "paris", "paris-showroom")  # fmt: skip
        assert admin.get("/v1/objects/paris-showroom").json()["kind"] == "zone"
        # X3D, a scene of its own: the showroom's explicit ids are taken.
        x = admin.put("/v1/scenes/berlin", content=x3d(),
                      headers={"Content-Type": "model/x3d+xml"})  # fmt: skip
        assert x.status_code == 409
        assert x.json()["code"] == "object_id_conflict"
        assert "'paris-showroom' (scene 'paris')" in x.json()["message"]
        # Malformed files: 422 naming the place; not a scene at all: 415.
        bad = showroom()
        bad.nodes[2].extras["worldflow"]["kind"] = "shelf"
        refused = admin.put("/v1/scenes/paris", content=gltf_bytes(bad))
        assert refused.status_code == 422
        assert refused.json() == {"code": "invalid_scene", "message": "nodes[2].extras.worldflow"
                                  ".kind: 'shelf' is not one of object, product, zone, "
                                  "placement"}  # fmt: skip
        bomb = b'<?xml version="1.0"?><!DOCTYPE X3D [<!ENTITY a "aa">]><X3D><Scene/></X3D>'
        assert admin.put("/v1/scenes/bomb", content=bomb).json()["code"] == "invalid_scene"
        other = admin.put("/v1/scenes/paris", content=b"PK\x03\x04",
                          headers={"Content-Type": "application/zip"})  # fmt: skip
        assert (other.status_code, other.json()["code"]) == (415, "unsupported_media_type")
        assert admin.put("/v1/scenes/Bad Key", content=b"{}").status_code == 422
        assert admin.put("/v1/scenes/paris?world=a%20b", content=b"{}").status_code == 422
        assert admin.get("/v1/scenes/nowhere").json()["code"] == "scene_not_found"
        assert admin.get("/v1/objects/o_nothing").status_code == 404
        assert admin.get("/v1/scenes/paris").json()["version"] == 2  # nothing refused changed it
        # Removing a scene frees its ids.
        assert admin.delete("/v1/scenes/paris").status_code == 204
        assert admin.put("/v1/scenes/berlin", content=x3d()).json()["version"] == 1
    assert httpx.get(f"{server.url}/v1/scenes").status_code == 401
    assert httpx.put(f"{server.url}/v1/scenes/paris", content=b"{}").status_code == 401


def test_a_scene_file_larger_than_the_limit_is_refused(server: ServerProcess) -> None:
    huge = b'{"asset": {"version": "2.0"}, "extras": "' + b"x" * (33 * 1024 * 1024) + b'"}'
    with server.admin() as admin:
        answer = admin.put("/v1/scenes/huge", content=huge)
    assert (answer.status_code, answer.json()["code"]) == (413, "payload_too_large")


def _worldflow(*args: str, token: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORLDFLOW_ADMIN_TOKEN": token}
    return subprocess.run([sys.executable, "-m", "worldflow", "scenes", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_worldflow_scenes_add_and_show(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "Paris Showroom.glb"
    path.write_bytes(glb_bytes(showroom()))
    shown = _worldflow("show", str(path), "--json")  # no server needed
    assert shown.returncode == 0, shown.stderr
    listed = json.loads(shown.stdout)
    assert (listed["key"], listed["format"], listed["products"]) == ("paris-showroom", "glb", 2)
    assert {e["node_path"]: e["object_id"] for e in listed["entries"]}[RUNNER] == object_id(
        "paris-showroom", RUNNER)  # fmt: skip
    table = _worldflow("show", str(path), "--key", "paris")
    assert table.returncode == 0, table.stderr
    assert RUNNER_ID in table.stdout and "SNK-RUN" in table.stdout
    added = _worldflow("add", str(path), "--key", "paris", "--world", "paris-showroom", "--url",
                       server.url, token=server.admin_token)  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == ("scene paris: version 1: 1 objects, 2 products, 2 zones, "
                                    "1 placements (6 added, 0 removed)")  # fmt: skip
    again = _worldflow("add", str(path), "--key", "paris", "--world", "paris-showroom", "--url",
                       server.url, token=server.admin_token)  # fmt: skip
    assert "version 1 (unchanged)" in again.stdout
    with server.admin() as admin:
        assert admin.get(f"/v1/objects/{RUNNER_ID}").json()["world"] == "paris-showroom"
    # Checked before anything is sent; errors name the file and the place.
    bad = showroom()
    bad.nodes[2].extras["worldflow"]["kind"] = "shelf"
    broken = tmp_path / "broken.gltf"
    broken.write_bytes(gltf_bytes(bad))
    refused = _worldflow("add", str(broken), "--url", server.url, token=server.admin_token)
    assert refused.returncode == 1
    assert "broken.gltf: nodes[2].extras.worldflow.kind: 'shelf'" in refused.stderr
    assert "broken.gltf: nodes[2]" in _worldflow("show", str(broken)).stderr
    x3d_file = tmp_path / "showroom.x3d"
    x3d_file.write_bytes(x3d(extra="<Transform DEF='Shelf'><MetadataSet name='worldflow'>"
                              "<MetadataString name='kind' value='shelf'/></MetadataSet>"
                              "</Transform>"))  # fmt: skip
    x = _worldflow("show", str(x3d_file))
    assert x.returncode == 1
    assert "MetadataSet[@name='worldflow']/MetadataString[@name='kind']: 'shelf'" in x.stderr
    assert _worldflow("add", str(path)).returncode == 2  # no token
    wrong = _worldflow("add", str(path), "--url", server.url, token="wat_wrong")
    assert (wrong.returncode, "the server answered 401" in wrong.stderr) == (1, True)


def _viewed(server: ServerProcess, messages: list[tuple[str, dict[str, Any]]]) -> None:
    client = SegmentClient(server.write_key, host=server.url, sync_mode=False)
    for message_id, obj in messages:
        client.track(anonymous_id="visitor-1", event="object.viewed",
                     properties={"obj": obj, "view_ms": 1200}, message_id=message_id,
                     context={"world": {"id": "paris-showroom"}, "session_id": "s1"})  # fmt: skip
    client.flush()
    client.shutdown()


def _enrichment_end_to_end(server: ServerProcess) -> None:
    with server.admin() as admin:
        put = admin.put("/v1/scenes/paris", content=gltf_bytes(showroom()))
        assert put.status_code == 200, put.text
    _viewed(server, [("v1", {"object_id": RUNNER_ID}),
                     ("v2", {"object_id": "trail-1", "node_path": "Sent/Path"}),
                     ("v3", {"object_id": "o_unregistered"})])  # fmt: skip
    events = {e["event"]["message_id"]: e["event"] for e in server.log_events()}
    assert events["v1"]["properties"]["obj"] == {
        "object_id": RUNNER_ID, "node_path": RUNNER,
        "product": {"sku": RUNNER_SKU, "category": "shoes"}}  # fmt: skip
    assert events["v2"]["properties"]["obj"] == {"object_id": "trail-1", "node_path": "Sent/Path",
                                                 "product": {"sku": "SNK-TRL"}}  # fmt: skip
    assert events["v3"]["properties"]["obj"] == {"object_id": "o_unregistered"}
    server.wait_processed()
    with server.admin() as admin:
        profile = admin.get("/v1/profiles/by/anonymous_id/visitor-1").json()
    products = profile["stats"]["worlds"]["paris-showroom"]["products"]
    assert {sku: p["views"] for sku, p in products.items()} == {RUNNER_SKU: 1, "SNK-TRL": 1}
    # A new version of the scene: the next events read it (this worker dropped its cache).
    renamed = showroom()
    renamed.nodes[2].extras["worldflow"]["sku"] = "SNK-RUN-2"
    with server.admin() as admin:
        assert admin.put("/v1/scenes/paris", content=gltf_bytes(renamed)).json()["version"] == 2
    _viewed(server, [("v4", {"object_id": RUNNER_ID})])
    events = {e["event"]["message_id"]: e["event"] for e in server.log_events()}
    assert events["v4"]["properties"]["obj"]["product"]["sku"] == "SNK-RUN-2"


def test_events_naming_an_object_get_its_product_in_the_log(server: ServerProcess) -> None:
    _enrichment_end_to_end(server)


def test_other_workers_see_a_new_scene_within_seconds(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"WORLDFLOW_WORKERS": "2"}).start()
    try:
        _viewed(server, [(f"w{i}", {"object_id": RUNNER_ID}) for i in range(20)])  # cached: none
        with server.admin() as admin:
            assert admin.put("/v1/scenes/paris", content=gltf_bytes(showroom())).is_success
        time.sleep(5.5)  # the cache's TTL: every worker has looked again
        _viewed(server, [(f"x{i}", {"object_id": RUNNER_ID}) for i in range(20)])
        events = server.log_events()
        skus: dict[str, set[Any]] = {}
        for e in events:
            product = e["event"]["properties"]["obj"].get("product", {})
            skus.setdefault(e["event"]["message_id"][0], set()).add(product.get("sku"))
        assert skus == {"w": {None}, "x": {RUNNER_SKU}}
    finally:
        server.stop()


@pytest.mark.postgres
def test_the_registry_and_enrichment_on_postgresql(tmp_path: Path, pg_database: str) -> None:
    _reset_postgres(pg_database)
    server = ServerProcess(tmp_path / "data", store=pg_database).start()
    try:
        _enrichment_end_to_end(server)
        with server.admin() as admin:
            assert admin.get(f"/v1/objects/{RUNNER_ID}").json()["sku"] == "SNK-RUN-2"
    finally:
        server.stop()
