"""The admin API: sources and write keys, API tokens, the quarantine, reading the log."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from worldflow.actions.smtp import MASK, SmtpSettings
from worldflow.collect.errors import ApiError
from worldflow.identity.types import DEFAULT_TYPES
from worldflow.services import Services
from worldflow.store.sql import SCOPES, NotFoundError, StoreError, TokenRef

router = APIRouter(prefix="/v1", tags=["admin"])


def _services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def require(scope: str) -> Any:
    async def check(request: Request) -> TokenRef:
        return await _services(request).auth.token(request, scope)

    return Depends(check)


Read = Annotated[TokenRef, require("read")]
Admin = Annotated[TokenRef, require("admin")]


class NewSource(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(default="http", pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    world: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
        description="a world's key: its events are of this world (context.world.id), and "
        "its push channel (/v1/push) serves this world's people",
    )


class IdentityTypeChange(BaseModel):
    merge: bool | None = Field(default=None, description="may link two profiles into one")
    unique: bool | None = Field(default=None, description="a profile holds at most one value")
    priority: int | None = Field(default=None, ge=0, le=99, description="lower decides first")


class WorkspaceSettings(BaseModel):
    """What the processor reads of a workspace (it picks changes up within seconds; replay
    applies the settings of the day it runs)."""

    raw_telemetry: bool = Field(
        default=False, description="keep p3 pose/gaze sample batches (never joined to profiles)"
    )
    identity_types: dict[str, IdentityTypeChange] = Field(
        default_factory=dict, description=f"overrides of {', '.join(DEFAULT_TYPES)}"
    )
    smtp: SmtpSettings | None = Field(
        default=None,
        description="the mail server e-mail actions are sent with (the dispatcher reads it "
        f"within seconds). GET shows the password as {MASK!r}; a PUT that omits it or sends "
        f"{MASK!r} keeps the stored one, an empty string removes it",
    )

    def shown(self) -> dict[str, Any]:
        """As the API answers: the SMTP password masked."""
        out = self.model_dump(exclude_none=True, by_alias=True)
        if self.smtp is not None:
            out["smtp"] = self.smtp.shown()
        return out


class NewToken(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[str] = Field(min_length=1, description=f"any of {sorted(SCOPES)}")


@router.get("/settings")
async def get_settings(request: Request, token: Admin) -> dict[str, Any]:
    raw = await run_in_threadpool(_services(request).store.settings, token.workspace_id)
    return WorkspaceSettings.model_validate(raw).shown()


@router.put("/settings")
async def put_settings(request: Request, body: WorkspaceSettings, token: Admin) -> dict[str, Any]:
    """Replace the workspace's settings (an SMTP password omitted or sent back masked is
    kept)."""
    unknown = sorted(set(body.identity_types) - set(DEFAULT_TYPES))
    if unknown:
        message = (f"identity_types: unknown type(s) {', '.join(unknown)}; "
                   f"known: {', '.join(DEFAULT_TYPES)}")  # fmt: skip
        raise ApiError(422, "invalid_field", message)
    store = _services(request).store
    if body.smtp is not None:
        body.smtp = await _keep_password(body.smtp, store, token.workspace_id)
        problem = body.smtp.problem()
        if problem is not None:
            raise ApiError(422, "invalid_field", f"smtp.{problem[0]}: {problem[1]}")
    settings = body.model_dump(exclude_none=True, by_alias=True)
    await run_in_threadpool(store.set_settings, token.workspace_id, settings)
    return body.shown()


async def _keep_password(smtp: SmtpSettings, store: Any, workspace_id: str) -> SmtpSettings:
    """The stored password in place of an omitted or masked one; an empty one removes it."""
    if smtp.password == "":
        return smtp.model_copy(update={"password": None})
    if smtp.password is not None and smtp.password != MASK:
        return smtp
    raw = await run_in_threadpool(store.settings, workspace_id)
    stored = raw.get("smtp") if isinstance(raw.get("smtp"), dict) else None
    password = stored.get("password") if stored else None
    if smtp.password == MASK and not password:
        raise ApiError(422, "invalid_field",
                       f"smtp.password: {MASK!r} stands for the stored password, and none is "
                       "stored")  # fmt: skip
    return smtp.model_copy(update={"password": password})


@router.get("/sources")
async def list_sources(request: Request, token: Admin) -> dict[str, Any]:
    rows = await run_in_threadpool(_services(request).store.list_sources, token.workspace_id)
    return {"sources": rows}


@router.post("/sources", status_code=201)
async def create_source(request: Request, body: NewSource, token: Admin) -> dict[str, Any]:
    """Create a source; the answer holds its write key, shown this once."""
    return await run_in_threadpool(
        _services(request).store.create_source, token.workspace_id, body.name, body.kind,
        body.world,
    )  # fmt: skip


@router.post("/tokens", status_code=201)
async def create_token(request: Request, body: NewToken, token: Admin) -> dict[str, Any]:
    """Create an API token; the answer holds the token, shown this once."""
    try:
        return await run_in_threadpool(
            _services(request).store.create_token, token.workspace_id, body.name,
            frozenset(body.scopes),
        )  # fmt: skip
    except StoreError as exc:
        raise ApiError(422, "invalid_field", str(exc)) from exc


@router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(request: Request, token_id: str, token: Admin) -> None:
    svc = _services(request)
    try:
        await run_in_threadpool(svc.store.revoke_token, token.workspace_id, token_id)
    except NotFoundError as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    svc.auth.forget()


@router.get("/quarantine")
async def list_quarantine(
    request: Request,
    token: Read,
    after: Annotated[int, Query(ge=0, description="return entries with id > after")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Messages that were refused, with the reason per field; page with ``after``."""
    store = _services(request).store
    items = await run_in_threadpool(store.list_quarantine, token.workspace_id, after, limit)
    total = await run_in_threadpool(store.count_quarantine, token.workspace_id)
    return {"items": items, "total": total, "next_after": items[-1]["id"] if items else after}


@router.get("/log")
async def read_log(
    request: Request,
    token: Read,
    after: Annotated[int, Query(ge=0, description="return events with offset > after")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Events of this workspace in log order, as canonical events with their offsets."""
    svc = _services(request)
    entries = await run_in_threadpool(svc.log.read, after, limit, None, token.workspace_id)
    # The stored JSON goes out as it is, without decoding and re-encoding each event.
    events = [{"offset": e.offset, "event": msgspec.Raw(e.body)} for e in entries]
    next_after = entries[-1].offset if entries else after
    body = {"events": events, "next_after": next_after, "end_offset": svc.log.end_offset()}
    return Response(msgspec.json.encode(body), media_type="application/json")
