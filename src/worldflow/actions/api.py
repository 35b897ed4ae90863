"""The webhook API: destinations, and the dead letters of deliveries (list, replay).

A destination is saved with ``PUT``; the answer that creates it holds its signing secret,
which no later answer shows. Its URL is checked then (http or https, and an address the
dispatcher may send to) as well as at every connection. Problems with the body answer
400 ``invalid_field`` with the field named in the message.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from worldflow.actions.webhooks import (
    MAX_IN_FLIGHT,
    MAX_RATE_PER_S,
    MAX_TIMEOUT_MS,
    MIN_TIMEOUT_MS,
    AllowList,
    DestinationError,
    blocked,
    check_headers,
    check_url,
    new_secret,
    resolve,
    secret_key,
)
from worldflow.admin import Admin, _services
from worldflow.collect.errors import ApiError
from worldflow.store.deliveries import DEFAULT_MAX_IN_FLIGHT, SqlDeliveryStore

router = APIRouter(prefix="/v1", tags=["webhooks"])
DESTINATION_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MAX_BODY_BYTES = 64 * 1024
MAX_REPLAY_IDS = 1000


class DestinationBody(BaseModel):
    """A webhook destination (``PUT`` replaces it whole; an omitted secret is kept)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="https:// (or http://) address the deliveries are POSTed to")
    secret: str | None = Field(
        default=None, description="whsec_<base64> signing secret; generated when creating"
    )
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers")
    timeout_ms: int = Field(default=5000, ge=MIN_TIMEOUT_MS, le=MAX_TIMEOUT_MS)
    rate_per_s: float | None = Field(default=None, gt=0, le=MAX_RATE_PER_S)
    max_in_flight: int = Field(
        default=DEFAULT_MAX_IN_FLIGHT, ge=1, le=MAX_IN_FLIGHT, strict=True,
        description="requests sent to it at once, at most (each waits for its answer)",
    )  # fmt: skip
    disabled: bool = False


class ReplayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = Field(default=None, min_length=1, max_length=MAX_REPLAY_IDS)
    destination_id: str | None = Field(default=None, min_length=1, max_length=64)


def _store(request: Request) -> SqlDeliveryStore:
    return SqlDeliveryStore(_services(request).store.engine)


def _allow(request: Request) -> AllowList:
    return AllowList.parse(_services(request).settings.webhook_allow)


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_field", f"{field}: {message}")


