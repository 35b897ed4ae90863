"""The profile API: look a person up by any identity, by id, or by a trait.

Reads committed state: an event is visible here once the processor has committed the
micro-batch that applied it (see ``GET /v1/processor`` for how far it is).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from worldflow.admin import Read, _services
from worldflow.collect.errors import ApiError
from worldflow.identity.types import DEFAULT_TYPES
from worldflow.journeys.definition import HIDDEN
from worldflow.profiles.model import Profile
from worldflow.segments.definition import ScoreModel, compile_definition
from worldflow.segments.state import score_value
from worldflow.services import Services

router = APIRouter(prefix="/v1", tags=["profiles"])

_TIME_KEYS = frozenset({"first_seen", "last_seen", "last", "at", "started"})


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")  # fmt: skip


def _times(value: Any) -> Any:
    """Millisecond times become ISO 8601 strings for readers."""
    if isinstance(value, dict):
        return {k: _iso(v) if k in _TIME_KEYS and isinstance(v, int) else _times(v)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, list):
        return [_times(v) for v in value]
    return value


def score_models(svc: Services, workspace_id: str) -> dict[str, ScoreModel]:
    """The workspace's active score models (a profile's scores are read through them)."""
    models = {}
    for version, document in svc.profiles.active_definitions(workspace_id):
        if document.get("kind") == "score":
            model = compile_definition(document, version)
            assert isinstance(model, ScoreModel)
            models[model.key] = model
    return models


def profile_json(profile: Profile, models: dict[str, ScoreModel] | None = None) -> dict[str, Any]:
    """A profile for readers; scores are decayed to now by their ``models``."""
    now = time.time_ns() // 1_000_000
    data = msgspec.to_builtins(
        {"consent": profile.consent, "worlds": profile.worlds, "sessions": profile.sessions}
    )
    return {
        "id": profile.id,
        "traits": profile.traits,
        "identities": profile.identities,
        "consent": _times(data.get("consent", {})),
        "stats": {
            "first_seen": _iso(profile.first_seen),
            "last_seen": _iso(profile.last_seen),
            "counters": profile.counters,
            "worlds": _times(data.get("worlds", {})),
            "open_sessions": _times(list(data.get("sessions", {}).values())),
        },
        "recent_events": [  # newest first
            _times(
                {
                    **{f: getattr(r, f) for f in r.__struct_fields__ if getattr(r, f) is not None},
                    "properties": r.decoded_properties(),
                }
            )
            for r in reversed(profile.recent)
        ],
        "merged_from": profile.merged_from,
        "segments": {key: _iso(since) for key, since in profile.segments.items()
                     if not key.startswith(HIDDEN)},  # journeys' conditions stay inside
        "journeys": {key: {"step": run.step_id if run.step >= 0 else None,
                           "since": _iso(run.since), "entered": _iso(run.entered),
                           "runs": run.count, "outcome": run.outcome or None,
                           "ended": _iso(run.ended) if run.ended else None,
                           "waiting_until": _iso(run.wake) if run.wake else None}
                     for key, run in profile.journeys.items()},
        "scores": {key: round(score_value(value, (models or {})[key], now), 3)
                   for key, value in profile.scores.items() if key in (models or {})},
    }  # fmt: skip


async def _models(request: Request, workspace_id: str) -> dict[str, ScoreModel]:
    return await run_in_threadpool(score_models, _services(request), workspace_id)


def _not_found(what: str) -> ApiError:
    return ApiError(404, "profile_not_found", f"no profile for {what} in this workspace")


@router.get("/profiles/by/{identity_type}/{value}")
async def profile_by_identity(
    request: Request,
    token: Read,
    identity_type: Annotated[str, Path(description=f"one of {', '.join(DEFAULT_TYPES)}")],
    value: Annotated[str, Path(max_length=200)],
) -> dict[str, Any]:
    """The profile an identity resolves to (an e-mail address may be given in clear: it is
    hashed before the lookup)."""
    if identity_type not in DEFAULT_TYPES:
        raise ApiError(400, "unknown_identity_type", f"identity_type: {identity_type!r} is not "
                       f"one of {', '.join(DEFAULT_TYPES)}")  # fmt: skip
    store = _services(request).profiles
    profile = await run_in_threadpool(
        store.profile_by_identity, token.workspace_id, identity_type, value
    )
    if profile is None:
        raise _not_found(f"{identity_type} {value!r}")
    return profile_json(profile, await _models(request, token.workspace_id))


@router.get("/profiles/{profile_id}")
async def profile_by_id(
    request: Request, token: Read, profile_id: Annotated[str, Path(max_length=40)]
) -> dict[str, Any]:
    """A profile by id; the id of a profile merged into another gives the survivor."""
    store = _services(request).profiles
    profile = await run_in_threadpool(store.profile, token.workspace_id, profile_id)
    if profile is None:
        raise _not_found(f"id {profile_id!r}")
    body = profile_json(profile, await _models(request, token.workspace_id))
    body["merges"] = await run_in_threadpool(store.merges, token.workspace_id, profile.id)
    return body


@router.get("/profiles")
async def search_profiles(
    request: Request,
    token: Read,
    trait: Annotated[str, Query(min_length=1, max_length=64, description="trait name")],
    value: Annotated[str, Query(max_length=500, description="value, compared as text")],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Profiles whose trait equals a value, most recently seen first."""
    store = _services(request).profiles
    try:
        found = await run_in_threadpool(store.search, token.workspace_id, trait, value, limit)
    except ValueError as exc:
        raise ApiError(400, "invalid_trait", str(exc)) from exc
    models = await _models(request, token.workspace_id)
    return {"profiles": [profile_json(p, models) for p in found]}


@router.get("/processor")
async def processor_status(request: Request, token: Read) -> dict[str, Any]:
    """How far the processor is in the log, what it counted, how many profiles there are."""
    svc = _services(request)
    states = await run_in_threadpool(svc.profiles.processor_states)
    counts = await run_in_threadpool(svc.profiles.counts, token.workspace_id)
    end = await run_in_threadpool(svc.profiles.log_end)
    return {
        "log_end_offset": end,
        "partitions": {
            str(p): {
                "offset": s.offset,
                "lag": max(0, end - s.offset),
                "stream_time": _iso(s.stream_time_ms) if s.stream_time_ms else None,
                "counters": s.counters,
            }
            for p, s in states.items()
        },
        **counts,
    }
