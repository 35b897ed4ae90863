"""Hypothesis strategies for Worldflow's wire formats.

Three kinds of input for every ingest edge: random bytes, arbitrary JSON, and "almost valid"
messages: a valid Segment call or CloudEvent with a few fields mutated (wrong types, missing,
huge strings, unicode, nested junk, odd timestamps). Values are plain Python objects; turn them
into request bodies with :func:`dumps`, which can also embed JSON nested deeper than the
``json`` module will encode (:class:`RawJSON`).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

# --- Encoding ------------------------------------------------------------------------------


class RawJSON:
    """JSON text that :func:`dumps` embeds verbatim (e.g. nesting deeper than ``json`` allows).

    Not a ``str`` subclass: Hypothesis maps generated strings back to its choices."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def shallow(self) -> Any:
        """The outermost level as Python values, with an opaque object inside."""
        if self.text.startswith("["):
            return [RawJSON(self.text[1:-1])]
        return {"a": RawJSON(self.text.removeprefix('{"a":')[:-1])}

    def __repr__(self) -> str:
        shown = self.text if len(self.text) <= 60 else f"{self.text[:28]}...{self.text[-28:]}"
        return f"RawJSON({shown!r}, {len(self.text)} chars)"


def dumps(value: Any, *, ascii_only: bool = True) -> bytes:
    """Encode ``value`` as JSON, with :class:`RawJSON` values spliced in as they are."""
    raws: dict[str, str] = {}

    def swap(node: Any) -> Any:
        if isinstance(node, RawJSON):
            token = f"\x00raw-{uuid.uuid4().hex}\x00"
            raws[json.dumps(token)] = node.text
            return token
        if isinstance(node, dict):
            return {key: swap(item) for key, item in node.items()}
        if isinstance(node, list):
            return [swap(item) for item in node]
        return node

    text = json.dumps(swap(value), ensure_ascii=ascii_only, allow_nan=False)
    for token, raw in raws.items():
        text = text.replace(token, raw, 1)
    return text.encode("utf-8", "surrogatepass")


def opened(doc: Any) -> Any:
    """``doc`` with its top level and the values of a top-level object as Python values: what a
    test can know of a document that nests deeper than ``json.loads`` reads."""
    if isinstance(doc, RawJSON):
        return doc.shallow()
    if isinstance(doc, dict):
        return {k: v.shallow() if isinstance(v, RawJSON) else v for k, v in doc.items()}
    return doc


# --- Building blocks -----------------------------------------------------------------------


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each chosen in proportion to its weight (``st.one_of`` gives
    every distinct strategy the same chance and counts a repeated one once)."""
    choices = [strategy for weight, strategy in options for _ in range(weight)]
    return st.integers(0, len(choices) - 1).flatmap(lambda index: choices[index])


INT64 = 2**63 - 1

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-INT64, max_value=INT64),
    st.integers(),  # beyond 64 bits too
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)

json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON document (as Python values)."""

json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=5)

random_bytes = st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=64).map(lambda b: b"\x1f\x8b" + b),  # looks gzipped, is not
    st.text(max_size=200).map(lambda t: t.encode()),
)

huge_strings = st.builds(
    lambda char, size: char * size,
    st.sampled_from(["x", "é", "🎉", "\u0000", "\\", '"']),
    st.sampled_from([199, 200, 201, 1_000, 40_000]),
)
"""Strings around the 200-character id limit and past the 32 KB message limit."""

odd_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "\u0000", "é", "🎉", "\u202e", "null", "ｆｕｌｌ", "a\nb", "💩" * 3]),
    huge_strings,
)


def _nested(depth: int, opener: str) -> RawJSON:
    if opener == "[":
        return RawJSON("[" * depth + "1" + "]" * depth)
    return RawJSON('{"a":' * depth + "1" + "}" * depth)


