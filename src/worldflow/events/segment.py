"""Segment spec calls (track, identify, page, screen, group, alias; batch) → canonical events.

Each message of a batch is decoded on its own (the batch keeps them as raw JSON), so one bad
message is quarantined with the path of the offending field while its neighbours are stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from worldflow.events.catalogue import Catalogue
from worldflow.events.model import (
    CALL_TYPES,
    TOO_DEEP,
    Event,
    FieldProblem,
    Rejected,
    too_deep,
)

Id = str | int | float | None

# Per-call type: fields the spec requires beyond userId/anonymousId.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "track": ("event",),
    "alias": ("previousId", "userId"),
    "group": ("groupId",),
}

# The short paths analytics.js uses (/v1/t, /v1/i, ...) and the long ones.
PATH_TYPES: dict[str, str] = {
    "track": "track", "t": "track",
    "identify": "identify", "i": "identify",
    "page": "page", "p": "page",
    "screen": "screen", "s": "screen",
    "group": "group", "g": "group",
    "alias": "alias", "a": "alias",
}  # fmt: skip

MAX_ID_CHARS = 200


class SegmentMessage(msgspec.Struct, rename="camel"):
    """The fields of a Segment message that Worldflow reads; unknown fields are ignored."""

    type: str | None = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    message_id: Id = None
    anonymous_id: Id = None
    user_id: Id = None
    previous_id: Id = None
    group_id: Id = None
    timestamp: datetime | None = None
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    write_key: str | None = None
    channel: str | None = None


class SegmentBatch(msgspec.Struct, rename="camel"):
    batch: list[msgspec.Raw]
    sent_at: datetime | None = None
    write_key: str | None = None
    context: dict[str, Any] | None = None  # analytics.js sends batch-level context
    integrations: dict[str, Any] | None = None


_message_decoder = msgspec.json.Decoder(SegmentMessage)
_batch_decoder = msgspec.json.Decoder(SegmentBatch)
_any_decoder = msgspec.json.Decoder()


class BodyError(ValueError):
    """The request body as a whole is unusable (not JSON, wrong shape); names the problem."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _path_of(exc: msgspec.ValidationError, prefix: str) -> FieldProblem:
    text = str(exc)
    field = prefix
    if " - at `$" in text:
        text, _, where = text.partition(" - at `$")
        field = prefix + where.rstrip("`")
    return FieldProblem(field.lstrip(".") or "body", text)


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is UTC:
        return value
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC) if value.utcoffset() else value


OUT_OF_RANGE = "timestamp falls outside the years 1 to 9999 once converted to UTC"


def _converts(value: datetime | None) -> bool:
    try:
        _utc(value)
    except OverflowError:
        return False
    return True


