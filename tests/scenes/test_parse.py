"""Reading scene files: glTF 2.0 (JSON and GLB) and X3D, tags checked, ids stable."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.scenes.files import RUNNER_SKU, document, glb_bytes, gltf_bytes, showroom, x3d
from worldflow.decide import definition as decide_definition
from worldflow.events.catalogue import Catalogue
from worldflow.scenes import gltf, registry
from worldflow.scenes.registry import (
    ZONE_TYPES,
    Scene,
    SceneError,
    format_of_name,
    object_id,
    parse_scene,
    sniff,
)

PATHS = {
    "Showroom": "zone",
    "Showroom/Sneakers": "zone",
    "Showroom/Sneakers/Runner": "product",
    "Showroom/Sneakers/Trail": "product",
    "Showroom/Sneakers/2": "object",
    "Showroom/Billboard": "placement",
}


def by_path(scene: Scene) -> dict[str, dict[str, Any]]:
    return {e.node_path: e.as_dict() for e in scene.entries}


def ids(scene: Scene) -> dict[str, str]:
    return {e.node_path: e.object_id for e in scene.entries}


def test_a_gltf_scene_registers_its_tagged_nodes() -> None:
    scene = parse_scene(gltf_bytes(showroom()), "paris")
    assert scene.format == "gltf"
    entries = by_path(scene)
    assert {p: e["kind"] for p, e in entries.items()} == PATHS  # the untagged lamp is not there
    assert scene.counts() == {"objects": 1, "products": 2, "zones": 2, "placements": 1}
    runner = entries["Showroom/Sneakers/Runner"]
    assert runner == {"object_id": object_id("paris", "Showroom/Sneakers/Runner"),
                      "kind": "product", "node_path": "Showroom/Sneakers/Runner",
                      "name": "Runner", "sku": RUNNER_SKU, "category": "shoes",
                      "tags": ["running", "new"]}  # fmt: skip
    assert re.fullmatch(r"o_[0-9a-f]{16}", runner["object_id"])
    assert entries["Showroom"]["object_id"] == "paris-showroom"
    assert entries["Showroom"]["explicit_id"] is True
    assert entries["Showroom"]["zone_type"] == "showroom"
    assert entries["Showroom/Sneakers"]["name"] == "Sneaker wall"  # the tag's name wins
    assert entries["Showroom/Sneakers/Trail"]["object_id"] == "trail-1"
    assert entries["Showroom/Billboard"]["placement_type"] == "billboard"
    assert "name" not in entries["Showroom/Sneakers/2"]


def test_a_glb_registers_what_its_json_chunk_says_without_reading_the_buffer() -> None:
    as_json = parse_scene(gltf_bytes(showroom()), "paris")
    data = glb_bytes(showroom())
    assert sniff(data) == "glb"
    as_glb = parse_scene(data, "paris")
    assert (as_glb.format, as_glb.entries) == ("glb", as_json.entries)
    # The JSON chunk alone suffices when the file's size is told (the API keeps no more).
    prefix = gltf.glb_prefix_length(data)
    assert prefix is not None and prefix < len(data)
    assert parse_scene(data[:prefix], "paris", "glb", size=len(data)).entries == as_json.entries


def test_the_same_showroom_in_x3d_registers_the_same_entries() -> None:
    scene = parse_scene(x3d(), "paris")  # with the X3D DOCTYPE exporters write
    assert scene.format == "x3d"
    assert scene.entries == parse_scene(gltf_bytes(showroom()), "paris").entries
    assert parse_scene(x3d(doctype=False), "paris").entries == scene.entries


def test_ids_survive_a_reexport_that_keeps_node_paths() -> None:
    first = ids(parse_scene(gltf_bytes(showroom()), "paris"))
    # The runner moved, and the exporter wrote every node at another index: same paths.
    moved = ids(parse_scene(gltf_bytes(showroom(runner_at=(4, 0, -2), reverse=True)), "paris"))
    assert moved == first
    assert ids(parse_scene(glb_bytes(showroom(reverse=True)), "paris")) == first
    # Renamed: a new id, unless the tag gives one.
    renamed = ids(parse_scene(gltf_bytes(showroom(runner="Runner 2", trail="Trail v2")),
                              "paris"))  # fmt: skip
    assert renamed["Showroom/Sneakers/Runner 2"] != first["Showroom/Sneakers/Runner"]
    assert renamed["Showroom/Sneakers/Trail v2"] == first["Showroom/Sneakers/Trail"] == "trail-1"
    # A renamed ancestor changes the paths, and so the ids, below it.
    parent = ids(parse_scene(gltf_bytes(showroom(sneakers="Shoes")), "paris"))
    assert parent["Showroom/Shoes/Runner"] != first["Showroom/Sneakers/Runner"]
    assert parent["Showroom"] == "paris-showroom"
    # The scene key is part of the id.
    other = ids(parse_scene(gltf_bytes(showroom()), "berlin"))
    assert other["Showroom/Sneakers/Runner"] != first["Showroom/Sneakers/Runner"]
    # X3D renames likewise.
    x = ids(parse_scene(x3d(runner="Runner2"), "paris"))
    assert x["Showroom/Sneakers/Runner2"] != first["Showroom/Sneakers/Runner"]
    assert x["Showroom/Sneakers/Trail"] == "trail-1"


def _mutated(change: Any) -> bytes:
    doc = document(gltf_bytes(showroom()))
    change(doc)
    return json.dumps(doc).encode()


def _node(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(n for n in doc["nodes"] if n.get("name") == name)
    return found


def _set_tag(name: str, **keys: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        _node(doc, name)["extras"]["worldflow"].update(keys)

    return change


def _runner_index(doc: dict[str, Any]) -> int:
    return [n.get("name") for n in doc["nodes"]].index("Runner")


@pytest.mark.parametrize(("change", "message"), [
    (_set_tag("Runner", kind="shelf"),
     "nodes[2].extras.worldflow.kind: 'shelf' is not one of object, product, zone, placement"),
    (lambda d: _node(d, "Runner")["extras"]["worldflow"].pop("kind"),
     "nodes[2].extras.worldflow.kind: required (one of object, product, zone, placement)"),
    (lambda d: _node(d, "Runner")["extras"]["worldflow"].pop("sku"),
     "nodes[2].extras.worldflow.sku: required for a product"),
    (_set_tag("Runner", sku=12), "nodes[2].extras.worldflow.sku: 12 is not a string"),
    (_set_tag("Runner", skuu="x"), "nodes[2].extras.worldflow.skuu: unknown key; known: "),
    (_set_tag("Runner", zone_type="booth"),
     "nodes[2].extras.worldflow.zone_type: not a key of a product"),
    (_set_tag("Billboard", placement_type="poster"),
     "nodes[5].extras.worldflow.placement_type: 'poster' is not one of billboard, shelf, npc, "
     "portal"),
    (_set_tag("Sneakers", zone_type="hall"), "nodes[1].extras.worldflow.zone_type: 'hall'"),
    (_set_tag("Runner", tags="running"),
     "nodes[2].extras.worldflow.tags: 'running' is not a list of non-empty strings"),
    (_set_tag("Runner", id="has space"), "nodes[2].extras.worldflow.id: 'has space' is not an id"),
    (_set_tag("Runner", id="trail-1"), "nodes[3].extras.worldflow: the same id as nodes[2]"),
    (lambda d: _node(d, "Runner").update(extras={"worldflow": "product"}),
     "nodes[2].extras.worldflow: 'product' is not an object of tag keys"),
    (lambda d: d["nodes"][4].update(name="Runner"),
     "nodes[4].extras.worldflow: the same node path 'Showroom/Sneakers/Runner' as "
     "nodes[2].extras.worldflow (object id 'o_"),
    (lambda d: d["asset"].update(version="1.0"),
     "asset.version: '1.0' is not 2.x (only glTF 2.0 is read)"),
    (lambda d: d.pop("asset"), "asset.version: required"),
    (lambda d: _node(d, "Sneakers")["children"].append(40),
     "nodes[1].children[3]: 40 is not the index of a node (0..6)"),
    (lambda d: _node(d, "Billboard").update(children=[_runner_index(d)]),
     "nodes[5].children[0]: nodes[2] is already a child of nodes[1] (a node has at most one "
     "parent)"),
    (lambda d: d["nodes"].extend([{"name": "A", "children": [8]}, {"children": [7]}]),
     "nodes[7].children: the hierarchy has a cycle through nodes[7]"),
    (lambda d: d["scenes"][0]["nodes"].append(2),
     "scenes[0].nodes[1]: nodes[2] is a child of nodes[1], not a root"),
    (lambda d: d["nodes"].append(7), "nodes[7]: 7 is not an object"),
    (lambda d: _node(d, "Lamp").update(name=["Lamp"]), "nodes[6].name: ['Lamp'] is not a string"),
])  # fmt: skip
def test_a_malformed_gltf_is_refused_naming_the_place(change: Any, message: str) -> None:
    with pytest.raises(SceneError) as refused:
        parse_scene(_mutated(change), "paris")
    assert str(refused.value).startswith(message), str(refused.value)


def test_not_json_and_broken_glb_files_are_refused() -> None:
    with pytest.raises(SceneError, match=r"^glTF: not valid JSON"):
        parse_scene(b'{"asset": ', "paris")
    with pytest.raises(SceneError, match="nested too deeply"):
        parse_scene(b"[" * 100_000 + b"]" * 100_000, "paris", "gltf")
    data = glb_bytes(showroom())
    with pytest.raises(SceneError, match=r"^GLB header: length \d+ but the file has \d+ bytes"):
        parse_scene(data[:-4], "paris")
    with pytest.raises(SceneError, match=r"^GLB header: version 1 is not 2"):
        parse_scene(data[:4] + struct.pack("<I", 1) + data[8:], "paris")
    swapped = data[:16] + struct.pack("<I", 0x004E4942) + data[20:]
    with pytest.raises(SceneError, match=r"^GLB chunks\[0\]: type 0x004E4942 is not JSON"):
        parse_scene(swapped, "paris")
    long_chunk = data[:12] + struct.pack("<I", len(data)) + data[16:]
    with pytest.raises(SceneError, match=r"^GLB chunks\[0\]: length \d+ runs past the end"):
        parse_scene(long_chunk, "paris")
    with pytest.raises(SceneError, match=r"shorter than a header"):
        parse_scene(b"glTF\x02\x00\x00\x00", "paris")
    with pytest.raises(SceneError, match=r"^not a scene file"):
        parse_scene(b"\x89PNG\r\n", "paris")
    with pytest.raises(SceneError, match=r"^key: 'Paris' is not a scene key"):
        parse_scene(gltf_bytes(showroom()), "Paris")


def test_a_library_without_scenes_registers_its_root_trees() -> None:
    doc = document(gltf_bytes(showroom()))
    del doc["scenes"]
    scene = parse_scene(json.dumps(doc).encode(), "paris")
    assert set(by_path(scene)) == set(PATHS)


def test_names_with_slashes_are_escaped_in_node_paths() -> None:
    doc = document(gltf_bytes(showroom(runner="Run/ner 100%")))
    paths = set(by_path(parse_scene(json.dumps(doc).encode(), "paris")))
    assert "Showroom/Sneakers/Run%2Fner 100%25" in paths


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE X3D [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<X3D><Scene><Transform DEF="&lol3;"/></Scene></X3D>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE X3D [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<X3D><Scene><Transform DEF="&secret;"/></Scene></X3D>"""


