"""The showroom's scene: the committed file is what its builder makes, and the registry reads
the ids the page sends (explicit, following the simulator's ``<scene>/<node path>``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from worldflow.scenes.registry import parse_scene
from worldflow.simulate import load_world_model

SHOWROOM = Path(__file__).resolve().parents[2] / "examples" / "showroom"


def test_the_committed_scene_is_what_build_scene_makes() -> None:
    spec = importlib.util.spec_from_file_location("build_scene", SHOWROOM / "build_scene.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = json.loads((SHOWROOM / "showroom.gltf").read_text())
    assert committed == module.build(), "run python examples/showroom/build_scene.py"


def test_the_registry_reads_the_showroom_as_the_simulator_knows_it() -> None:
    scene = parse_scene((SHOWROOM / "showroom.gltf").read_bytes(), "paris-flagship")
    by_kind: dict[str, set[str]] = {}
    for entry in scene.entries:
        by_kind.setdefault(entry.kind, set()).add(entry.object_id)
        assert entry.properties.get("explicit_id") is True, entry
    world = load_world_model().worlds["paris-showroom"]
    assert by_kind["zone"] <= {z.id for z in world.zones}
    simulated = {p.object_id: p.sku for p in world.products}
    registered = {e.object_id: e.sku for e in scene.entries if e.kind == "product"}
    assert registered.items() <= simulated.items()
    assert by_kind["placement"] == {"lobby-billboard", "npc-greeter"}
