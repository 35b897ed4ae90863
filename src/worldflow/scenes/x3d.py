"""X3D scenes in the XML encoding: tags from ``MetadataSet`` nodes named ``worldflow`` on
``Transform``, ``Group`` and ``Shape`` nodes, whose ``DEF`` names are the node names.

The XML is parsed with defusedxml: no entity is declared or expanded (the billion laughs and
their kin are refused), no external reference is followed, and a DOCTYPE is accepted only
without an internal subset (exporters write one naming the X3D DTD, which is never read).
``Inline`` and ``USE`` nodes are not followed: a scene registers the nodes it defines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import DefusedXMLParser

from worldflow.scenes.registry import MAX_DEPTH, TAG, SceneError, Tagged, path_segment

# Nodes that make up node paths (the grouping nodes and Shape); others (geometry, appearance,
# viewpoints, lights…) are not descended into.
PATH_NODES: Final = frozenset({
    "Transform", "Group", "Shape", "Anchor", "Billboard", "Collision", "LOD", "Switch",
    "StaticGroup", "CADAssembly", "CADLayer", "CADPart", "CADFace",
})  # fmt: skip
TAGGABLE: Final = ("Transform", "Group", "Shape")
_QUOTED = re.compile(r'\s*"((?:[^"\\]|\\.)*)"\s*,?')
_ESCAPE = re.compile(r"\\(.)")


class _Parser(DefusedXMLParser):
    """defusedxml's parser, with a DOCTYPE allowed as long as it declares nothing."""

    def __init__(self) -> None:
        super().__init__(target=TreeBuilder(), forbid_dtd=True, forbid_entities=True,
                         forbid_external=True)  # fmt: skip

    def defused_start_doctype_decl(self, name: str, sysid: str | None, pubid: str | None,
                                   has_internal_subset: bool) -> None:  # fmt: skip
        if has_internal_subset:
            raise DTDForbidden(name, sysid, pubid)


def parse_xml(data: bytes) -> Element:
    parser = _Parser()
    try:
        parser.feed(data)
        root: Element = parser.close()
    except DTDForbidden:
        raise SceneError("X3D: a DOCTYPE with an internal subset ([...]) is refused; "
                         "declarations are not read") from None  # fmt: skip
    except EntitiesForbidden as exc:
        raise SceneError(f"X3D: entity declarations are refused (entity {exc.name!r})") from None
    except ExternalReferenceForbidden as exc:
        raise SceneError(f"X3D: external references are refused ({exc.sysid!r})") from None
    except ParseError as exc:
        raise SceneError(f"X3D: not well-formed XML ({exc})") from None
    return root


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def mfstring(value: str, where: str) -> list[str]:
    """The strings of an X3D MFString attribute (``"a" "b \\"c\\""``); a value without quotes
    is one string, as lenient readers take it."""
    text = value.strip()
    if not text.startswith('"'):
        return [text] if text else []
    out: list[str] = []
    pos = 0
    while pos < len(text):
        match = _QUOTED.match(text, pos)
        if match is None:
            raise SceneError(f'{where}: {value!r} is not an MFString ("one" "two")')
        out.append(_ESCAPE.sub(r"\1", match.group(1)))
        pos = match.end()
    return out


def _children(element: Element, xpath: str) -> list[tuple[Element, str, str]]:
    """(child, its local name, its XPath) for every child element."""
    out = []
    seen: dict[str, int] = {}
    for child in element:
        if not isinstance(child.tag, str):  # comments, processing instructions
            continue
        name = _local(child.tag)
        seen[name] = seen.get(name, 0) + 1
        out.append((child, name, f"{xpath}/{name}[{seen[name]}]"))
    return out


def _place(xpath: str, element: Element) -> str:
    """An XPath naming a node by its DEF where it has one: readers find that in their file."""
    name = element.get("DEF")
    if name is None:
        return xpath
    return xpath.rsplit("[", 1)[0] + f"[@DEF={name!r}]"


def _tag(element: Element, name: str, xpath: str) -> tuple[str, dict[str, object]] | None:
    """The worldflow MetadataSet of a node, as (its place, its keys), if it has one."""
    found = None
    for child, child_name, child_xpath in _children(element, xpath):
        if child_name != "MetadataSet" or child.get("name") != TAG or child.get("USE"):
            continue
        where = f"{xpath}/MetadataSet[@name='{TAG}']"
        if found is not None:
            raise SceneError(f"{where}: a node has at most one {TAG} MetadataSet")
        if name not in TAGGABLE:
            raise SceneError(f"{where}: tags go on {', '.join(TAGGABLE)} nodes, not {name}")
        found = where, _keys(child, child_xpath, where)
    return found


def _keys(metadata: Element, xpath: str, where: str) -> dict[str, object]:
    raw: dict[str, object] = {}
    for child, name, child_xpath in _children(metadata, xpath):
        key = child.get("name")
        if name != "MetadataString":
            raise SceneError(f"{child_xpath}: the keys of a {TAG} MetadataSet are "
                             f"MetadataString nodes, not {name}")  # fmt: skip
        if not key:
            raise SceneError(f"{child_xpath}: a MetadataString needs a name (the key)")
        place = f"{where}/MetadataString[@name={key!r}]"
        if key in raw:
            raise SceneError(f"{place}: the key is given twice")
        value = child.get("value")
        if value is None:
            raise SceneError(f"{place}: value is required")
        values = mfstring(value, place)
        if key == "tags":
            raw[key] = values
        elif len(values) != 1:
            raise SceneError(f"{place}: one value expected, not {len(values)}")
        else:
            raw[key] = values[0]
    return raw


def _field_of(where: str) -> Callable[[str], str]:
    return lambda key: f"{where}/MetadataString[@name={key!r}]"


def tagged(data: bytes) -> list[Tagged]:
    """The tagged nodes of an X3D document, parents before their children."""
    root = parse_xml(data)
    if _local(root.tag) != "X3D":
        raise SceneError(f"X3D: the root element is <{_local(root.tag)}>, not <X3D>")
    scene = next((c for c in root if isinstance(c.tag, str) and _local(c.tag) == "Scene"), None)
    if scene is None:
        raise SceneError("X3D: no <Scene> element under <X3D>")
    out: list[Tagged] = []
    # (element, its local name, node path, place, depth), parents before their children
    stack = list(reversed(_path_children(scene, "", "/X3D/Scene", 1)))
    while stack:
        element, name, path, place, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SceneError(f"{place}: deeper than {MAX_DEPTH} levels of grouping nodes")
        found = _tag(element, name, place)
        if found is not None:
            where, raw = found
            out.append(Tagged(path, element.get("DEF") or None, raw, _field_of(where), where))
        stack.extend(reversed(_path_children(element, path, place, depth + 1)))
    return out


def _path_children(element: Element, path: str, place: str,
                   depth: int) -> list[tuple[Element, str, str, str, int]]:  # fmt: skip
    """The children of a node that are nodes of node paths (USE references are not)."""
    out: list[tuple[Element, str, str, str, int]] = []
    for child, name, child_xpath in _children(element, place):
        if name not in PATH_NODES or child.get("USE") is not None:
            continue
        segment = path_segment(child.get("DEF") or None, len(out))
        out.append((child, name, f"{path}/{segment}" if path else segment,
                    _place(child_xpath, child), depth))  # fmt: skip
    return out