deep_nesting = st.builds(
    _nested, st.sampled_from([2, 30, 40, 300, 1_100, 5_000]), st.sampled_from(["[", "{"])
)
"""Lists or objects nested from 2 to 5000 levels (past any recursion limit)."""

junk = st.one_of(json_values, odd_text, deep_nesting)
"""A value of the wrong type, or the right type with odd content."""

_OFFSETS = [
    UTC,
    timezone(timedelta(hours=1)),
    timezone(timedelta(hours=-1)),
    timezone(timedelta(hours=14)),
    timezone(timedelta(hours=-12)),
    timezone(timedelta(hours=5, minutes=30)),
]

valid_timestamps = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.isoformat().replace("+00:00", "Z"))

# The ends of the calendar, where converting to UTC or correcting skew leaves it.
_CALENDAR_ENDS = st.sampled_from(
    [
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "0001-01-01T00:30:00+14:00",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-01:00",
        "9999-12-31T12:00:00-12:00",
    ]
)

odd_timestamps = weighted(
    (2, _CALENDAR_ENDS),
    (
        1,
        st.sampled_from(
            [
                "1970-01-01T00:00:00Z",
                "2024-02-30T00:00:00Z",
                "2016-12-31T23:59:60Z",
                "2024-01-01T00:00:00.123456789Z",
                "2024-01-01t00:00:00z",
                "2024-01-01 00:00:00",
                "2024-01-01",
                "2024-01-01T00:00:00+25:00",
                "now",
                "",
            ]
        ),
    ),
    (
        1,
        st.datetimes(
            min_value=datetime(1, 1, 2),
            max_value=datetime(9999, 12, 30),
            timezones=st.sampled_from(_OFFSETS) | st.none(),
        ).map(datetime.isoformat),
    ),
    (1, st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.none()),
)
"""Timestamps at the edges of the calendar, malformed, of the wrong type, or with offsets."""

message_ids = st.one_of(st.uuids().map(str), st.text(min_size=1, max_size=40))
identities = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=24),
    st.integers(min_value=0, max_value=INT64),
    st.text(min_size=1, max_size=40),
)

# --- Segment -------------------------------------------------------------------------------

CALLS = ("track", "identify", "page", "screen", "group", "alias")
SEGMENT_FIELDS = (
    "type", "event", "name", "category", "userId", "anonymousId", "previousId", "groupId",
    "messageId", "timestamp", "originalTimestamp", "sentAt", "properties", "traits", "context",
    "integrations", "channel",
)  # fmt: skip
_TIMESTAMP_FIELDS = ("timestamp", "originalTimestamp", "sentAt")


def _obj() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"object_id": st.text(min_size=1, max_size=20)},
        optional={
            "product": st.fixed_dictionaries({"sku": st.text(min_size=1, max_size=10)}),
            "tags": st.lists(st.text(max_size=8), max_size=3),
        },
    )


_money = st.fixed_dictionaries(
    {
        "amount": st.sampled_from(["12.50", "0", "-3", "999999.99"]) | st.integers(0, 10**6),
        "currency": st.sampled_from(["USD", "EUR", "GEMS"]),
    },
    optional={"kind": st.sampled_from(["fiat", "virtual"])},
)

_products = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "product_id": st.text(max_size=10) | st.integers(),
            "sku": st.text(max_size=10),
            "quantity": st.integers(-2, 5) | st.floats(allow_nan=False, allow_infinity=False),
            "price": st.floats(allow_nan=False) | st.text(max_size=8) | st.integers(),
            "currency": st.text(max_size=5),
        },
    )
    | json_values,
    max_size=3,
)

