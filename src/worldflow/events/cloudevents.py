"""CloudEvents 1.0 (JSON structured mode, batch mode and binary mode) → canonical events.

Mapping: ``type`` is the event name (a leading ``io.worldflow.`` is dropped, so both
``zone.entered`` and ``io.worldflow.zone.entered`` name the catalogue event); ``data`` becomes the
properties; the extension attributes ``userid`` and ``anonymousid`` carry the identity (one is
required, as for Segment calls), ``sessionid`` and ``worldid`` go to the context. Deduplication
is on ``source`` + ``id``, as the specification says.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from worldflow.events.catalogue import Catalogue
from worldflow.events.model import TOO_DEEP, Event, FieldProblem, Rejected, too_deep

NAME_PREFIX = "io.worldflow."
_CONTEXT_KEYS = {"source", "subject", "dataschema", "datacontenttype"}
_CORE = {"id", "source", "specversion", "type", "time", "data", "data_base64", *_CONTEXT_KEYS}
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
_any = msgspec.json.Decoder()


def message_id(source: str, event_id: str) -> str:
    joined = f"{source}#{event_id}"
    return joined if len(joined) <= 200 else "ce:" + hashlib.sha256(joined.encode()).hexdigest()


def _time(value: Any, field: str, problems: list[FieldProblem]) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        except (ValueError, OverflowError):
            pass
    problems.append(FieldProblem(field, f"expected an RFC 3339 timestamp, got {value!r}"))
    return None


def split_batch(body: bytes) -> list[msgspec.Raw]:
    """Raise ValueError with a message if the body is not a JSON array."""
    try:
        items = msgspec.json.decode(body, type=list[msgspec.Raw])
    except msgspec.ValidationError as exc:
        raise ValueError("a CloudEvents batch must be a JSON array of events") from exc
    except msgspec.DecodeError as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ValueError(f"body: {TOO_DEEP}") from exc
    return items


def from_binary(headers: Mapping[str, str], body: bytes) -> bytes:
    """Turn a binary-mode request (``ce-*`` headers, data in the body) into structured JSON."""
    doc: dict[str, Any] = {
        key[3:]: value for key, value in headers.items() if key.lower().startswith("ce-")
    }
    content_type = headers.get("content-type", "")
    if content_type:
        doc["datacontenttype"] = content_type
    if body:
        if "json" in content_type:
            try:
                doc["data"] = _any.decode(body)
            except msgspec.DecodeError as exc:
                raise ValueError(f"data: body is not valid JSON: {exc}") from exc
            except RecursionError as exc:
                raise ValueError(f"data: {TOO_DEEP}") from exc
        else:
            doc["data"] = body.decode("utf-8", "replace")
    return msgspec.json.encode(doc)


class CloudEventsTranslator:
    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    def translate(
        self,
        raws: Sequence[msgspec.Raw | bytes],
        *,
        workspace_id: str,
        source_id: str,
        received_at: datetime,
        batch: bool,
    ) -> Iterator[Event | Rejected]:
        for index, raw in enumerate(raws):
            yield self._one(
                bytes(raw), index, f"[{index}]" if batch else "", workspace_id, source_id,
                received_at,
            )  # fmt: skip

    def _one(
        self,
        raw: bytes,
        index: int,
        where: str,
        workspace_id: str,
        source_id: str,
        received_at: datetime,
    ) -> Event | Rejected:
        def field(name: str) -> str:
            name = name or '""'
            return f"{where}.{name}" if where else name

        try:
            doc = _any.decode(raw)
        except msgspec.DecodeError as exc:
            problem = FieldProblem(where or "body", f"not valid JSON: {exc}")
            return Rejected(index, None, "invalid_json", (problem,), raw)
        except RecursionError:
            return Rejected(
                index, None, "too_deep", (FieldProblem(where or "body", TOO_DEEP),), raw
            )
        if too_deep(raw, doc):
            return Rejected(
                index, None, "too_deep", (FieldProblem(where or "body", TOO_DEEP),), raw
            )
        if not isinstance(doc, dict):
            problem = FieldProblem(where or "body", "a CloudEvent must be a JSON object")
            return Rejected(index, None, "invalid_event", (problem,), raw)

        problems: list[FieldProblem] = []
        for attr in ("id", "source", "type", "specversion"):
            value = doc.get(attr)
            if not isinstance(value, str) or not value:
                what = (
                    "required attribute is missing"
                    if value is None
                    else "must be a non-empty string"
                )
                problems.append(FieldProblem(field(attr), what))
        if isinstance(doc.get("specversion"), str) and doc["specversion"] != "1.0":
            problems.append(
                FieldProblem(
                    field("specversion"), f"{doc['specversion']!r} is not supported; use '1.0'"
                )
            )
        extensions = {k: v for k, v in doc.items() if k not in _CORE}
        for key in extensions:
            if not _EXTENSION_NAME.fullmatch(key):
                problems.append(
                    FieldProblem(
                        field(key),
                        "extension attribute names are lowercase letters and digits, "
                        "at most 20 characters",
                    )
                )
        user_id = extensions.pop("userid", None)
        anonymous_id = extensions.pop("anonymousid", None)
        for key, value in (("userid", user_id), ("anonymousid", anonymous_id)):
            if value is not None and not isinstance(value, str):
                problems.append(FieldProblem(field(key), "must be a string"))
        if not user_id and not anonymous_id:
            problems.append(
                FieldProblem(
                    field("userid"), "either the userid or the anonymousid extension is required"
                )
            )
        event_time = _time(doc.get("time"), field("time"), problems)
        mid = (
            message_id(doc["source"], doc["id"])
            if isinstance(doc.get("source"), str) and isinstance(doc.get("id"), str)
            else None
        )
        if problems:
            return Rejected(index, mid, "invalid_event", tuple(problems), raw)
        assert mid is not None

        name: str = doc["type"].removeprefix(NAME_PREFIX)
        data = doc.get("data")
        if isinstance(data, dict):
            properties: dict[str, Any] = data
        elif "data_base64" in doc:
            properties = {"data_base64": doc["data_base64"]}
        else:
            properties = {} if data is None else {"data": data}
        spec = self.catalogue.get(name)
        tier, version = 1, None
        if spec is not None:
            errors = self.catalogue.validate(name, properties)
            if errors:
                problems = [
                    FieldProblem(field("data" + e.path.removeprefix("properties")), e.message)
                    for e in errors
                ]
                return Rejected(index, mid, "invalid_properties", tuple(problems), raw)
            tier, version = spec.tier_for(properties), spec.version
        context: dict[str, Any] = {
            "cloudevents": {k: doc[k] for k in _CONTEXT_KEYS if k in doc} | {"id": doc["id"]}
        }
        if "sessionid" in extensions:
            context["session_id"] = extensions.pop("sessionid")
        if "worldid" in extensions:
            context["world"] = {"id": extensions.pop("worldid")}
        if extensions:
            context["cloudevents"]["extensions"] = extensions
        return Event(
            message_id=mid,
            workspace_id=workspace_id,
            source_id=source_id,
            channel="cloudevents",
            type="track",
            name=name,
            custom=spec is None,
            schema_version=version,
            tier=tier,
            timestamp=event_time or received_at,
            original_timestamp=event_time,
            received_at=received_at,
            user_id=user_id or None,
            anonymous_id=anonymous_id or None,
            properties=properties,
            context=context,
        )
