"""Writes the showroom's scene, ``showroom.gltf``: a glTF 2.0 file made of boxes, with the
Worldflow tags (node ``extras.worldflow``) that `worldflow scenes add` registers and that the
page's attention tracker reads (three.js puts a node's extras in ``userData``).

    python examples/showroom/build_scene.py     # rewrites showroom.gltf next to this file

The room is 20 m wide (x) and 14 m deep (z), y up, metres. Visitors arrive in the entrance
(z > 1) facing the back wall (−z), where the lobby billboard hangs between the sneaker wall
(x < 0) and the jacket gallery (x > 0). A zone is a node without a mesh whose transform
scales the unit cube centred on the origin: the page finds the avatar's zone from it.
Products, the billboard and the NPC carry explicit ids, so the ids the page sends are the ids
the registry gives them; products follow the simulator's ``<scene>/<node path>`` convention.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

SCENE = "paris-flagship"
OUT = Path(__file__).with_name("showroom.gltf")
DATA_URI = "data:application/octet-stream;base64,"
Vec = tuple[float, float, float]

# name: RGBA base colour, metallic, roughness
MATERIALS: dict[str, tuple[tuple[float, float, float, float], float, float]] = {
    "floor": ((0.82, 0.80, 0.76, 1.0), 0.0, 0.9),
    "wall": ((0.93, 0.92, 0.89, 1.0), 0.0, 1.0),
    "plinth": ((0.25, 0.25, 0.28, 1.0), 0.1, 0.6),
    "runner": ((0.97, 0.97, 0.97, 1.0), 0.0, 0.5),
    "trail": ((0.33, 0.45, 0.27, 1.0), 0.0, 0.6),
    "court": ((0.08, 0.08, 0.09, 1.0), 0.0, 0.4),
    "rain": ((0.12, 0.18, 0.38, 1.0), 0.0, 0.5),
    "down": ((0.93, 0.88, 0.76, 1.0), 0.0, 0.8),
    "screen": ((1.0, 1.0, 1.0, 1.0), 0.0, 1.0),
    "frame": ((0.1, 0.1, 0.12, 1.0), 0.4, 0.4),
    "npc": ((0.85, 0.45, 0.30, 1.0), 0.0, 0.7),
}


def cube() -> tuple[bytes, list[dict[str, Any]], list[dict[str, Any]]]:
    """A unit cube centred on the origin: 24 vertices (positions, normals, texture
    coordinates) and 36 indices, as one buffer with its views and accessors."""
    positions: list[float] = []
    normals: list[float] = []
    uvs: list[float] = []
    indices: list[int] = []
    # axis of the normal, its sign; u and v run along the other two axes
    for axis in range(3):
        for sign in (1.0, -1.0):
            u_axis, v_axis = [(1, 2), (2, 0), (0, 1)][axis]
            if sign < 0:
                u_axis, v_axis = v_axis, u_axis
            base = len(positions) // 3
            for u, v in ((0, 0), (1, 0), (1, 1), (0, 1)):
                point = [0.0, 0.0, 0.0]
                point[axis] = 0.5 * sign
                point[u_axis] = u - 0.5
                point[v_axis] = v - 0.5
                normal = [0.0, 0.0, 0.0]
                normal[axis] = sign
                positions += point
                normals += normal
                uvs += [float(u), float(1 - v)]
            indices += [base, base + 1, base + 2, base, base + 2, base + 3]
    # Faces whose (u, v) frame is left-handed about the normal get their winding reversed, so
    # every face is counter-clockwise seen from outside (the glTF front face).
    for face in range(6):
        a, b, c = (indices[face * 6 + k] for k in range(3))
        pa, pb, pc = (positions[i * 3 : i * 3 + 3] for i in (a, b, c))
        e1 = [pb[k] - pa[k] for k in range(3)]
        e2 = [pc[k] - pa[k] for k in range(3)]
        cross = [e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2],
                 e1[0] * e2[1] - e1[1] * e2[0]]  # fmt: skip
        n = normals[a * 3 : a * 3 + 3]
        if sum(cross[k] * n[k] for k in range(3)) < 0:
            tri = indices[face * 6 : face * 6 + 6]
            indices[face * 6 : face * 6 + 6] = [tri[0], tri[2], tri[1], tri[3], tri[5], tri[4]]
    blob = (struct.pack(f"<{len(positions)}f", *positions)
            + struct.pack(f"<{len(normals)}f", *normals)
            + struct.pack(f"<{len(uvs)}f", *uvs)
            + struct.pack(f"<{len(indices)}H", *indices))  # fmt: skip
    n_vertices = len(positions) // 3
    views = [
        {"buffer": 0, "byteOffset": 0, "byteLength": n_vertices * 12, "target": 34962},
        {"buffer": 0, "byteOffset": n_vertices * 12, "byteLength": n_vertices * 12,
         "target": 34962},
        {"buffer": 0, "byteOffset": n_vertices * 24, "byteLength": n_vertices * 8,
         "target": 34962},
        {"buffer": 0, "byteOffset": n_vertices * 32, "byteLength": len(indices) * 2,
         "target": 34963},
    ]  # fmt: skip
    accessors = [
        {"bufferView": 0, "componentType": 5126, "count": n_vertices, "type": "VEC3",
         "min": [-0.5, -0.5, -0.5], "max": [0.5, 0.5, 0.5]},
        {"bufferView": 1, "componentType": 5126, "count": n_vertices, "type": "VEC3"},
        {"bufferView": 2, "componentType": 5126, "count": n_vertices, "type": "VEC2"},
        {"bufferView": 3, "componentType": 5123, "count": len(indices), "type": "SCALAR"},
    ]  # fmt: skip
    return blob, views, accessors


class Builder:
    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.material_index = {name: i for i, name in enumerate(MATERIALS)}

    def node(self, name: str, *, at: Vec = (0, 0, 0), size: Vec | None = None,
             material: str | None = None, tag: dict[str, Any] | None = None,
             children: list[int] | None = None) -> int:  # fmt: skip
        """A node; with a material it shows the unit cube (one mesh per material) scaled to
        ``size``; without, ``size`` scales an invisible volume (a zone)."""
        node: dict[str, Any] = {"name": name}
        if any(at):
            node["translation"] = list(at)
        if size is not None:
            node["scale"] = list(size)
        if material is not None:
            node["mesh"] = self.material_index[material]
        if tag is not None:
            node["extras"] = {"worldflow": tag}
        if children:
            node["children"] = children
        self.nodes.append(node)
        return len(self.nodes) - 1

    def box(self, name: str, at: Vec, size: Vec, material: str,
            tag: dict[str, Any] | None = None) -> int:  # fmt: skip
        return self.node(name, at=at, size=size, material=material, tag=tag)


def product_on_plinth(b: Builder, zone: str, plinth: str, name: str, x: float, z: float,
                      tag: dict[str, Any], size: Vec) -> int:  # fmt: skip
    """A plinth (1 m high) with the product on it; the product's node path is
    ``<zone>/<plinth>/<name>``."""
    item = b.box(name, (0, 0.5 + size[1] / 2, 0), size, name,
                 {"kind": "product", "id": f"{SCENE}/{zone}/{plinth}/{name}", **tag})  # fmt: skip
    body = b.box("body", (0, 0, 0), (0.6, 1.0, 0.6), "plinth")
    return b.node(plinth, at=(x, 0.5, z), children=[body, item])


def zone(b: Builder, zone_id: str, zone_type: str, name: str, at: Vec, size: Vec) -> int:
    """A zone: a volume (node ``zone-<id>``) with no mesh."""
    tag = {"kind": "zone", "id": zone_id, "zone_type": zone_type, "name": name}
    return b.node(f"zone-{zone_id}", at=at, size=size, tag=tag)


def build() -> dict[str, Any]:
    b = Builder()
    room = [
        b.box("floor", (0, -0.05, 0), (20, 0.1, 14), "floor"),
        b.box("back-wall", (0, 2, -7.05), (20, 4, 0.1), "wall"),
        b.box("left-wall", (-10.05, 2, 0), (0.1, 4, 14), "wall"),
        b.box("right-wall", (10.05, 2, 0), (0.1, 4, 14), "wall"),
        b.box("front-wall", (0, 2, 7.05), (20, 4, 0.1), "wall"),
    ]
    shell = b.node("shell", children=room)
    entrance = zone(b, "entrance", "lobby", "Entrance hall", (0, 1.5, 4), (20, 3, 6))
    sneakers = [
        product_on_plinth(b, "sneaker-wall", "plinth-01", "runner", -8, -5,
                          {"sku": "SNK-RUNNER-WHT", "category": "sneakers",
                           "name": "Runner White", "tags": ["running", "new"]},
                          (0.36, 0.16, 0.14)),
        product_on_plinth(b, "sneaker-wall", "plinth-02", "trail", -6, -5,
                          {"sku": "SNK-TRAIL-GRN", "category": "sneakers",
                           "name": "Trail Moss", "tags": ["outdoor"]}, (0.36, 0.18, 0.15)),
        product_on_plinth(b, "sneaker-wall", "plinth-03", "court", -4, -5,
                          {"sku": "SNK-COURT-BLK", "category": "sneakers",
                           "name": "Court Noir", "tags": ["classic"]}, (0.36, 0.14, 0.14)),
    ]  # fmt: skip
    sneaker_wall = zone(b, "sneaker-wall", "showroom", "Sneaker wall", (-5, 1.5, -3), (10, 3, 8))
    jackets = [
        product_on_plinth(b, "jacket-gallery", "rail-a", "rain", 4, -5,
                          {"sku": "JKT-RAIN-NVY", "category": "jackets",
                           "name": "Rain Shell Navy", "tags": ["waterproof"]}, (0.5, 0.7, 0.2)),
        product_on_plinth(b, "jacket-gallery", "rail-b", "down", 7, -5,
                          {"sku": "JKT-DOWN-CRM", "category": "jackets",
                           "name": "Down Parka Cream", "tags": ["winter", "premium"]},
                          (0.55, 0.75, 0.25)),
    ]  # fmt: skip
    jacket_gallery = zone(b, "jacket-gallery", "showroom", "Jacket gallery", (5, 1.5, -3),
                          (10, 3, 8))  # fmt: skip
    # Zones are volumes only: their products hang beside them in the hierarchy, under a group
    # named as the zone, so that a zone's scale never scales its products.
    sneaker_group = b.node("sneaker-wall", children=sneakers)
    jacket_group = b.node("jacket-gallery", children=jackets)
    billboard = b.node("lobby-billboard", at=(0, 2.3, -6.9), children=[
        b.box("frame", (0, 0, -0.03), (4.2, 2.4, 0.05), "frame"),
        b.box("screen", (0, 0, 0), (4.0, 2.2, 0.02), "screen",
              {"kind": "placement", "id": "lobby-billboard", "placement_type": "billboard",
               "name": "Lobby billboard"}),
    ])  # fmt: skip
    npc = b.node("camille", at=(4, 0.9, 1.5), children=[
        b.box("body", (0, 0, 0), (0.5, 1.8, 0.3), "npc",
              {"kind": "placement", "id": "npc-greeter", "placement_type": "npc",
               "name": "Camille, the greeter"}),
    ])  # fmt: skip
    root = b.node(SCENE, children=[shell, entrance, sneaker_wall, jacket_gallery,
                                   sneaker_group, jacket_group, billboard, npc])  # fmt: skip
    blob, views, accessors = cube()
    meshes = [
        {"name": name, "primitives": [{"attributes": {"POSITION": 0, "NORMAL": 1,
                                                      "TEXCOORD_0": 2},
                                       "indices": 3, "material": i}]}
        for i, name in enumerate(MATERIALS)
    ]  # fmt: skip
    materials = [
        {"name": name, "pbrMetallicRoughness": {"baseColorFactor": list(colour),
                                                "metallicFactor": metal,
                                                "roughnessFactor": rough}}
        for name, (colour, metal, rough) in MATERIALS.items()
    ]  # fmt: skip
    return {
        "asset": {"version": "2.0", "generator": "worldflow examples/showroom/build_scene.py"},
        "scene": 0,
        "scenes": [{"name": SCENE, "nodes": [root]}],
        "nodes": b.nodes,
        "meshes": meshes,
        "materials": materials,
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(blob), "uri": DATA_URI + base64.b64encode(blob).decode()}],
    }


def main() -> None:
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUT.name}")


if __name__ == "__main__":
    main()