# Event name → properties that make it valid (catalogue events, Segment e-commerce names, custom).
TRACK_EVENTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "zone.entered": st.fixed_dictionaries(
        {"zone_id": st.text(min_size=1, max_size=20)},
        optional={"zone_type": st.sampled_from(["showroom", "stage", "lobby"])},
    ),
    "session.heartbeat": st.fixed_dictionaries(
        {}, optional={"active_ms": st.integers(0, 10**9), "idle_ms": st.integers(0, 10**9)}
    ),
    "consent.updated": st.fixed_dictionaries(
        {"scopes": st.dictionaries(st.sampled_from(["analytics", "gaze"]), st.booleans())}
    ),
    "cart.item_added": st.fixed_dictionaries(
        {"obj": _obj()}, optional={"qty": st.integers(1, 10), "money": _money}
    ),
    "order.completed": st.fixed_dictionaries(
        {"order_id": st.text(min_size=1, max_size=12)}, optional={"total": _money}
    ),
    "Product Viewed": st.fixed_dictionaries(
        {}, optional={"product_id": st.text(max_size=10), "sku": st.text(max_size=10)}
    ),
    "Product Added": st.fixed_dictionaries(
        {},
        optional={
            "product_id": st.text(max_size=10) | st.integers(),
            "quantity": st.integers(-1, 5),
            "price": st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
            "currency": st.text(max_size=5),
        },
    ),
    "Order Completed": st.fixed_dictionaries(
        {},
        optional={
            "order_id": st.text(max_size=10),
            "products": _products,
            "revenue": st.floats(allow_nan=False, allow_infinity=False),
        },
    ),
    "Checkout Started": st.fixed_dictionaries(
        {}, optional={"products": _products, "value": st.integers() | st.text(max_size=6)}
    ),
    "Promotion Clicked": st.fixed_dictionaries(
        {}, optional={"promotion_id": st.text(max_size=8), "position": st.integers()}
    ),
    "Custom Thing Happened": json_objects,
}


@st.composite
def valid_segment_messages(draw: st.DrawFn, call: str | None = None) -> dict[str, Any]:
    """A Segment call that the spec allows (the catalogue's field types included)."""
    kind = call or draw(st.sampled_from(CALLS))
    msg: dict[str, Any] = {"type": kind}
    if draw(st.booleans()):
        msg["messageId"] = draw(message_ids)
    if kind == "alias":
        msg["previousId"] = draw(identities)
        msg["userId"] = draw(identities)
    else:
        who = draw(st.sampled_from(["userId", "anonymousId", "both"]))
        if who in ("userId", "both"):
            msg["userId"] = draw(identities)
        if who in ("anonymousId", "both"):
            msg["anonymousId"] = draw(identities)
    if kind == "track":
        event = draw(st.sampled_from(sorted(TRACK_EVENTS)))
        msg["event"] = event
        msg["properties"] = draw(TRACK_EVENTS[event])
    elif kind in ("page", "screen"):
        msg["name"] = draw(st.text(max_size=20))
        if draw(st.booleans()):
            msg["category"] = draw(st.text(max_size=10))
        msg["properties"] = draw(json_objects)
    elif kind == "identify":
        msg["traits"] = draw(json_objects)
    elif kind == "group":
        msg["groupId"] = draw(identities)
        msg["traits"] = draw(json_objects)
    if draw(st.booleans()):
        msg["timestamp"] = draw(valid_timestamps)
    if draw(st.booleans()):
        msg["context"] = draw(json_objects)
    return msg


_MUTATIONS = ("drop", "junk", "huge", "unicode", "nest", "timestamp", "extra", "prop")