@pytest.mark.parametrize(("data", "message"), [
    (BILLION_LAUGHS, "X3D: a DOCTYPE with an internal subset ([...]) is refused"),
    (EXTERNAL_ENTITY, "X3D: a DOCTYPE with an internal subset ([...]) is refused"),
    (b"<X3D><Scene><Transform></Scene></X3D>", "X3D: not well-formed XML (mismatched tag"),
    (b"<x3d><Scene/></x3d>", "X3D: the root element is <x3d>, not <X3D>"),
    (b"<X3D><head/></X3D>", "X3D: no <Scene> element under <X3D>"),
])  # fmt: skip
def test_unsafe_or_malformed_xml_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(SceneError) as refused:
        parse_scene(data, "paris", "x3d")
    assert str(refused.value).startswith(message), str(refused.value)


def test_the_dtd_a_doctype_names_is_never_read(tmp_path: Path) -> None:
    dtd = tmp_path / "x3d.dtd"
    dtd.write_text('<!ENTITY secret "LEAKED">')
    data = (f'<?xml version="1.0"?><!DOCTYPE X3D SYSTEM "{dtd.as_uri()}"><X3D><Scene>'
            '<WorldInfo title="t">&secret;</WorldInfo></Scene></X3D>').encode()  # fmt: skip
    with pytest.raises(SceneError, match=r"^X3D: not well-formed XML \(undefined entity &secret;"):
        parse_scene(data, "paris", "x3d")


