"""Scene files for the scene registry tests: a showroom built with pygltflib (glTF JSON and
GLB, with a binary buffer) and the same showroom in X3D."""

from __future__ import annotations

import json
from typing import Any

from pygltflib import GLTF2, Buffer, Node, Scene

RUNNER_SKU = "SNK-RUN"


def tag(**keys: Any) -> dict[str, Any]:
    return {"worldflow": keys}


def showroom(*, runner: str = "Runner", runner_at: tuple[float, float, float] = (0, 0, 0),
             trail: str = "Trail", sneakers: str = "Sneakers", reverse: bool = False,
             without_trail: bool = False) -> GLTF2:  # fmt: skip
    """Showroom/ (zone) › Sneakers/ (zone) › Runner (product), Trail (product, explicit id),
    an unnamed object; Showroom › Billboard (placement), Lamp (untagged).

    ``reverse`` lists the nodes in the opposite order (every index changes, no path does)."""
    nodes: list[dict[str, Any]] = [
        {"name": "Showroom", "children": ["sneakers", "billboard", "lamp"],
         "extras": tag(kind="zone", id="paris-showroom", zone_type="showroom")},
        {"key": "sneakers", "name": sneakers, "children": ["runner", "trail", "unnamed"],
         "extras": tag(kind="zone", zone_type="booth", name="Sneaker wall")},
        {"key": "runner", "name": runner, "translation": list(runner_at),
         "extras": {"author": "studio", **tag(kind="product", sku=RUNNER_SKU, category="shoes",
                                               tags=["running", "new"])}},
        {"key": "trail", "name": trail, "extras": tag(kind="product", id="trail-1",
                                                      sku="SNK-TRL")},
        {"key": "unnamed", "extras": tag(kind="object")},
        {"key": "billboard", "name": "Billboard",
         "extras": tag(kind="placement", placement_type="billboard")},
        {"key": "lamp", "name": "Lamp", "extras": {"light": True}},
    ]  # fmt: skip
    if without_trail:
        nodes = [n for n in nodes if n.get("key") != "trail"]
    keys = [n.get("key", "root") for n in nodes]
    if reverse:
        nodes.reverse()
        keys.reverse()
    built = []
    for node in nodes:
        children = [keys.index(c) for c in node.get("children", []) if c in keys]
        built.append(Node(name=node.get("name"), children=children, extras=node.get("extras"),
                          translation=node.get("translation")))  # fmt: skip
    return GLTF2(scenes=[Scene(nodes=[keys.index("root")])], nodes=built)


def gltf_bytes(gltf: GLTF2) -> bytes:
    return gltf.to_json().encode()


def glb_bytes(gltf: GLTF2, blob: bytes = b"\x01\x02\x03\x04" * 4096) -> bytes:
    gltf.buffers = [Buffer(byteLength=len(blob))]
    gltf.set_binary_blob(blob)
    return b"".join(gltf.save_to_bytes())


def document(data: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(data)
    return loaded


def x3d(*, runner: str = "Runner", doctype: bool = True, extra: str = "") -> bytes:
    head = ('<!DOCTYPE X3D PUBLIC "ISO//Web3D//DTD X3D 3.3//EN" '
            '"http://www.web3d.org/specifications/x3d-3.3.dtd">') if doctype else ""  # fmt: skip
    return f"""<?xml version="1.0" encoding="UTF-8"?>
{head}
<X3D profile="Interchange" version="3.3">
  <head><meta name="title" content="Showroom"/></head>
  <Scene>
    <WorldInfo title="Showroom"/>
    <Transform DEF="Showroom">
      <MetadataSet name="worldflow" containerField="metadata">
        <MetadataString name="kind" value='"zone"'/>
        <MetadataString name="id" value='"paris-showroom"'/>
        <MetadataString name="zone_type" value='"showroom"'/>
      </MetadataSet>
      <Group DEF="Sneakers">
        <MetadataSet name="worldflow">
          <MetadataString name="kind" value='"zone"'/>
          <MetadataString name="zone_type" value='"booth"'/>
          <MetadataString name="name" value='"Sneaker wall"'/>
        </MetadataSet>
        <Transform DEF="{runner}" translation="1 0 2">
          <MetadataSet name="worldflow">
            <MetadataString name="kind" value='"product"'/>
            <MetadataString name="sku" value='"SNK-RUN"'/>
            <MetadataString name="category" value='"shoes"'/>
            <MetadataString name="tags" value='"running" "new"'/>
          </MetadataSet>
          <Shape><Appearance><Material/></Appearance><Box/></Shape>
        </Transform>
        <Shape DEF="Trail">
          <MetadataSet name="worldflow">
            <MetadataString name="kind" value='"product"'/>
            <MetadataString name="id" value='"trail-1"'/>
            <MetadataString name="sku" value="SNK-TRL"/>
          </MetadataSet>
          <Box/>
        </Shape>
        <Shape>
          <MetadataSet name="worldflow"><MetadataString name="kind" value='"object"'/></MetadataSet>
        </Shape>
      </Group>
      <Transform DEF="Billboard">
        <MetadataSet name="worldflow">
          <MetadataString name="kind" value='"placement"'/>
          <MetadataString name="placement_type" value='"billboard"'/>
        </MetadataSet>
      </Transform>
      <Transform USE="Billboard"/>
      {extra}
    </Transform>
  </Scene>
</X3D>
""".encode()