async def _body(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"body: at most {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid_body", f"body: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "body: must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [(".".join(str(p) for p in e["loc"]) or "body", e["msg"]) for e in exc.errors()]
        message = "; ".join(f"{field}: {msg}" for field, msg in problems)
        raise ApiError(400, "invalid_field", message) from None


def _destination_id(value: str) -> str:
    if not DESTINATION_ID.match(value):
        raise _invalid("id", "1 to 64 characters: lowercase letters, digits, '-', '_', '.', "
                       "starting with a letter or digit")  # fmt: skip
    return value


async def _check_target(url: str, allow: AllowList) -> None:
    """The URL's form, then where its host resolves: refused now rather than at every
    delivery. The dispatcher checks again at each connection (addresses change)."""
    target = check_url(url)
    try:
        addresses = await run_in_threadpool(resolve, target.host, target.port)
    except OSError as exc:
        if allow.allows_host(target.host):
            return
        raise DestinationError("url", f"host {target.host!r} does not resolve ({exc})") from None
    problem = blocked(target.host, addresses, allow)
    if problem is not None:
        raise DestinationError("url", problem.removeprefix("url: "))


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    at = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return at.replace("+00:00", "Z")


def _destination_view(row: dict[str, Any]) -> dict[str, Any]:
    view = {
        "id": row["id"],
        "url": row["url"],
        "headers": row["headers"],
        "timeout_ms": row["timeout_ms"],
        "rate_per_s": row["rate_per_s"],
        "max_in_flight": row["max_in_flight"],
        "disabled": row["disabled"],
        "circuit": {
            "state": row["circuit_state"],
            "consecutive_failures": row["consecutive_failures"],
            "opened_at": _iso(row["opened_at_ms"]),
            "reopen_at": _iso(row["reopen_at_ms"]),
        },
        "created_at": _iso(row["created_at_ms"]),
        "updated_at": _iso(row["updated_at_ms"]),
    }
    if "secret" in row:
        view["secret"] = row["secret"]
    return view


def _delivery_view(row: dict[str, Any]) -> dict[str, Any]:
    try:
        payload = json.loads(row["payload"])
    except ValueError:
        payload = row["payload"]
    return {
        "id": row["id"],
        "channel": row["channel"],
        "destination_id": row["destination_id"],
        "event_type": row["event_type"],
        "state": row["state"],
        "attempts": row["attempts"],
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "created_at": _iso(row["created_ms"]),
        "next_attempt_at": _iso(row["next_attempt_ms"]) if row["state"] == "pending" else None,
        "delivered_at": _iso(row["delivered_ms"]),
        "replayed_at": _iso(row["replayed_ms"]),
        "payload": payload,
    }


@router.put(
    "/destinations/{destination_id}",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": DestinationBody.model_json_schema()}}}},
)  # fmt: skip
async def put_destination(
    request: Request, response: Response, token: Admin, destination_id: str
) -> dict[str, Any]:
    """Create or replace a webhook destination. Answers 201 with its ``secret`` when it is
    created (shown this once), 200 otherwise."""
    _destination_id(destination_id)
    body: DestinationBody = await _body(request, DestinationBody)
    try:
        await _check_target(body.url, _allow(request))
        if body.secret is not None:
            secret_key(body.secret)
        headers = check_headers(body.headers)
    except DestinationError as exc:
        raise ApiError(400, "invalid_field", str(exc)) from None
    row, created = await run_in_threadpool(
        lambda: _store(request).put_destination(
            token.workspace_id, destination_id, url=body.url, secret=body.secret,
            secret_if_new=new_secret(), headers=headers, timeout_ms=body.timeout_ms,
            rate_per_s=body.rate_per_s, max_in_flight=body.max_in_flight,
            disabled=body.disabled,
        )
    )  # fmt: skip
    response.status_code = 201 if created else 200
    return _destination_view(row)


@router.get("/destinations")
async def list_destinations(request: Request, token: Admin) -> dict[str, Any]:
    rows = await run_in_threadpool(_store(request).list_destinations, token.workspace_id)
    return {"destinations": [_destination_view(row) for row in rows]}


@router.get("/destinations/{destination_id}")
async def get_destination(request: Request, token: Admin, destination_id: str) -> dict[str, Any]:
    """A destination (without its secret), with its circuit and deliveries per state."""
    store = _store(request)
    row = await run_in_threadpool(store.get_destination, token.workspace_id, destination_id)
    if row is None:
        raise ApiError(404, "destination_not_found",
                       f"no destination {destination_id!r} in this workspace")  # fmt: skip
    view = _destination_view(row)
    view["deliveries"] = await run_in_threadpool(store.counts, token.workspace_id,
                                                 destination_id)  # fmt: skip
    return view


@router.delete("/destinations/{destination_id}", status_code=204)
async def delete_destination(request: Request, token: Admin, destination_id: str) -> None:
    """Delete a destination; its pending deliveries become dead (replayable once it is back)."""
    store = _store(request)
    if not await run_in_threadpool(store.delete_destination, token.workspace_id, destination_id):
        raise ApiError(404, "destination_not_found",
                       f"no destination {destination_id!r} in this workspace")  # fmt: skip


@router.get("/deliveries")
async def list_deliveries(
    request: Request,
    token: Admin,
    state: Annotated[
        Literal["pending", "sent", "waiting", "delivered", "dead"] | None, Query()
    ] = None,
    destination_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[str | None, Query(description="next_before of the previous page")] = None,
) -> dict[str, Any]:
    """Deliveries, newest first: ``state=dead`` is the dead-letter list, each with its
    attempts, last status and last error."""
    cursor = None
    if before is not None:
        created, _, last_id = before.partition(":")
        if not created.isdigit() or not last_id:
            raise _invalid("before", "use the next_before of the previous page")
        cursor = (int(created), last_id)
    rows = await run_in_threadpool(
        _store(request).list_deliveries, token.workspace_id, state, destination_id, limit, cursor
    )
    next_before = f"{rows[-1]['created_ms']}:{rows[-1]['id']}" if len(rows) == limit else None
    return {"deliveries": [_delivery_view(row) for row in rows], "next_before": next_before}


@router.get("/deliveries/{delivery_id}")
async def get_delivery(request: Request, token: Admin, delivery_id: str) -> dict[str, Any]:
    row = await run_in_threadpool(_store(request).get_delivery, token.workspace_id, delivery_id)
    if row is None:
        raise ApiError(404, "delivery_not_found",
                       f"no delivery {delivery_id!r} in this workspace")  # fmt: skip
    return _delivery_view(row)


@router.post(
    "/deliveries/replay",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": ReplayBody.model_json_schema()}}}},
)  # fmt: skip
async def replay_deliveries(request: Request, token: Admin) -> dict[str, Any]:
    """Send dead deliveries again: ``{"ids": [...]}`` or ``{"destination_id": "crm"}``. They
    become pending, due now, with attempts from zero and a new retry window."""
    body: ReplayBody = await _body(request, ReplayBody)
    if (body.ids is None) == (body.destination_id is None):
        raise _invalid("ids or destination_id", "give exactly one of them")
    replayed = await run_in_threadpool(
        _store(request).replay, token.workspace_id, body.ids, body.destination_id
    )
    return {"replayed": replayed}
