"""The world push channel: ``/v1/push`` (docs/PUSH.md).

World servers and clients hold a WebSocket, authenticated with a world's key (a source
created with ``world``: ``?key=`` or an ``Authorization`` header), to send events and receive
the in-world actions journeys decide for the people they speak for (sent by the worker's
:class:`~worldflow.actions.inworld.Pusher`).

Frames are JSON text. The client says who it speaks for with ``{"type": "hello",
"anonymousId", "userId", "zone"}`` (again when that changes; a world server speaking for
many people opens one connection per person); the server answers the first one with
``{"type": "welcome", "session", "heartbeat_s"}``. Events go as ``{"id": N, "batch": [...]}``
(answered like ``/v1/stream``, the world filled in where a message names none; a message of
another world is refused). The server sends ``{"type": "action", "id", "placement",
"content", "data", "journey", "step", "expires_at"}``; the client answers ``{"type": "ack",
"id"}`` once it applied it. ``{"type": "ping"}`` gets ``{"type": "pong"}``. ``{"type":
"decide", "placement", "context"}`` gets ``{"type": "decision", …}``: what POST /v1/decide
answers, for the person the connection speaks for, where they are.
"""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec
from fastapi import APIRouter, Request, WebSocket
from starlette.concurrency import run_in_threadpool

from worldflow.actions.inworld import HEARTBEAT_S, Connection, Pusher, iso
from worldflow.admin import Read, _services
from worldflow.collect.auth import credential_from_header
from worldflow.collect.errors import ApiError
from worldflow.collect.stream import frames, handle_frame, refuse
from worldflow.decide.api import serve_decision
from worldflow.segments.definition import KEY
from worldflow.services import Services
from worldflow.store.presence import InWorld

router = APIRouter()

MAX_ID: Final = 200


class _Hello(msgspec.Struct, rename="camel"):
    type: str
    anonymous_id: str | None = None
    user_id: str | None = None
    zone: str | None = None
    world: str | None = None
    id: str | None = None
    placement: str | None = None  # decide
    context: dict[str, Any] | None = None  # decide


_decode_control = msgspec.json.Decoder(_Hello)


async def push(websocket: WebSocket) -> None:
    """``/v1/push``: served by the application directly (worldflow.app.App)."""
    svc = websocket.app.state.services
    try:
        key = credential_from_header(websocket.headers.get("authorization"))
        source = await svc.auth.source(key or websocket.query_params.get("key")
                                       or websocket.query_params.get("writeKey"))  # fmt: skip
        if source.world is None:
            raise ApiError(403, "not_a_world_key", "key: the push channel takes a world's key "
                           "(a source created with world)")  # fmt: skip
    except ApiError as exc:
        await refuse(websocket, exc)
        return
    await websocket.accept()
    conn = Connection(websocket, source)
    pusher: Pusher = svc.pusher
    pusher.add(conn)
    try:
        async for raw in frames(websocket):
            reply = await _control(svc, conn, raw)
            if reply is None:  # events
                reply = await handle_frame(svc, source, raw, world=conn.world)
            if reply:
                async with conn.lock:
                    await websocket.send_text(reply.decode())
    finally:
        pusher.remove(conn)


async def _control(svc: Services, conn: Connection, raw: bytes) -> bytes | None:
    """The answer to a control frame (hello, ack, ping, decide): b"" for none, None for
    events."""
    if b'"type"' not in raw:
        return None
    try:
        frame = _decode_control.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # an event frame with a "type" inside, or bad: the event path says
    pusher: Pusher = svc.pusher
    if frame.type == "hello":
        problem = _check_hello(conn, frame)
        if problem is not None:
            return _error("invalid_hello", problem)
        pusher.hello(conn, frame.anonymous_id, frame.user_id, frame.zone)
        if conn.greeted:
            return b""
        conn.greeted = True
        return msgspec.json.encode({"type": "welcome", "session": conn.id,
                                    "heartbeat_s": HEARTBEAT_S})  # fmt: skip
    if frame.type == "ack":
        if not frame.id or len(frame.id) > MAX_ID:
            return _error("invalid_ack", "id: the id of the action")
        pusher.ack(conn, frame.id)
        return b""
    if frame.type == "ping":
        return b'{"type":"pong"}'
    if frame.type == "decide":
        return await _decide(svc, conn, frame)
    return _error("unknown_type", f"type: {frame.type!r} is not hello, ack, ping or decide")


async def _decide(svc: Services, conn: Connection, frame: _Hello) -> bytes:
    """A decision for the person this connection speaks for, where they are now."""
    if not conn.greeted:
        return _error("hello_first", "type: say hello (who this connection speaks for) before "
                      "asking for a decision")  # fmt: skip
    if frame.placement is None or not KEY.fullmatch(frame.placement):
        return _error("invalid_decide", "placement: the key of a placement is required")
    context = {"world": conn.world, "zone": conn.zone, **(frame.context or {})}
    decision = await serve_decision(svc, conn.source.workspace_id, conn.source.source_id,
                                    frame.placement, conn.user_id, conn.anonymous_id,
                                    context)  # fmt: skip
    if decision is None:
        return _error("placement_not_found", f"placement: no placement {frame.placement!r} "
                      "is active in this workspace")  # fmt: skip
    return msgspec.json.encode({"type": "decision", **decision.body()})


async def decide_action(svc: Services, row: InWorld, conn: Connection) -> dict[str, Any] | None:
    """The decision a journey's in-world action asks for (``decide: true``), for its
    placement, for the person this connection speaks for, where they are now."""
    placement = row.payload.get("action", {}).get("placement")
    if not isinstance(placement, str):
        return None
    context = {"world": conn.world, "zone": conn.zone}
    decision = await serve_decision(svc, row.workspace_id, conn.source.source_id, placement,
                                    conn.user_id, conn.anonymous_id, context)  # fmt: skip
    return decision.body() if decision is not None else None


def _error(code: str, message: str) -> bytes:
    return msgspec.json.encode({"type": "error", "code": code, "message": message})


def _check_hello(conn: Connection, frame: _Hello) -> str | None:
    if not frame.anonymous_id and not frame.user_id:
        return "anonymousId or userId: one is required"
    for name, value in (("anonymousId", frame.anonymous_id), ("userId", frame.user_id),
                        ("zone", frame.zone)):  # fmt: skip
        if value is not None and not 0 < len(value) <= MAX_ID:
            return f"{name}: at most {MAX_ID} characters"
    if frame.world is not None and frame.world != conn.world:
        return f"world: {frame.world!r} is not this key's world {conn.world!r}"
    return None


@router.get("/v1/worlds/{world}/presence", tags=["worlds"])
async def world_presence(request: Request, token: Read, world: str) -> dict[str, Any]:
    """Who is in a world now: the people connected to its push channel, with their zone."""
    svc = _services(request)
    now = int(time.time() * 1000)
    rows = await run_in_threadpool(svc.pusher.store.in_world, token.workspace_id, world, now)
    people = [{"profile_id": r["profile_id"], "anonymous_id": r["anonymous_id"],
               "user_id": r["user_id"], "zone": r["zone"],
               "connected_at": iso(r["connected_ms"]), "seen_at": iso(r["seen_ms"])}
              for r in rows]  # fmt: skip
    return {"world": world, "count": len(people), "people": people}
