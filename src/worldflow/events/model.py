"""The canonical event: every wire format (Segment, CloudEvents, the world stream) becomes this.

An event is immutable once it is in the log. Field names are snake_case; times are UTC.
``timestamp`` is the best estimate of when the event happened: the client's time corrected for
clock skew with ``sent_at`` (``received_at - (sent_at - original_timestamp)``), or the explicit
``timestamp`` the client gave, or ``received_at``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

CALL_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    message_id: str
    workspace_id: str
    source_id: str
    channel: str  # the edge it came through: segment | cloudevents | stream
    type: str  # track | identify | page | screen | group | alias
    name: str | None = None  # catalogue name for known events, as sent for custom ones
    custom: bool = False  # True when the name is not in the catalogue
    original_name: str | None = None  # the name as sent, when it was mapped (Segment spec)
    schema_version: int | None = None  # catalogue version of a known event
    tier: int = 1  # privacy tier p0..p3
    timestamp: datetime
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    received_at: datetime
    anonymous_id: str | None = None
    user_id: str | None = None
    previous_id: str | None = None  # alias
    group_id: str | None = None  # group
    properties: dict[str, Any] = {}
    traits: dict[str, Any] = {}
    context: dict[str, Any] = {}
    integrations: dict[str, Any] = {}

    @property
    def identity_key(self) -> str:
        """The key the event is routed by before identity resolution."""
        return self.user_id or self.anonymous_id or self.previous_id or self.message_id


class LoggedEvent(msgspec.Struct, kw_only=True):
    """The fields of a logged :class:`Event` that the processor reads; decoding into it skips
    the others (receipt and send times, integrations…), which it never needs."""

    message_id: str
    workspace_id: str
    source_id: str = ""
    type: str
    name: str | None = None
    custom: bool = False
    tier: int = 1
    timestamp: datetime
    anonymous_id: str | None = None
    user_id: str | None = None
    previous_id: str | None = None
    properties: dict[str, Any] = {}
    traits: dict[str, Any] = {}
    context: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One thing wrong with one field of one incoming message."""

    field: str  # path in the request, e.g. "batch[3].properties.obj.object_id"
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that could not become an event; it is quarantined, never silently dropped."""

    index: int
    message_id: str | None
    code: str
    problems: tuple[FieldProblem, ...]
    payload: bytes

    @property
    def reason(self) -> str:
        return "; ".join(f"{p.field}: {p.message}" for p in self.problems)


# Deeper structures are refused: they serve no analytics purpose and can exhaust the stack of
# whatever reads the event later.
MAX_DEPTH = 32
TOO_DEEP = f"nesting is deeper than {MAX_DEPTH} levels"


def too_deep(raw: bytes, *values: Any) -> bool:
    """Whether any value nests deeper than MAX_DEPTH (walked only when the raw JSON has that
    many containers at all, which typical events do not)."""
    containers = raw.count(b"{")
    if b"[" in raw:  # a memchr: most events carry no list, and then one count will do
        containers += raw.count(b"[")
    if containers <= MAX_DEPTH:
        return False
    stack: list[tuple[Any, int]] = [(v, 1) for v in values]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


encoder = msgspec.json.Encoder()
decoder = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return encoder.encode(event)


def decode_event(body: bytes) -> Event:
    return decoder.decode(body)


decode_logged = msgspec.json.Decoder(LoggedEvent).decode
