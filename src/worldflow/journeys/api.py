"""The journeys API: apply a journey, read it with its stats, enter people by API call.

``PUT`` stores a new version when the document changed and appends its activation to the
log, like a segment's: the processor switches to it at that place (docs/JOURNEYS.md).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from worldflow.admin import Admin, Read, _services
from worldflow.collect.errors import ApiError
from worldflow.events.model import Event
from worldflow.journeys.actions import JOURNEY_SOURCE
from worldflow.journeys.definition import (
    MESSAGING,
    compile_journey,
    validate,
    validate_messaging,
)
from worldflow.profiles.api import _iso
from worldflow.segments.api import _document, _invalid, _summary, store_and_activate
from worldflow.segments.definition import KEY, DefinitionError, compile_definition
from worldflow.segments.incremental import Definitions

router = APIRouter(prefix="/v1", tags=["journeys"])
KeyPath = Annotated[str, Path(pattern=KEY.pattern, description="the journey's key")]


@router.put("/journeys/{key}")
async def put_journey(request: Request, token: Admin, key: KeyPath) -> dict[str, Any]:
    """Apply a journey (JSON or YAML body; docs/JOURNEYS.md). ``status`` (draft, active,
    paused, archived) is part of the document: changing it is a new version."""
    svc = _services(request)
    workspace_id = token.workspace_id
    try:
        document = validate(await _document(request), key)
        journey = compile_journey(document, 0)
        others = [compile_definition(d, v) for v, d in
                  await run_in_threadpool(svc.definitions.documents, workspace_id)
                  if d["kind"] in ("segment", "score")]  # fmt: skip
        Definitions(workspace_id, [*others, *journey.hidden])
    except DefinitionError as exc:
        raise _invalid(exc) from None
    return await store_and_activate(svc, workspace_id, document)


@router.put("/messaging")
async def put_messaging(request: Request, token: Admin) -> dict[str, Any]:
    """Apply the workspace's messaging policy (JSON or YAML; docs/JOURNEYS.md): caps per
    channel across all journeys, and quiet hours for those that set none of their own.
    Journeys marked ``transactional`` are neither held nor counted by it."""
    try:
        document = validate_messaging(await _document(request))
    except DefinitionError as exc:
        raise _invalid(exc) from None
    return await store_and_activate(_services(request), token.workspace_id, document)


@router.get("/messaging")
async def get_messaging(request: Request, token: Read) -> dict[str, Any]:
    svc = _services(request)
    found = await run_in_threadpool(svc.definitions.get, token.workspace_id, MESSAGING,
                                    "default")  # fmt: skip
    if found is None:
        raise ApiError(404, "messaging_not_found", "this workspace has no messaging policy: "
                       "no caps or quiet hours beyond each journey's own")  # fmt: skip
    body = _summary(found)
    body["active_version"] = found["active_version"]
    return body


@router.get("/journeys")
async def list_journeys(request: Request, token: Read) -> dict[str, Any]:
    rows = await run_in_threadpool(_services(request).definitions.latest, token.workspace_id,
                                   "journey")  # fmt: skip
    return {"journeys": [_summary(r) for r in rows]}


@router.get("/journeys/{key}")
async def get_journey(request: Request, token: Read, key: KeyPath) -> dict[str, Any]:
    """A journey: its definition, versions, status and stats."""
    svc = _services(request)
    found = await run_in_threadpool(svc.definitions.get, token.workspace_id, "journey", key)
    if found is None:
        raise ApiError(404, "journey_not_found", f"no journey {key!r} in this workspace")
    body = _summary(found)
    body["versions"] = [{"version": v["version"], "created_at": _iso(v["created_at_ms"])}
                        for v in found["versions"]]  # fmt: skip
    body["active_version"] = found["active_version"]
    body["stats"] = await run_in_threadpool(svc.definitions.journey_stats, token.workspace_id,
                                            key)  # fmt: skip
    return body


@router.get("/journeys/{key}/stats")
async def journey_stats(request: Request, token: Read, key: KeyPath) -> dict[str, Any]:
    """Per version: entered, now at each step, reached each step, per-branch and per-split
    counts, converted, exited (by reason), completed, and actions decided per channel; with
    the deliveries' outcomes (sent, failed, pending) per channel."""
    svc = _services(request)
    found = await run_in_threadpool(svc.definitions.get, token.workspace_id, "journey", key)
    if found is None:
        raise ApiError(404, "journey_not_found", f"no journey {key!r} in this workspace")
    return {"journey": key,
            "versions": await run_in_threadpool(svc.definitions.journey_stats,
                                                token.workspace_id, key)}  # fmt: skip


class EntryRequest(BaseModel):
    user_id: str | None = Field(None, max_length=200)
    anonymous_id: str | None = Field(None, max_length=200)
    properties: dict[str, Any] = Field(default_factory=dict)


@router.post("/journeys/{key}/entries", status_code=202)
async def enter_journey(request: Request, token: Admin, key: KeyPath,
                        body: EntryRequest) -> dict[str, Any]:  # fmt: skip
    """Ask for a person to enter a journey whose entry is ``api: true``. The request goes
    through the log (a ``journey.entry_requested`` event): the processor enters them there,
    under the journey's re-entry policy."""
    if not body.user_id and not body.anonymous_id:
        raise ApiError(400, "invalid_body", "user_id or anonymous_id: one is required")
    svc = _services(request)
    found = await run_in_threadpool(svc.definitions.get, token.workspace_id, "journey", key)
    if found is None:
        raise ApiError(404, "journey_not_found", f"no journey {key!r} in this workspace")
    if "api" not in found["document"].get("entry", {}):
        raise ApiError(409, "not_api_entry", f"entry: journey {key!r} is not entered by API "
                       "calls (its entry has no api: true)")  # fmt: skip
    now = datetime.now(UTC)
    message_id = f"jr_{uuid.uuid4().hex}"
    event = Event(message_id=message_id, workspace_id=token.workspace_id,
                  source_id=JOURNEY_SOURCE, channel="api", type="track",
                  name="journey.entry_requested", custom=True, tier=1, timestamp=now,
                  received_at=now, properties={**body.properties, "journey": key},
                  user_id=body.user_id, anonymous_id=body.anonymous_id)  # fmt: skip
    result = await svc.ingestor.ingest([event], workspace_id=token.workspace_id,
                                       source_id=JOURNEY_SOURCE, channel="api",
                                       received_at=now)  # fmt: skip
    return {"accepted": result.accepted, "message_id": message_id}
