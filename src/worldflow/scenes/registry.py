"""What a scene file registers: its tagged nodes as entries (objects, products, zones,
placements), each with a stable object id.

The readers (``gltf.py``, ``x3d.py``) find the tagged nodes and their node paths; this module
checks the tags (the same keys in both formats) and gives each entry its id: the explicit
``id`` of the tag, else ``o_`` and 16 hex digits of a hash of the scene's key and the node
path. A re-export that keeps a node's path (whatever it moved, whatever else changed in the
file) therefore keeps its id; renaming the node or one of its ancestors changes it, unless the
tag names an explicit id. docs/SCENES.md has the convention.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

KINDS: Final = ("object", "product", "zone", "placement")
# The decision API's placement types (decide/definition.py; a test keeps them in step).
PLACEMENT_TYPES: Final = ("billboard", "shelf", "npc", "portal", "screen", "audio")
# The catalogue's zone.entered zone_type values (a test keeps them in step).
ZONE_TYPES: Final = ("showroom", "stage", "lobby", "checkout", "booth", "portal_hub")
FORMATS: Final = ("gltf", "glb", "x3d")
TAG: Final = "worldflow"  # the extras key (glTF) and MetadataSet name (X3D) of a tag

SCENE_KEY: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
EXPLICIT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
MAX_TEXT = 200  # sku, category, name, zone type
MAX_TAGS = 64
MAX_TAG_CHARS = 100
MAX_ENTRIES = 100_000  # per scene
MAX_DEPTH = 256  # node hierarchy levels

# Which keys a tag may hold, by kind (kind and the optional ones every kind may have).
_COMMON = frozenset({"kind", "id", "name", "tags"})
_ALLOWED: Final = {
    "object": _COMMON | {"sku", "category"},
    "product": _COMMON | {"sku", "category"},
    "zone": _COMMON | {"zone_type"},
    "placement": _COMMON | {"placement_type"},
}
_KNOWN = sorted(set().union(*_ALLOWED.values()))


class SceneError(ValueError):
    """A scene file that cannot be registered; the message names the place and the problem."""


@dataclass(frozen=True, slots=True)
class Tagged:
    """A tagged node as a reader found it: its path, its raw tag and how to name its keys in
    an error (``field("kind")`` → ``nodes[3].extras.worldflow.kind``)."""

    node_path: str
    node_name: str | None
    raw: Mapping[str, Any]
    field: Callable[[str], str]
    where: str  # the tag itself, e.g. nodes[3].extras.worldflow


@dataclass(frozen=True, slots=True)
class Entry:
    """One registered object, product, zone or placement."""

    object_id: str
    kind: str
    node_path: str
    name: str | None = None
    sku: str | None = None
    category: str | None = None
    # zone_type, placement_type, tags, explicit_id (true when the id is the tag's own)
    properties: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"object_id": self.object_id, "kind": self.kind,
                               "node_path": self.node_path}  # fmt: skip
        for key in ("name", "sku", "category"):
            if (value := getattr(self, key)) is not None:
                out[key] = value
        out.update(self.properties)
        return out


@dataclass(frozen=True, slots=True)
class Scene:
    key: str
    format: str  # gltf | glb | x3d
    entries: tuple[Entry, ...]

    def counts(self) -> dict[str, int]:
        """Entries per kind, under the API's plural names (objects, products, …)."""
        return count_kinds(e.kind for e in self.entries)


def count_kinds(kinds: Iterable[str]) -> dict[str, int]:
    out = {f"{k}s": 0 for k in KINDS}
    for kind in kinds:
        out[f"{kind}s"] += 1
    return out


def object_id(scene_key: str, node_path: str) -> str:
    """The id of an untagged-id node: the same for the same scene key and node path."""
    digest = hashlib.sha256(f"{scene_key}\n{node_path}".encode()).hexdigest()
    return f"o_{digest[:16]}"


def path_segment(name: str | None, index: int) -> str:
    """A node's part of a node path: its name ('/' and '%' escaped as %2F and %25), or its
    position among its siblings when it has none."""
    if not name:
        return str(index)
    return name.replace("%", "%25").replace("/", "%2F")


def check_key(key: str, where: str = "key") -> str:
    if not SCENE_KEY.fullmatch(key):
        raise SceneError(f"{where}: {key!r} is not a scene key (lower-case letters, "
                         "digits, '.', '_' and '-', at most 64, starting with a letter or "
                         "digit)")  # fmt: skip
    return key


def _text(tag: Tagged, key: str) -> str | None:
    value = tag.raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SceneError(f"{tag.field(key)}: {value!r} is not a string")
    if not value.strip():
        raise SceneError(f"{tag.field(key)}: is empty")
    if len(value) > MAX_TEXT:
        raise SceneError(f"{tag.field(key)}: longer than {MAX_TEXT} characters")
    return value


def _one_of(tag: Tagged, key: str, values: tuple[str, ...]) -> str | None:
    value = _text(tag, key)
    if value is not None and value not in values:
        raise SceneError(f"{tag.field(key)}: {value!r} is not one of {', '.join(values)}")
    return value


