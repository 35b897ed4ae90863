"""Offers and placements: what a world may show and where (docs/DECIDE.md).

An **offer** is content (text, an image, a 3D asset, an NPC's line…) with the placements it
may fill, who may see it (a condition of the segment language, compiled into a hidden
segment ``~offer:<key>.0`` that the processor keeps exact, as journeys' conditions are),
when (validity dates), how often one person may be served it (caps) and a priority. A
**placement** is a slot in a scene — a billboard, a shelf, an NPC, a portal — with the way
it chooses among the eligible offers (``priority``, ``bandit`` or ``recommend``) and the
fallback it shows when none is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from worldflow.journeys.definition import HIDDEN
from worldflow.segments.definition import (
    KEY,
    DefinitionError,
    Segment,
    _fields,
    compile_condition,
    document_header,
)

OFFER: Final = "offer"
PLACEMENT: Final = "placement"
PLACEMENT_TYPES: Final = ("billboard", "shelf", "npc", "portal", "screen", "audio")
STRATEGIES: Final = ("priority", "bandit", "recommend")
CONTENT_TYPES: Final = ("text", "image", "video", "model", "npc_line", "audio", "link")
_OFFER_FIELDS: Final = {"kind", "key", "name", "description", "status", "placements",
                        "content", "eligible", "priority", "valid", "caps", "item"}  # fmt: skip
_PLACEMENT_FIELDS: Final = {"kind", "key", "name", "description", "type", "world", "scene",
                            "object_id", "strategy", "by_segment", "fallback"}  # fmt: skip
_CONTENT_FIELDS: Final = {"type", "text", "title", "image_url", "video_url", "asset_uri",
                          "line", "voice", "link", "alt", "data"}  # fmt: skip
MAX_CONTENT_BYTES: Final = 16_384


@dataclass(slots=True)
class Offer:
    kind = OFFER
    key: str
    version: int
    document: dict[str, Any]
    status: str  # active | paused (served to nobody)
    placements: tuple[str, ...]
    content: dict[str, Any]
    eligible: str | None  # the hidden segment of its condition; None: everybody
    priority: int
    valid_from: int | None  # ms
    valid_until: int | None
    per_day: int | None
    per_week: int | None
    item: str | None  # the product or object it shows (the recommend strategy ranks by it)
    hidden: list[Segment] = field(default_factory=list)

    def valid_at(self, now_ms: int) -> bool:
        return (self.valid_from is None or self.valid_from <= now_ms) and (
            self.valid_until is None or now_ms < self.valid_until)  # fmt: skip


@dataclass(slots=True)
class Placement:
    kind = PLACEMENT
    key: str
    version: int
    document: dict[str, Any]
    type: str
    world: str | None
    strategy: str
    by_segment: tuple[str, ...]  # a bandit per segment (the first one the person is in)
    fallback: dict[str, Any] | None
    hidden: list[Segment] = field(default_factory=list)  # (none: for the processor's sake)


def validate_offer(raw: Any, key: str | None = None) -> dict[str, Any]:
    document = document_header(raw, OFFER, key, _OFFER_FIELDS, "an offer")
    compile_offer(document, 0)
    return document


def validate_placement(raw: Any, key: str | None = None) -> dict[str, Any]:
    document = document_header(raw, PLACEMENT, key, _PLACEMENT_FIELDS, "a placement")
    compile_placement(document, 0)
    return document


def hidden_key(offer: str) -> str:
    return f"{HIDDEN}offer:{offer}"


def compile_offer(document: dict[str, Any], version: int) -> Offer:
    key = document["key"]
    status = document.get("status", "active")
    if status not in ("active", "paused"):
        raise DefinitionError("status", f"{status!r} is not active or paused")
    placements = document.get("placements")
    if not isinstance(placements, list) or not placements or not all(
            isinstance(p, str) and KEY.fullmatch(p) for p in placements):  # fmt: skip
        raise DefinitionError("placements", "is a list of placement keys (at least one)")
    content = _content(document.get("content"), "content")
    hidden: list[Segment] = []
    eligible = None
    if "eligible" in document:
        evaluate, needs = compile_condition(document["eligible"], "eligible")
        if any(s.startswith(HIDDEN) for s in needs.segments):
            raise DefinitionError("eligible", "in_segment cannot name a hidden segment")
        eligible = hidden_key(key)
        hidden.append(Segment(eligible, version, {"kind": "segment", "key": eligible,
                                                  "condition": document["eligible"]},
                              evaluate, needs))  # fmt: skip
    priority = document.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > 10**6:
        raise DefinitionError("priority", f"{priority!r} is not a whole number")
    valid = _fields(document.get("valid", {}), "valid", {"from", "until"})
    bounds = [_moment(valid.get(name), f"valid.{name}") for name in ("from", "until")]
    if bounds[0] is not None and bounds[1] is not None and bounds[1] <= bounds[0]:
        raise DefinitionError("valid.until", "is not after valid.from")
    caps = _fields(document.get("caps", {}), "caps", {"per_day", "per_week"})
    limits = []
    for name in ("per_day", "per_week"):
        value = caps.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):  # fmt: skip
            raise DefinitionError(f"caps.{name}", f"{value!r} is not a whole number >= 1")
        limits.append(value)
    item = document.get("item")
    if item is not None and (not isinstance(item, str) or not 0 < len(item) <= 200):
        raise DefinitionError("item", f"{item!r} is not a product SKU or an object id")
    return Offer(key, version, document, status, tuple(placements), content, eligible,
                 priority, bounds[0], bounds[1], limits[0], limits[1], item,
                 hidden)  # fmt: skip


def compile_placement(document: dict[str, Any], version: int) -> Placement:
    kind = document.get("type")
    if kind not in PLACEMENT_TYPES:
        raise DefinitionError("type", f"{kind!r} is not one of {', '.join(PLACEMENT_TYPES)}")
    strategy = document.get("strategy", "priority")
    if strategy not in STRATEGIES:
        raise DefinitionError("strategy", f"{strategy!r} is not one of {', '.join(STRATEGIES)}")
    by_segment = document.get("by_segment", [])
    if not isinstance(by_segment, list) or not all(
            isinstance(s, str) and KEY.fullmatch(s) for s in by_segment):  # fmt: skip
        raise DefinitionError("by_segment", "is a list of segment keys")
    if by_segment and strategy != "bandit":
        raise DefinitionError("by_segment", "applies to the bandit strategy only")
    world = document.get("world")
    if world is not None and (not isinstance(world, str) or not 0 < len(world) <= 64):
        raise DefinitionError("world", f"{world!r} is not a world id")
    fallback = _content(document["fallback"], "fallback") if "fallback" in document else None
    return Placement(document["key"], version, document, kind, world, strategy,
                     tuple(by_segment), fallback)  # fmt: skip


def _content(raw: Any, path: str) -> dict[str, Any]:
    spec = _fields(raw, path, _CONTENT_FIELDS, ("type",))
    if spec["type"] not in CONTENT_TYPES:
        raise DefinitionError(f"{path}.type", f"{spec['type']!r} is not one of "
                              f"{', '.join(CONTENT_TYPES)}")  # fmt: skip
    for name, value in spec.items():
        if name != "data" and not isinstance(value, str):
            raise DefinitionError(f"{path}.{name}", "is a string")
    if "data" in spec and not isinstance(spec["data"], dict):
        raise DefinitionError(f"{path}.data", "is an object, passed to the world as it is")
    if len(json.dumps(spec)) > MAX_CONTENT_BYTES:
        raise DefinitionError(path, f"is larger than {MAX_CONTENT_BYTES} bytes as JSON")
    return dict(spec)


def _moment(value: Any, path: str) -> int | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise DefinitionError(path, f"{value!r} is not a date and time with its offset, such "
                              "as 2026-12-24T18:00:00+01:00")  # fmt: skip
    return int(moment.timestamp() * 1000)
