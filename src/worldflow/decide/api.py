"""The decision API and the offers and placements it chooses among (docs/DECIDE.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec
from fastapi import APIRouter, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from worldflow.admin import Admin, Read, _services
from worldflow.collect.auth import credential_from_header
from worldflow.collect.body import read_body
from worldflow.collect.errors import ApiError
from worldflow.decide.definition import OFFER, PLACEMENT, validate_offer, validate_placement
from worldflow.decide.engine import Decision, Evidence, Person
from worldflow.events.segment import _path_of
from worldflow.segments.api import _document, _get, _invalid, _summary, store_and_activate
from worldflow.segments.definition import KEY, DefinitionError
from worldflow.services import Services

router = APIRouter(prefix="/v1", tags=["decide"])
KeyPath = Annotated[str, Path(pattern=KEY.pattern, description="the key")]
DEADLINE_S: Final = 0.05  # beyond it, the placement's fallback answers


class DecideRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """The body of ``POST /v1/decide``."""

    placement: Annotated[str, msgspec.Meta(pattern=f"^{KEY.pattern}$",
                                           description="the placement to fill")]  # fmt: skip
    anonymous_id: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    user_id: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    context: Annotated[dict[str, Any], msgspec.Meta(
        description="where the person is: world, zone, …")] = {}  # fmt: skip


_decode_request = msgspec.json.Decoder(DecideRequest).decode
MAX_BODY_BYTES: Final = 64 * 1024
_DECIDE_DOC: Final = {
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": msgspec.json.schema_components([DecideRequest])[1]["DecideRequest"]}}},
    "security": [{"writeKeyBasic": []}],
}  # fmt: skip


def decide_request(raw: bytes) -> DecideRequest:
    """The request, or a 400/422 naming what is wrong with it."""
    try:
        return _decode_request(raw)
    except msgspec.ValidationError as exc:
        problem = _path_of(exc, "")
        raise ApiError(422, "invalid_field", f"{problem.field}: {problem.message}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"body: not valid JSON: {exc}") from None


@router.post("/decide", openapi_extra=_DECIDE_DOC,
             responses={200: {"description": "the decision"}})  # fmt: skip
async def decide(request: Request) -> Response:
    """What a placement shows this person now: ``{decision_id, placement, offer, content,
    strategy, fallback}``. Authenticated with a write key (HTTP Basic or Bearer), as events
    are. The answer never waits for the log; a failing store, or PostgreSQL slower than
    50 ms, answers with the placement's fallback."""
    # The body is read and answered without the framework's models: on this path they cost
    # about 30 µs a request, against 48 µs for deciding itself (in-process).
    started = time.perf_counter()
    svc = _services(request)
    source = await svc.auth.source(credential_from_header(request.headers.get("authorization")))
    body = decide_request(await read_body(request, MAX_BODY_BYTES))
    if not body.anonymous_id and not body.user_id:
        raise ApiError(400, "invalid_body", "anonymousId or userId: one is required")
    decision = await serve_decision(svc, source.workspace_id, source.source_id, body.placement,
                                    body.user_id, body.anonymous_id, body.context,
                                    started)  # fmt: skip
    if decision is None:
        raise ApiError(404, "placement_not_found", f"placement: no placement {body.placement!r} "
                       "is active in this workspace")  # fmt: skip
    return Response(msgspec.json.encode(decision.body()), media_type="application/json")