def entry(scene_key: str, tag: Tagged) -> Entry:
    """The entry a tagged node registers, its tag checked."""
    raw = tag.raw
    if not isinstance(raw, Mapping):
        raise SceneError(f"{tag.where}: {raw!r} is not an object of tag keys")
    kind = _one_of(tag, "kind", KINDS)
    if kind is None:
        raise SceneError(f"{tag.field('kind')}: required (one of {', '.join(KINDS)})")
    for key in raw:
        if key not in _ALLOWED[kind]:
            if key in _KNOWN:
                raise SceneError(f"{tag.field(key)}: not a key of a {kind} "
                                 f"(a {kind} has {', '.join(sorted(_ALLOWED[kind]))})")  # fmt: skip
            raise SceneError(f"{tag.field(key)}: unknown key; known: {', '.join(_KNOWN)}")
    explicit = _text(tag, "id")
    if explicit is not None and not EXPLICIT_ID.fullmatch(explicit):
        raise SceneError(f"{tag.field('id')}: {explicit!r} is not an id (letters, digits, "
                         "'.', '_', ':', '/' and '-', at most 128, starting with a letter or "
                         "digit)")  # fmt: skip
    sku = _text(tag, "sku")
    if kind == "product" and sku is None:
        raise SceneError(f"{tag.field('sku')}: required for a product")
    properties: dict[str, Any] = {}
    if (zone_type := _one_of(tag, "zone_type", ZONE_TYPES)) is not None:
        properties["zone_type"] = zone_type
    if (placement_type := _one_of(tag, "placement_type", PLACEMENT_TYPES)) is not None:
        properties["placement_type"] = placement_type
    tags = raw.get("tags")
    if tags is not None:
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise SceneError(f"{tag.field('tags')}: {tags!r} is not a list of non-empty strings")
        if len(tags) > MAX_TAGS or any(len(t) > MAX_TAG_CHARS for t in tags):
            raise SceneError(f"{tag.field('tags')}: at most {MAX_TAGS} tags of at most "
                             f"{MAX_TAG_CHARS} characters")  # fmt: skip
        properties["tags"] = list(dict.fromkeys(tags))
    if explicit is not None:
        properties["explicit_id"] = True
    return Entry(
        object_id=explicit if explicit is not None else object_id(scene_key, tag.node_path),
        kind=kind,
        node_path=tag.node_path,
        name=_text(tag, "name") or (tag.node_name[:MAX_TEXT] if tag.node_name else None),
        sku=sku,
        category=_text(tag, "category"),
        properties=properties,
    )


def build(scene_key: str, fmt: str, tagged: Iterable[Tagged]) -> Scene:
    """The scene of these tagged nodes; two entries with one id are refused, naming both."""
    check_key(scene_key)
    entries: list[Entry] = []
    seen: dict[str, Tagged] = {}
    for tag in tagged:
        found = entry(scene_key, tag)
        other = seen.get(found.object_id)
        if other is not None:
            how = ("the same id" if found.properties.get("explicit_id")
                   else f"the same node path {tag.node_path!r}")  # fmt: skip
            raise SceneError(f"{tag.where}: {how} as {other.where} (object id "
                             f"{found.object_id!r}); rename one or give it an explicit "
                             "id")  # fmt: skip
        seen[found.object_id] = tag
        entries.append(found)
        if len(entries) > MAX_ENTRIES:
            raise SceneError(f"more than {MAX_ENTRIES} tagged nodes in one scene")
    return Scene(scene_key, fmt, tuple(entries))


def sniff(data: bytes) -> str | None:
    """The format of a scene file from its first bytes: glb, gltf (JSON) or x3d (XML)."""
    if data[:4] == b"glTF":
        return "glb"
    head = data[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head[:1] == b"{":
        return "gltf"
    if head[:1] == b"<":
        return "x3d"
    return None


def format_of_name(filename: str) -> str | None:
    """The format a file name's extension says (.gltf, .glb, .x3d), if any."""
    suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return suffix if suffix in FORMATS else None


def parse_scene(data: bytes, scene_key: str, fmt: str | None = None,
                size: int | None = None) -> Scene:  # fmt: skip
    """Read a scene file (its format given or sniffed). ``size``: the whole file's size when
    ``data`` is a prefix of a GLB file holding at least its JSON chunk."""
    from worldflow.scenes import gltf, x3d

    check_key(scene_key)
    fmt = fmt or sniff(data)
    if fmt == "glb":
        return build(scene_key, fmt, gltf.tagged(gltf.glb_json(data, size)))
    if fmt == "gltf":
        return build(scene_key, fmt, gltf.tagged(gltf.load_json(data)))
    if fmt == "x3d":
        return build(scene_key, fmt, x3d.tagged(data))
    raise SceneError("not a scene file: neither glTF 2.0 (JSON or GLB) nor X3D (XML)")