def test_entities_are_refused_even_by_the_parser_alone() -> None:
    from defusedxml import EntitiesForbidden
    from defusedxml.ElementTree import fromstring

    with pytest.raises(EntitiesForbidden):  # what the DOCTYPE check stands in front of
        fromstring(BILLION_LAUGHS)


SHELF = "<Transform DEF='Shelf'>{}</Transform>"
SET = "<MetadataSet name='worldflow'>{}</MetadataSet>"
SHELF_SET = ("/X3D/Scene/Transform[@DEF='Showroom']/Transform[@DEF='Shelf']"
             "/MetadataSet[@name='worldflow']")  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), [
    (SHELF.format(SET.format("<MetadataString name='kind' value='\"shelf\"'/>")),
     f"{SHELF_SET}/MetadataString[@name='kind']: 'shelf' is not one of object, product, zone, "
     "placement"),
    (SHELF.format(SET.format("<MetadataString name='kind' value='\"zone\" \"object\"'/>")),
     f"{SHELF_SET}/MetadataString[@name='kind']: one value expected, not 2"),
    (SHELF.format(SET.format("<MetadataString name='kind' value='\"zone'/>")),
     f"{SHELF_SET}/MetadataString[@name='kind']: '\"zone' is not an MFString"),
    (SHELF.format(SET.format("<MetadataString name='kind' value='zone'/>"
                             "<MetadataString name='colour' value='red'/>")),
     f"{SHELF_SET}/MetadataString[@name='colour']: unknown key"),
    (SHELF.format(SET.format("<MetadataInteger name='kind' value='1'/>")),
     "/X3D/Scene/Transform[@DEF='Showroom']/Transform[@DEF='Shelf']/MetadataSet[1]/"
     "MetadataInteger[1]: the keys of a worldflow MetadataSet are MetadataString nodes"),
    (SHELF.format(SET.format("<MetadataString name='kind'/>")),
     f"{SHELF_SET}/MetadataString[@name='kind']: value is required"),
    (SHELF.format(SET.format("<MetadataString name='kind' value='zone'/>") * 2),
     f"{SHELF_SET}: a node has at most one worldflow MetadataSet"),
    ("<Anchor>" + SET.format("<MetadataString name='kind' value='zone'/>") + "</Anchor>",
     "/X3D/Scene/Transform[@DEF='Showroom']/Anchor[1]/MetadataSet[@name='worldflow']: tags go "
     "on Transform, Group, Shape nodes, not Anchor"),
    (SHELF.format(SET.format("<MetadataString name='kind' value='product'/>")),
     f"{SHELF_SET}/MetadataString[@name='sku']: required for a product"),
    ("<Transform DEF='Runner'>" + SET.format("<MetadataString name='kind' value='object'/>")
     + "</Transform>",
     f"{SHELF_SET.replace('Shelf', 'Runner')}: the same node path 'Showroom/Runner'"),
])  # fmt: skip
def test_a_malformed_x3d_tag_is_refused_naming_the_place(extra: str, message: str) -> None:
    data = x3d(extra=extra)
    if "DEF='Runner'" in extra:  # a second Runner beside Sneakers/Runner is fine; make a twin
        data = data.replace(b'<Transform DEF="Billboard">', b'<Transform DEF="Runner">'
                            b'<MetadataSet name="worldflow"><MetadataString name="kind" '
                            b'value="object"/></MetadataSet></Transform><Transform '
                            b'DEF="Billboard">', 1)  # fmt: skip
    with pytest.raises(SceneError) as refused:
        parse_scene(data, "paris")
    assert str(refused.value).startswith(message), str(refused.value)


