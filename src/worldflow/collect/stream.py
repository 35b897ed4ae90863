"""The WebSocket stream for world servers that send continuously.

Connect to ``/v1/stream`` with the write key (HTTP Basic or Bearer header, or ``?writeKey=`` for
clients that cannot set headers). Each text frame is a batch ``{"id": ..., "batch": [...]}`` (or a
single Segment-style message); the server answers each frame, in order, with
``{"ack": id, "accepted": [message ids], "duplicates": [...], "rejected": [...]}`` once the events
are durable. A malformed frame gets ``{"ack": id, "error": {"code", "message"}}`` and the
connection stays open.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from worldflow.collect.auth import credential_from_header
from worldflow.collect.errors import ApiError
from worldflow.collect.http import quarantine_body
from worldflow.events import segment
from worldflow.log import LogError, LogOverloaded
from worldflow.services import Services
from worldflow.store.sql import SourceRef

router = APIRouter()

_POLICY_VIOLATION = 1008


class _Frame(msgspec.Struct):
    batch: list[msgspec.Raw] | None = None
    id: str | int | None = None


_frame_decoder = msgspec.json.Decoder(_Frame)


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket) -> None:
    svc: Services = websocket.app.state.services
    try:
        key = credential_from_header(websocket.headers.get("authorization"))
        source = await svc.auth.source(key or websocket.query_params.get("writeKey"))
    except ApiError as exc:
        # Accept first: a close before the handshake becomes a bare HTTP 403 and the client
        # would never learn why.
        await websocket.accept()
        await websocket.close(code=_POLICY_VIOLATION, reason=f"{exc.code}: {exc.message}"[:120])
        return
    await websocket.accept()
    svc.metrics.ws_connections.inc()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            raw: bytes = data.encode() if data is not None else message.get("bytes") or b""
            await websocket.send_bytes(await _handle(svc, source, raw))
    except WebSocketDisconnect:
        return
    finally:
        svc.metrics.ws_connections.dec()


async def _handle(svc: Services, source: SourceRef, raw: bytes) -> bytes:
    workspace_id, source_id = source.workspace_id, source.source_id
    received_at = datetime.now(UTC)
    frame_id: str | int | None = None
    reply: dict[str, Any]
    try:
        if len(raw) > svc.settings.max_request_bytes:
            raise ApiError(413, "payload_too_large",
                           f"frame exceeds {svc.settings.max_request_bytes} bytes")  # fmt: skip
        try:
            frame = _frame_decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:
            error = ApiError(400, "invalid_json", f"frame is not a usable JSON object: {exc}")
            await quarantine_body(svc, source, "stream", raw, error, received_at)
            raise error from exc
        frame_id = frame.id
        raws: Sequence[msgspec.Raw | bytes] = [raw]
        prefix, sent_at, batch_context = "", None, None
        if frame.batch is not None:  # read like POST /v1/batch: sentAt and context included
            try:
                raws, sent_at, _key, batch_context = segment.split_batch(raw)
            except segment.BodyError as exc:
                error = ApiError(400, exc.code, str(exc))
                await quarantine_body(svc, source, "stream", raw, error, received_at)
                raise error from exc
            prefix = "batch"
        items = svc.segment.translate(
            raws, workspace_id=workspace_id, source_id=source_id, received_at=received_at,
            sent_at=sent_at, batch_context=batch_context, prefix=prefix, channel="stream",
        )  # fmt: skip
        result = await svc.ingestor.ingest(
            items, workspace_id=workspace_id, source_id=source_id, channel="stream",
            received_at=received_at,
        )  # fmt: skip
        reply = {
            "ack": frame_id,
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "rejected": result.rejected_json(),
        }
    except ApiError as exc:
        reply = {"ack": frame_id, "error": exc.body()}
    except LogOverloaded as exc:
        reply = {"ack": frame_id, "error": {"code": "overloaded", "message": str(exc)},
                 "retry_after": exc.retry_after_s}  # fmt: skip
    except LogError as exc:
        reply = {"ack": frame_id, "error": {"code": "log_unavailable", "message": str(exc)}}
    return msgspec.json.encode(reply)
