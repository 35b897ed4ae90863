"""The WebSocket stream for world servers that send continuously.

Connect to ``/v1/stream`` with the write key (HTTP Basic or Bearer header, or ``?writeKey=`` for
clients that cannot set headers). Each text frame is a batch ``{"id": ..., "batch": [...]}`` (or a
single Segment-style message); the server answers each frame, in order, with
``{"ack": id, "accepted": [message ids], "duplicates": [...], "rejected": [...]}`` once the events
are durable. A malformed frame gets ``{"ack": id, "error": {"code", "message"}}`` and the
connection stays open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from fastapi import WebSocket, WebSocketDisconnect

from worldflow.collect.auth import credential_from_header
from worldflow.collect.errors import ApiError
from worldflow.collect.http import quarantine_body
from worldflow.events import segment
from worldflow.events.model import Event, Rejected
from worldflow.log import LogError, LogOverloaded
from worldflow.profiles.model import world_id
from worldflow.services import Services
from worldflow.store.sql import SourceRef

_POLICY_VIOLATION = 1008


class _Frame(msgspec.Struct):
    batch: list[msgspec.Raw] | None = None
    id: str | int | None = None


_frame_decoder = msgspec.json.Decoder(_Frame)


async def stream(websocket: WebSocket) -> None:
    """``/v1/stream``: served by the application directly (worldflow.app.App)."""
    svc: Services = websocket.app.state.services
    try:
        key = credential_from_header(websocket.headers.get("authorization"))
        source = await svc.auth.source(key or websocket.query_params.get("writeKey"))
    except ApiError as exc:
        await refuse(websocket, exc)
        return
    await websocket.accept()
    svc.metrics.ws_connections.inc()
    try:
        async for raw in frames(websocket):
            await websocket.send_text((await handle_frame(svc, source, raw)).decode())
    finally:
        svc.metrics.ws_connections.dec()


async def refuse(websocket: WebSocket, exc: ApiError) -> None:
    """Close with a policy violation that says why. Accepted first: a close before the
    handshake becomes a bare HTTP 403 and the client would never learn why."""
    await websocket.accept()
    await websocket.close(code=_POLICY_VIOLATION, reason=f"{exc.code}: {exc.message}"[:120])


async def frames(websocket: WebSocket) -> AsyncIterator[bytes]:
    """The frames a client sends (text or binary), until it goes."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            yield text.encode() if text is not None else message.get("bytes") or b""
    except WebSocketDisconnect:
        return


async def handle_frame(svc: Services, source: SourceRef, raw: bytes,
                       world: str | None = None) -> bytes:  # fmt: skip
    """Ingest one frame of events; the answer. With ``world`` (a world's key), messages
    that name no world are of that one, and a message of another world refuses the frame."""
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
        if world is not None:
            batch_context = {"world": {"id": world}, **(batch_context or {})}
        items: Iterable[Event | Rejected] = svc.segment.translate(
            raws, workspace_id=workspace_id, source_id=source_id, received_at=received_at,
            sent_at=sent_at, batch_context=batch_context, prefix=prefix, channel="stream",
        )  # fmt: skip
        if world is not None:
            items = _of_world(list(items), world, prefix)
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


def _of_world(items: list[Event | Rejected], world: str, prefix: str) -> list[Event | Rejected]:
    for index, item in enumerate(items):
        if isinstance(item, Event) and world_id(item.context) != world:
            where = f"{prefix}[{index}].context.world" if prefix else "context.world"
            raise ApiError(403, "wrong_world", f"{where}: {world_id(item.context)!r} is not "
                           f"this key's world {world!r}")  # fmt: skip
    return items