def test_mfstrings_unescape_and_tags_keep_their_order() -> None:
    tags = '<MetadataString name=\'tags\' value=\'"a \\"b\\"" "c\\\\d", "a \\"b\\""\'/>'
    data = x3d(extra=SHELF.format(SET.format(
        f"<MetadataString name='kind' value='zone'/>{tags}")))  # fmt: skip
    shelf = by_path(parse_scene(data, "paris"))["Showroom/Shelf"]
    assert shelf["tags"] == ['a "b"', "c\\d"]


def test_zone_types_are_the_catalogues() -> None:
    spec = Catalogue.default().get("zone.entered")
    assert spec is not None
    assert spec.fields["zone_type"].choices == ZONE_TYPES


def test_placement_types_are_the_decision_apis() -> None:
    assert registry.PLACEMENT_TYPES == decide_definition.PLACEMENT_TYPES


def test_formats_from_names_and_first_bytes() -> None:
    assert [format_of_name(n) for n in ("a.gltf", "b.GLB", "c.x3d", "d.wrl", "e")] == [
        "gltf", "glb", "x3d", None, None]  # fmt: skip
    assert [sniff(b) for b in (b"glTF\x02", b"\xef\xbb\xbf {", b"\n<?xml", b"PK")] == [
        "glb", "gltf", "x3d", None]  # fmt: skip
