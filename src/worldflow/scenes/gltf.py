"""glTF 2.0 scenes, JSON (``.gltf``) and binary (``.glb``): the node hierarchy of every scene
with the nodes' names and ``extras``.

Only the JSON is read: buffers, images and the GLB's binary chunk are never decoded or
fetched (a ``uri`` is not followed), so a scene with large meshes costs what its node list
costs. The hierarchy is checked as the specification requires (indices in range, at most one
parent per node, no cycles); an error names the place, e.g. ``nodes[3].children[0]``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any, Final

from worldflow.scenes.registry import MAX_DEPTH, TAG, SceneError, Tagged, path_segment

GLB_MAGIC: Final = b"glTF"
GLB_HEADER = 12  # magic, version, length
CHUNK_HEADER = 8  # length, type
JSON_CHUNK: Final = 0x4E4F534A  # "JSON"


def glb_prefix_length(prefix: bytes) -> int | None:
    """How many bytes of a GLB file hold its header and its JSON chunk, once ``prefix`` has
    the 20 bytes that tell (None before)."""
    if len(prefix) < GLB_HEADER + CHUNK_HEADER:
        return None
    (chunk_length,) = struct.unpack_from("<I", prefix, GLB_HEADER)
    return int(GLB_HEADER + CHUNK_HEADER + chunk_length)


def glb_json(data: bytes, size: int | None = None) -> Any:
    """The JSON document of a GLB file; ``size`` is the file's size when ``data`` is only its
    beginning (which must hold the JSON chunk)."""
    if len(data) < GLB_HEADER + CHUNK_HEADER:
        raise SceneError(f"GLB: {len(data)} bytes, shorter than a header and a chunk header")
    magic, version, length = struct.unpack_from("<4sII", data)
    if magic != GLB_MAGIC:
        raise SceneError(f"GLB header: magic {magic!r} is not b'glTF'")
    if version != 2:
        raise SceneError(f"GLB header: version {version} is not 2 (only glTF 2.0 is read)")
    actual = len(data) if size is None else size
    if length != actual:
        raise SceneError(f"GLB header: length {length} but the file has {actual} bytes")
    chunk_length, chunk_type = struct.unpack_from("<II", data, GLB_HEADER)
    if chunk_type != JSON_CHUNK:
        raise SceneError(f"GLB chunks[0]: type 0x{chunk_type:08X} is not JSON (0x{JSON_CHUNK:08X})"
                         "; the first chunk must be the JSON one")  # fmt: skip
    start = GLB_HEADER + CHUNK_HEADER
    if start + chunk_length > min(len(data), actual):
        raise SceneError(f"GLB chunks[0]: length {chunk_length} runs past the end of the file")
    return load_json(data[start : start + chunk_length], "GLB chunks[0] (JSON)")


def load_json(data: bytes, where: str = "glTF") -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise SceneError(f"{where}: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise SceneError(f"{where}: not valid JSON ({exc})") from None


def _indices(value: Any, where: str, count: int) -> list[int]:
    if not isinstance(value, list):
        raise SceneError(f"{where}: {_short(value)} is not a list of node indices")
    for i, index in enumerate(value):
        if type(index) is not int or not 0 <= index < count:
            last = f"0..{count - 1}" if count else "there are no nodes"
            raise SceneError(f"{where}[{i}]: {_short(index)} is not the index of a node ({last})")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def tagged(doc: Any) -> list[Tagged]:
    """The tagged nodes of every scene of a glTF document, in hierarchy order; a node that is a
    root of several scenes counts once."""
    if not isinstance(doc, dict):
        raise SceneError("glTF: the top level is not a JSON object")
    asset = doc.get("asset")
    version = asset.get("version") if isinstance(asset, dict) else None
    if not isinstance(version, str):
        raise SceneError('asset.version: required (a glTF 2.0 file has "asset": {"version": '
                         '"2.0"})')  # fmt: skip
    if not version.startswith("2."):
        raise SceneError(f"asset.version: {version!r} is not 2.x (only glTF 2.0 is read)")
    nodes = doc.get("nodes", [])
    if not isinstance(nodes, list):
        raise SceneError(f"nodes: {_short(nodes)} is not a list")
    count = len(nodes)
    parent: dict[int, int] = {}
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise SceneError(f"nodes[{i}]: {_short(node)} is not an object")
        name = node.get("name")
        if name is not None and not isinstance(name, str):
            raise SceneError(f"nodes[{i}].name: {_short(name)} is not a string")
        for j, child in enumerate(_indices(node.get("children", []), f"nodes[{i}].children",
                                           count)):  # fmt: skip
            if child in parent:
                raise SceneError(f"nodes[{i}].children[{j}]: nodes[{child}] is already a "
                                 f"child of nodes[{parent[child]}] (a node has at most one "
                                 "parent)")  # fmt: skip
            parent[child] = i
    _check_acyclic(nodes, parent)
    scenes = doc.get("scenes")
    if scenes is None:  # a library of nodes: every node without a parent is a root
        roots = [[i for i in range(count) if i not in parent]]
    else:
        if not isinstance(scenes, list):
            raise SceneError(f"scenes: {_short(scenes)} is not a list")
        roots = []
        for s, scene in enumerate(scenes):
            if not isinstance(scene, dict):
                raise SceneError(f"scenes[{s}]: {_short(scene)} is not an object")
            listed = _indices(scene.get("nodes", []), f"scenes[{s}].nodes", count)
            for k, root in enumerate(listed):
                if root in parent:
                    raise SceneError(f"scenes[{s}].nodes[{k}]: nodes[{root}] is a child of "
                                     f"nodes[{parent[root]}], not a root")  # fmt: skip
            roots.append(listed)
    out: list[Tagged] = []
    seen: set[int] = set()
    for listed in roots:
        stack = [(root, path_segment(nodes[root].get("name"), k), 1)
                 for k, root in reversed(list(enumerate(listed)))]  # fmt: skip
        while stack:
            index, path, depth = stack.pop()
            if index in seen:
                continue
            seen.add(index)
            if depth > MAX_DEPTH:
                raise SceneError(f"nodes[{index}]: deeper than {MAX_DEPTH} levels of children")
            node = nodes[index]
            extras = node.get("extras")
            if isinstance(extras, dict) and TAG in extras:
                where = f"nodes[{index}].extras.{TAG}"
                out.append(Tagged(path, node.get("name") or None, extras[TAG],
                                  _field_of(where), where))  # fmt: skip
            children = node.get("children", [])
            stack.extend((child, f"{path}/{path_segment(nodes[child].get('name'), j)}", depth + 1)
                         for j, child in reversed(list(enumerate(children))))  # fmt: skip
    return out


def _field_of(where: str) -> Callable[[str], str]:
    return lambda key: f"{where}.{key}"


def _check_acyclic(nodes: list[Any], parent: dict[int, int]) -> None:
    """With at most one parent per node, a node is in (or under) a cycle exactly when no node
    without a parent reaches it."""
    reached: set[int] = set()
    stack = [i for i in range(len(nodes)) if i not in parent]
    while stack:
        index = stack.pop()
        reached.add(index)
        stack.extend(nodes[index].get("children", []))
    if len(reached) == len(nodes):
        return
    # Follow the parents of a node not reached until one repeats: that one is in the cycle.
    current = next(i for i in range(len(nodes)) if i not in reached)
    walked: set[int] = set()
    while current not in walked:
        walked.add(current)
        current = parent[current]
    raise SceneError(f"nodes[{current}].children: the hierarchy has a cycle through "
                     f"nodes[{current}] (it must be a set of trees)")  # fmt: skip