async def serve_decision(svc: Services, workspace_id: str, source_id: str, placement_key: str,
                         user_id: str | None, anonymous_id: str | None,
                         context: dict[str, Any],
                         started: float | None = None) -> Decision | None:  # fmt: skip
    """A decision for one person (POST /v1/decide, the push channel's ``decide`` frames and
    journeys' pushed decisions), logged as ``decision.served`` without waiting for the log;
    None when the placement is not active in the workspace. A failing store, or PostgreSQL
    slower than 50 ms, gives the placement's fallback."""
    started = time.perf_counter() if started is None else started
    decider = svc.decider
    catalog = decider.cached_catalog(workspace_id)
    if catalog is None:
        catalog = await run_in_threadpool(decider.catalog, workspace_id)
    placement = catalog.placements.get(placement_key)
    if placement is None:
        return None
    offers = catalog.offers.get(placement.key, [])
    who = user_id or anonymous_id or ""
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)

    def read() -> tuple[Person | None, Evidence | None]:
        profile = decider.person(workspace_id, user_id, anonymous_id)
        bandit = placement.strategy == "bandit" and len(offers) > 1
        return profile, decider.evidence(workspace_id, placement.key) if bandit else None

    def work() -> Decision:
        profile = decider.person(workspace_id, user_id, anonymous_id)
        return decider.choose(workspace_id, placement, offers, profile, who, now_ms)

    try:
        if placement.strategy == "recommend":  # its model is asked on the thread too
            decision = await asyncio.wait_for(run_in_threadpool(work), DEADLINE_S)
        else:
            if decider.local_store:
                # SQLite in WAL mode: a read of a local file that never waits for the writer,
                # cheaper on the event loop than the hop to a thread and back (on a busy
                # worker the hop queued behind the interpreter's lock).
                profile, evidence = read()
            else:
                # Only the reads wait on a thread: choosing is a fraction of a millisecond
                # of CPU, which on a busy thread pool would queue behind the interpreter's
                # lock.
                profile, evidence = await asyncio.wait_for(run_in_threadpool(read),
                                                           DEADLINE_S)  # fmt: skip
            decision = decider.choose(workspace_id, placement, offers, profile, who, now_ms,
                                      evidence)  # fmt: skip
    except Exception:  # a failing or slow store: the fallback always answers
        svc.metrics.decisions.labels("fallback_error").inc()
        decision = decider.fallback(placement)
    if decision.offer is not None:
        decider.remember(workspace_id, who, decision.offer, now_ms)
    context = dict(context)
    world = context.get("world")
    if isinstance(world, str):
        context["world"] = {"id": world}
    latency_ms = (time.perf_counter() - started) * 1000
    svc.decision_log.add(decider.served_event(workspace_id, source_id, decision, user_id,
                                              anonymous_id, context, latency_ms,
                                              now))  # fmt: skip
    svc.metrics.decisions.labels(decision.strategy).inc()
    return decision


@router.put("/offers/{key}")
async def put_offer(request: Request, token: Admin, key: KeyPath) -> dict[str, Any]:
    """Apply an offer (JSON or YAML): content, placements, eligibility, validity, caps."""
    return await _apply(request, token.workspace_id, validate_offer, key)


@router.put("/placements/{key}")
async def put_placement(request: Request, token: Admin, key: KeyPath) -> dict[str, Any]:
    """Apply a placement (JSON or YAML): its type, strategy and fallback."""
    return await _apply(request, token.workspace_id, validate_placement, key)


Check = Callable[[Any, str], dict[str, Any]]


async def _apply(request: Request, workspace_id: str, check: Check, key: str) -> dict[str, Any]:
    try:
        document = check(await _document(request), key)
    except DefinitionError as exc:
        raise _invalid(exc) from None
    return await store_and_activate(_services(request), workspace_id, document)


@router.get("/offers")
async def list_offers(request: Request, token: Read) -> dict[str, Any]:
    rows = await run_in_threadpool(_services(request).definitions.latest, token.workspace_id,
                                   OFFER)  # fmt: skip
    return {"offers": [_summary(r) for r in rows]}


@router.get("/placements")
async def list_placements(request: Request, token: Read) -> dict[str, Any]:
    rows = await run_in_threadpool(_services(request).definitions.latest, token.workspace_id,
                                   PLACEMENT)  # fmt: skip
    return {"placements": [_summary(r) for r in rows]}


@router.get("/offers/{key}")
async def get_offer(request: Request, token: Read, key: KeyPath) -> dict[str, Any]:
    return await _get(request, token.workspace_id, OFFER, key)


@router.get("/placements/{key}")
async def get_placement(request: Request, token: Read, key: KeyPath) -> dict[str, Any]:
    """A placement, with its bandit's evidence per arm and offer."""
    body = await _get(request, token.workspace_id, PLACEMENT, key)
    evidence = await run_in_threadpool(_services(request).decider.evidence, token.workspace_id,
                                       key)  # fmt: skip
    body["evidence"] = [{"arm": arm, "offer": offer, "impressions": shown,
                         "interactions": acted} for (arm, offer), (shown, acted)
                        in sorted(evidence.items())]  # fmt: skip
    return body