def _mutate(draw: st.DrawFn, doc: dict[str, Any], fields: tuple[str, ...], nested: str) -> None:
    """Apply one mutation to ``doc`` (in place); ``nested`` names its dict of free properties."""
    mutation = draw(st.sampled_from(_MUTATIONS))
    key = draw(st.sampled_from(fields))
    if mutation == "drop":
        doc.pop(key, None)
    elif mutation == "junk":
        doc[key] = draw(junk)
    elif mutation == "huge":
        doc[key] = draw(huge_strings)
    elif mutation == "unicode":
        doc[key] = draw(st.text(min_size=1, max_size=30))
    elif mutation == "nest":
        doc[key] = draw(deep_nesting)
    elif mutation == "timestamp":
        doc[draw(st.sampled_from(_TIMESTAMP_FIELDS if fields is SEGMENT_FIELDS else ("time",)))] = (
            draw(odd_timestamps)
        )
    elif mutation == "extra":
        doc[draw(st.text(max_size=25))] = draw(junk)
    else:  # "prop": one of the free properties (catalogue fields among them) gets junk
        props = doc.get(nested)
        if not isinstance(props, dict):
            props = doc[nested] = {}
        names = sorted(props) or ["zone_id"]
        props[draw(st.sampled_from([*names, "obj", "money", "qty", "products"]))] = draw(junk)


@st.composite
def almost_valid_segment_messages(draw: st.DrawFn, call: str | None = None) -> dict[str, Any]:
    """A valid Segment call with zero to three fields mutated (one time in three, a timestamp)."""
    msg = draw(valid_segment_messages(call))
    for _ in range(draw(st.integers(0, 3))):
        _mutate(draw, msg, SEGMENT_FIELDS, "properties")
    if draw(st.integers(0, 2)) == 0:
        msg[draw(st.sampled_from(_TIMESTAMP_FIELDS))] = draw(odd_timestamps)
    return msg


mostly_messages = weighted((3, almost_valid_segment_messages()), (1, junk))
"""Almost valid Segment calls, one time in four junk."""


@st.composite
def segment_batches(draw: st.DrawFn) -> dict[str, Any]:
    """``{"batch": [...]}`` of almost valid calls and junk, with odd batch-level fields."""
    messages = draw(
        st.lists(mostly_messages, max_size=8)
        if draw(st.integers(0, 4))
        else st.lists(valid_segment_messages(), max_size=8)
    )
    body: dict[str, Any] = {"batch": messages}
    if draw(st.booleans()):
        body["sentAt"] = draw(st.one_of(valid_timestamps, odd_timestamps))
    if draw(st.integers(0, 4)) == 0:
        body["context"] = draw(junk)
    if draw(st.integers(0, 6)) == 0:
        body[draw(st.sampled_from(["batch", "sentAt", "writeKey", "integrations"]))] = draw(junk)
    return body


# --- CloudEvents ---------------------------------------------------------------------------

CE_ATTRIBUTES = (
    "id", "source", "type", "specversion", "time", "subject", "datacontenttype", "data",
    "data_base64", "userid", "anonymousid", "sessionid", "worldid",
)  # fmt: skip
_CE_TYPES = ["zone.entered", "io.worldflow.zone.entered", "session.heartbeat", "custom.thing"]
_BAD_EXTENSION_NAMES = ["Bad", "with-dash", "under_score", "x" * 21, "é", "sp ace", "A1"]


@st.composite
def valid_cloudevents(draw: st.DrawFn) -> dict[str, Any]:
    """A CloudEvent 1.0 that Worldflow accepts."""
    kind = draw(st.sampled_from(_CE_TYPES))
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": draw(message_ids),
        "source": draw(st.sampled_from(["/worlds/paris", "urn:game:1", "https://x.test/s"])),
        "type": kind,
    }
    who = draw(st.sampled_from(["userid", "anonymousid", "both"]))
    if who in ("userid", "both"):
        event["userid"] = draw(st.text(min_size=1, max_size=20))
    if who in ("anonymousid", "both"):
        event["anonymousid"] = draw(st.text(min_size=1, max_size=20))
    name = kind.removeprefix("io.worldflow.")
    if name in TRACK_EVENTS:
        event["data"] = draw(TRACK_EVENTS[name])
    elif draw(st.booleans()):
        event["data"] = draw(json_values)
    if draw(st.booleans()):
        event["time"] = draw(valid_timestamps)
    if draw(st.booleans()):
        event["subject"] = draw(st.text(max_size=10))
    if draw(st.booleans()):
        event["sessionid"] = draw(st.text(max_size=10))
    if draw(st.booleans()):
        event["worldid"] = draw(st.text(max_size=10))
    return event


