"""HTTP ingestion: the Segment-compatible API and CloudEvents.

These handlers read the raw body themselves (no framework parsing per event): size limits,
decompression, auth, then one translation pass and one append to the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from fastapi import APIRouter, Request, Response
from starlette.responses import JSONResponse

from worldflow.collect.auth import credential_from_header
from worldflow.collect.body import read_body
from worldflow.collect.errors import ApiError
from worldflow.collect.ingest import IngestResult
from worldflow.events import cloudevents, segment
from worldflow.events.model import FieldProblem, Rejected
from worldflow.services import Services
from worldflow.store.sql import SourceRef

router = APIRouter(tags=["ingest"])

_SEGMENT_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "additionalProperties": True},
            },
            "text/plain": {"schema": {"type": "string"}},
        },
    },
    "security": [{"writeKeyBasic": []}],
}
_CE_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/cloudevents+json": {"schema": {"type": "object"}},
            "application/cloudevents-batch+json": {"schema": {"type": "array"}},
        },
    },
    "security": [{"writeKeyBasic": []}],
}


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def ingest_response(result: IngestResult, *, single: bool) -> Response:
    body: dict[str, Any] = {
        "success": True,
        "accepted": len(result.accepted),
        "duplicates": len(result.duplicates),
    }
    if result.rejected:
        body["rejected"] = result.rejected_json()
        if single:
            first = result.rejected[0]
            return JSONResponse(
                {"code": first.code, "message": first.reason, **body, "success": False}, 400
            )
    return JSONResponse(body)


async def quarantine_body(
    svc: Services,
    source: SourceRef,
    channel: str,
    body: bytes,
    error: ApiError,
    received_at: datetime,
) -> None:
    """An authenticated body that is not even a batch is kept in the quarantine, like any
    refused message, before the client hears the error."""
    rejected = Rejected(0, None, error.code, (FieldProblem("body", error.message),), body)
    await svc.ingestor.ingest(
        [rejected], workspace_id=source.workspace_id, source_id=source.source_id,
        channel=channel, received_at=received_at,
    )  # fmt: skip


async def _segment(request: Request, call: str | None) -> Response:
    svc = services(request)
    received_at = datetime.now(UTC)
    header_key = credential_from_header(request.headers.get("authorization"))
    source = await svc.auth.source(header_key) if header_key else None
    body = await read_body(request, svc.settings.max_request_bytes)
    sent_at = None
    batch_context = None
    raws: Sequence[msgspec.Raw | bytes]
    if call is None:
        try:
            raws, sent_at, body_key, batch_context = segment.split_batch(body)
        except segment.BodyError as exc:
            error = ApiError(400, exc.code, str(exc))
            if source is not None:
                await quarantine_body(svc, source, "segment", body, error, received_at)
            raise error from exc
    else:
        raws = [body]
        body_key = None if source else segment.write_key_in_body(body)
    if source is None:
        if call is None and body_key is None:  # some clients put it in each message instead
            body_key = segment.write_key_in_body(body)
        source = await svc.auth.source(body_key or request.query_params.get("writeKey"))
    items = svc.segment.translate(
        raws,
        workspace_id=source.workspace_id,
        source_id=source.source_id,
        received_at=received_at,
        sent_at=sent_at,
        forced_type=call,
        batch_context=batch_context,
        prefix="batch" if call is None else "",
    )
    result = await svc.ingestor.ingest(
        items,
        workspace_id=source.workspace_id,
        source_id=source.source_id,
        channel="segment",
        received_at=received_at,
    )
    return ingest_response(result, single=call is not None)


@router.post("/v1/batch", openapi_extra=_SEGMENT_DOC, summary="Segment batch")
@router.post("/v1/import", openapi_extra=_SEGMENT_DOC, summary="Segment batch (import alias)")
@router.post("/v1/b", openapi_extra=_SEGMENT_DOC, summary="Segment batch (analytics.js)")
async def segment_batch(request: Request) -> Response:
    """A batch of Segment calls: ``{"batch": [...], "sentAt": ...}``."""
    return await _segment(request, None)


def _single(kind: str) -> Any:
    async def segment_call(request: Request) -> Response:
        return await _segment(request, kind)

    segment_call.__doc__ = f"One Segment {kind} call."
    return segment_call


for _path, _kind in segment.PATH_TYPES.items():
    router.add_api_route(
        f"/v1/{_path}",
        _single(_kind),
        methods=["POST"],
        summary=f"Segment {_kind}" + ("" if _path == _kind else " (analytics.js short path)"),
        openapi_extra=_SEGMENT_DOC,
        operation_id=f"segment_{_path}",
    )


@router.post("/v1/m", summary="Client library telemetry (accepted and ignored)")
async def library_metrics(request: Request) -> Response:
    """analytics.js reports its own delivery counters here; they are read and discarded."""
    await read_body(request, services(request).settings.max_request_bytes)
    return JSONResponse({"success": True})


@router.post("/v1/cloudevents", openapi_extra=_CE_DOC, summary="CloudEvents 1.0")
async def cloudevents_endpoint(request: Request) -> Response:
    """Structured (``application/cloudevents+json``), batch (``application/cloudevents-batch+json``)
    or binary mode (``ce-*`` headers)."""
    svc = services(request)
    received_at = datetime.now(UTC)
    source = await svc.auth.source(credential_from_header(request.headers.get("authorization")))
    body = await read_body(request, svc.settings.max_request_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    batch = content_type == "application/cloudevents-batch+json"
    raws: Sequence[msgspec.Raw | bytes]
    try:
        if batch:
            raws = cloudevents.split_batch(body)
        elif "ce-specversion" in request.headers:
            raws = [cloudevents.from_binary(request.headers, body)]
        else:
            raws = [body]
    except ValueError as exc:
        error = ApiError(400, "invalid_json", str(exc))
        await quarantine_body(svc, source, "cloudevents", body, error, received_at)
        raise error from exc
    items = svc.cloudevents.translate(
        raws,
        workspace_id=source.workspace_id,
        source_id=source.source_id,
        received_at=received_at,
        batch=batch,
    )
    result = await svc.ingestor.ingest(
        items,
        workspace_id=source.workspace_id,
        source_id=source.source_id,
        channel="cloudevents",
        received_at=received_at,
    )
    return ingest_response(result, single=not batch)