def _id(value: Id) -> str | None:
    if type(value) is str:
        return value or None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def split_batch(
    body: bytes,
) -> tuple[list[msgspec.Raw], datetime | None, str | None, dict[str, Any] | None]:
    """Decode a batch body; raises :class:`BodyError` if it is not a Segment batch."""
    try:
        batch = _batch_decoder.decode(body)
    except msgspec.DecodeError as exc:
        if isinstance(exc, msgspec.ValidationError):
            problem = _path_of(exc, "")
            raise BodyError("invalid_batch", f"{problem.field}: {problem.message}") from exc
        raise BodyError("invalid_json", f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BodyError("too_deep", f"body: {TOO_DEEP}") from exc
    try:
        sent_at = _utc(batch.sent_at)
    except OverflowError as exc:
        raise BodyError("invalid_batch", f"sentAt: {OUT_OF_RANGE}") from exc
    return batch.batch, sent_at, batch.write_key, batch.context


def _message_id_of(raw: bytes) -> str | None:
    """The messageId of a message that failed to decode as one, when it has a usable one."""
    try:
        doc = _any_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    value = doc.get("messageId") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS else None


def write_key_in_body(body: bytes) -> str | None:
    """The ``writeKey`` of a single call or a batch (analytics.js puts it in the body)."""
    try:
        doc = _any_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    key = doc.get("writeKey")
    if isinstance(key, str):
        return key
    batch = doc.get("batch")
    if isinstance(batch, list) and batch and isinstance(batch[0], dict):
        key = batch[0].get("writeKey")
        if isinstance(key, str):
            return key
    return None


class SegmentTranslator:
    """Turns Segment messages into canonical events, or into :class:`Rejected` with reasons."""

    def __init__(self, catalogue: Catalogue, max_message_bytes: int, max_future_skew_s: float):
        self.catalogue = catalogue
        self.max_message_bytes = max_message_bytes
        self.max_future_skew = timedelta(seconds=max_future_skew_s)

    def translate(
        self,
        raws: Sequence[msgspec.Raw | bytes],
        *,
        workspace_id: str,
        source_id: str,
        received_at: datetime,
        sent_at: datetime | None = None,
        forced_type: str | None = None,
        batch_context: dict[str, Any] | None = None,
        prefix: str = "batch",
        channel: str = "segment",
    ) -> Iterator[Event | Rejected]:
        single = forced_type is not None or prefix == ""
        for index, raw in enumerate(raws):
            where = prefix if single else f"{prefix}[{index}]"
            yield self._one(
                bytes(raw), index, where, workspace_id, source_id, received_at, sent_at,
                forced_type, batch_context, channel,
            )  # fmt: skip

    def _one(
        self,
        raw: bytes,
        index: int,
        where: str,
        workspace_id: str,
        source_id: str,
        received_at: datetime,
        batch_sent_at: datetime | None,
        forced_type: str | None,
        batch_context: dict[str, Any] | None,
        channel: str,
    ) -> Event | Rejected:
        if len(raw) > self.max_message_bytes:
            problem = FieldProblem(
                where or "body",
                f"message is {len(raw)} bytes; the limit is {self.max_message_bytes}",
            )
            return Rejected(index, None, "message_too_large", (problem,), raw)
        try:
            msg = _message_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            problem = _path_of(exc, where)
            return Rejected(index, _message_id_of(raw), "invalid_field", (problem,), raw)
        except msgspec.DecodeError as exc:
            problem = FieldProblem(where or "body", f"not valid JSON: {exc}")
            return Rejected(index, None, "invalid_json", (problem,), raw)
        except RecursionError:
            return Rejected(
                index, None, "too_deep", (FieldProblem(where or "body", TOO_DEEP),), raw
            )
        if too_deep(raw, msg.properties, msg.traits, msg.context, msg.integrations):
            problem = FieldProblem(where or "body", TOO_DEEP)
            return Rejected(index, _id(msg.message_id), "too_deep", (problem,), raw)

        call = forced_type or msg.type
        message_id = _id(msg.message_id)
        user_id, anonymous_id = _id(msg.user_id), _id(msg.anonymous_id)
        previous_id, group_id = _id(msg.previous_id), _id(msg.group_id)
        if not _plausible(call, msg.event, message_id, user_id, anonymous_id, previous_id,
                          group_id):  # fmt: skip
            problems = _call_problems(
                call, msg.event, message_id, user_id, anonymous_id, previous_id, group_id,
                f"{where}." if where else "",
            )  # fmt: skip
            return Rejected(index, message_id, "invalid_message", problems, raw)
        assert call is not None

        properties = msg.properties or {}
        name: str | None = msg.event if call == "track" else msg.name
        original_name: str | None = None
        custom = False
        tier = 1
        schema_version: int | None = None
        if call == "track" and name is not None:
            mapped = self.catalogue.map_segment(name, properties)
            if mapped is not None:
                if mapped[0] != name:
                    original_name = name
                name, properties = mapped
            spec = self.catalogue.get(name)
            if spec is None:
                custom = True
            else:
                errors = self.catalogue.validate(name, properties)
                if errors:
                    dot = f"{where}." if where else ""
                    problems = tuple(FieldProblem(f"{dot}{e.path}", e.message) for e in errors)
                    return Rejected(index, message_id, "invalid_properties", problems, raw)
                tier = spec.tier_for(properties)
                schema_version = spec.version
        elif call == "page" and msg.category is not None and "category" not in properties:
            properties = {**properties, "category": msg.category}

        sent_at, original, explicit = msg.sent_at, msg.original_timestamp, msg.timestamp
        try:
            # Most clients send UTC already: convert only what is not.
            if sent_at is None:
                sent_at = batch_sent_at
            elif sent_at.tzinfo is not UTC:
                sent_at = _utc(sent_at)
            if original is not None and original.tzinfo is not UTC:
                original = _utc(original)
            if explicit is not None and explicit.tzinfo is not UTC:
                explicit = _utc(explicit)
        except OverflowError:
            stamps = {"sentAt": msg.sent_at, "timestamp": msg.timestamp,
                      "originalTimestamp": msg.original_timestamp}  # fmt: skip
            problems = tuple(
                FieldProblem(f"{where}.{name}" if where else name, OUT_OF_RANGE)
                for name, value in stamps.items()
                if not _converts(value)
            )
            return Rejected(index, message_id, "invalid_field", problems, raw)
        if original is not None and sent_at is not None:
            try:
                timestamp = received_at - (sent_at - original)
            except OverflowError:  # absurd skew: not worth trusting
                timestamp = received_at
        else:
            timestamp = explicit or original or received_at
        if timestamp - received_at > self.max_future_skew:
            timestamp = received_at

        context = msg.context or {}
        traits = msg.traits or {}
        if not traits and call == "identify" and isinstance(context.get("traits"), dict):
            traits = context["traits"]  # RudderStack sends identify traits in context.traits
        if batch_context:
            context = {**batch_context, **context}
        if msg.channel and "channel" not in context:
            context = {**context, "channel": msg.channel}
        return Event(
            message_id=message_id or str(uuid.uuid4()),
            workspace_id=workspace_id,
            source_id=source_id,
            channel=channel,
            type=call,
            name=name,
            custom=custom,
            original_name=original_name,
            schema_version=schema_version,
            tier=tier,
            timestamp=timestamp,
            original_timestamp=original or explicit,
            sent_at=sent_at,
            received_at=received_at,
            anonymous_id=anonymous_id,
            user_id=user_id,
            previous_id=previous_id,
            group_id=group_id,
            properties=properties,
            traits=traits,
            context=context,
            integrations=msg.integrations or {},
        )


def _plausible(
    call: str | None,
    event: str | None,
    message_id: str | None,
    user_id: str | None,
    anonymous_id: str | None,
    previous_id: str | None,
    group_id: str | None,
) -> bool:
    """The common case, checked cheaply; :func:`_call_problems` explains any failure."""
    if call == "track":
        ok = bool(event) and (user_id is not None or anonymous_id is not None)
    elif call == "alias":
        ok = previous_id is not None and user_id is not None
    elif call == "group":
        ok = group_id is not None and (user_id is not None or anonymous_id is not None)
    else:
        ok = call in CALL_TYPES and (user_id is not None or anonymous_id is not None)
    return (
        ok
        and len(message_id or "") <= MAX_ID_CHARS
        and len(user_id or "") <= MAX_ID_CHARS
        and len(anonymous_id or "") <= MAX_ID_CHARS
        and len(previous_id or "") <= MAX_ID_CHARS
        and len(group_id or "") <= MAX_ID_CHARS
    )


def _call_problems(
    call: str | None,
    event: str | None,
    message_id: str | None,
    user_id: str | None,
    anonymous_id: str | None,
    previous_id: str | None,
    group_id: str | None,
    dot: str,
) -> tuple[FieldProblem, ...]:
    """What the Segment spec requires of a call, beyond field types; () when all is well."""
    problems: list[FieldProblem] = []
    if call is None:
        problems.append(FieldProblem(f"{dot}type", "required field is missing"))
    elif call not in CALL_TYPES:
        problems.append(
            FieldProblem(
                f"{dot}type",
                f"{call!r} is not a call type; use one of {', '.join(sorted(CALL_TYPES))}",
            )
        )
    if call != "alias" and user_id is None and anonymous_id is None:
        problems.append(FieldProblem(f"{dot}userId", "either userId or anonymousId is required"))
    present = {"event": event, "previousId": previous_id, "userId": user_id, "groupId": group_id}
    for field in _REQUIRED.get(call or "", ()):
        if not present[field]:
            problems.append(FieldProblem(f"{dot}{field}", "required field is missing"))
    for field, value in (
        ("messageId", message_id), ("userId", user_id), ("anonymousId", anonymous_id),
        ("previousId", previous_id), ("groupId", group_id),
    ):  # fmt: skip
        if value is not None and len(value) > MAX_ID_CHARS:
            problems.append(FieldProblem(f"{dot}{field}", f"longer than {MAX_ID_CHARS} characters"))
    return tuple(problems)