@st.composite
def almost_valid_cloudevents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid CloudEvent with zero to three attributes mutated (often an odd time)."""
    event = draw(valid_cloudevents())
    for _ in range(draw(st.integers(0, 3))):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            event["specversion"] = draw(st.sampled_from(["0.3", "1.1", "", "1"]) | junk)
        elif choice == 1:
            event[draw(st.sampled_from(_BAD_EXTENSION_NAMES))] = draw(json_scalars)
        else:
            _mutate(draw, event, CE_ATTRIBUTES, "data")
    if draw(st.integers(0, 3)) == 0:
        event["time"] = draw(odd_timestamps)
    return event


cloudevent_batches = st.one_of(
    st.lists(weighted((3, almost_valid_cloudevents()), (1, junk)), max_size=6),
    st.lists(valid_cloudevents(), max_size=6),
    junk,
)


_HEADER_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")


def _header_text(value: Any) -> str:
    text = value if isinstance(value, str) else dumps(value).decode()
    # Header values: printable ASCII, no surrounding blanks, as HTTP clients send them.
    return "".join(c for c in text if " " <= c <= "~")[:200].strip()


@st.composite
def binary_cloudevents(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    """A binary-mode request: attributes in ``ce-*`` headers, the data as the body."""
    event = draw(almost_valid_cloudevents())
    data = event.pop("data", None)
    event.pop("datacontenttype", None)
    headers = {
        f"ce-{key}": _header_text(value)
        for key, value in event.items()
        if _HEADER_NAME.fullmatch(key)  # a client cannot send other names
    }
    headers["ce-specversion"] = headers.get("ce-specversion", "1.0")
    content_type = draw(st.sampled_from(["application/json", "text/plain", ""]))
    if content_type:
        headers["content-type"] = content_type
    if data is None:
        body = draw(st.sampled_from([b"", b"{", b"\xff\xfe"]))
    elif content_type == "application/json":
        body = dumps(data)
    else:
        body = _header_text(data).encode()
    return headers, body


# --- The WebSocket stream ------------------------------------------------------------------


@st.composite
def stream_frames(draw: st.DrawFn) -> tuple[Any, str | bytes]:
    """A frame of ``/v1/stream``: a batch frame, a single call, JSON junk or random bytes; with
    the document it encodes (None for random bytes)."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return None, draw(random_bytes)
    doc: Any
    if kind == 1:
        doc = draw(junk)
        return doc, dumps(doc).decode()
    if kind == 2:
        doc = draw(almost_valid_segment_messages())
        return doc, dumps(doc).decode()
    frame: dict[str, Any] = {
        "id": draw(st.integers(0, 10**6) | st.text(max_size=10) | st.none()),
        "batch": draw(st.lists(mostly_messages, max_size=6)),
    }
    if draw(st.integers(0, 5)) == 0:
        frame[draw(st.sampled_from(["id", "batch", "sentAt"]))] = draw(junk)
    return frame, dumps(frame).decode()


# --- Expected message ids ------------------------------------------------------------------


def segment_message_id(message: Any) -> str | None:
    """The message id the server must store for a call, when the test can know it in advance:
    a non-empty string, or an integer (stored as its decimal text)."""
    if not isinstance(message, dict):
        return None
    value = message.get("messageId")
    if isinstance(value, str) and value and len(value) <= 200:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= INT64:
        return str(value)
    return None


def cloudevent_message_id(event: Any) -> str | None:
    """``source#id``, the CloudEvents deduplication key, when it fits as a message id."""
    if not isinstance(event, dict):
        return None
    source, event_id = event.get("source"), event.get("id")
    if isinstance(source, str) and source and isinstance(event_id, str) and event_id:
        joined = f"{source}#{event_id}"
        return joined if len(joined) <= 200 else None
    return None
