"""The segments and scores API: apply definitions, read their status, size and members,
preview a segment.

``PUT`` stores a new version (when the document changed) and appends its activation to the
log; the processor computes it over existing profiles from there (``status.state`` goes
``pending`` → ``backfilling`` → ``active``, with ``done`` of ``total`` profiles).
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from worldflow.admin import Admin, Read, _services
from worldflow.collect.errors import ApiError
from worldflow.identity.types import identity_types
from worldflow.log import LogEntry
from worldflow.log.sql import read_entries
from worldflow.profiles.api import _iso
from worldflow.segments import backfill
from worldflow.segments.definition import KEY, DefinitionError, compile_definition, validate
from worldflow.segments.incremental import Definitions
from worldflow.services import Services
from worldflow.store.definitions import definition_record

router = APIRouter(prefix="/v1", tags=["segments"])
KeyPath = Annotated[str, Path(pattern=KEY.pattern, description="the definition's key")]
MAX_DOCUMENT_BYTES = 256 * 1024


async def _document(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ApiError(413, "too_large", f"a definition is at most {MAX_DOCUMENT_BYTES} bytes")
    try:
        if "json" in request.headers.get("content-type", ""):
            return json.loads(body)
        return yaml.safe_load(body)  # YAML, which JSON is a subset of
    except (ValueError, yaml.YAMLError) as exc:
        raise ApiError(400, "invalid_body", f"body: not JSON or YAML ({exc})") from None


def _invalid(exc: DefinitionError) -> ApiError:
    return ApiError(422, "invalid_definition", str(exc))


async def _put(request: Request, workspace_id: str, kind: str, key: str) -> dict[str, Any]:
    svc = _services(request)
    try:
        document = validate(await _document(request), kind, key)
        # The segments and scores must still hold together (segments reading each other in a
        # cycle); journeys, offers and placements only read them.
        others = [compile_definition(d, v) for v, d in
                  await run_in_threadpool(svc.definitions.documents, workspace_id)
                  if d["kind"] in ("segment", "score")
                  and (d["kind"], d["key"]) != (kind, key)]  # fmt: skip
        Definitions(workspace_id, [*others, compile_definition(document, 0)])
    except DefinitionError as exc:
        raise _invalid(exc) from None
    return await store_and_activate(svc, workspace_id, document)


async def store_and_activate(svc: Services, workspace_id: str,
                             document: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Store a checked definition as its next version and, when it changed, append its
    activation to every partition of the log (the processor switches there)."""
    kind, key = document["kind"], document["key"]
    version, changed = await run_in_threadpool(svc.definitions.put, workspace_id, document)
    if changed:
        now = time.time_ns() // 1_000_000
        await svc.log.append([definition_record(workspace_id, kind, key, version, p, now)
                              for p in range(svc.ingestor.partitions)])  # fmt: skip
    return {"kind": kind, "key": key, "version": version, "changed": changed}


async def _get(request: Request, workspace_id: str, kind: str, key: str) -> dict[str, Any]:
    svc = _services(request)
    found = await run_in_threadpool(svc.definitions.get, workspace_id, kind, key)
    if found is None:
        raise ApiError(404, f"{kind}_not_found", f"no {kind} {key!r} in this workspace")
    body = _summary(found)
    body["versions"] = [{"version": v["version"], "created_at": _iso(v["created_at_ms"])}
                        for v in found["versions"]]  # fmt: skip
    body["active_version"] = found["active_version"]
    if kind == "segment":
        body["size"] = await run_in_threadpool(svc.definitions.size, workspace_id, key)
        history = await run_in_threadpool(svc.definitions.history, workspace_id, key)
        body["size_history"] = [{"at": _iso(p["minute"] * 60_000), "size": p["size"],
                                 "entered": p["entered"], "exited": p["exited"]}
                                for p in history]  # fmt: skip
    return body


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": row["kind"],
        "key": row["key"],
        "version": row["version"],
        "definition": row["document"],
        "status": {"state": row["state"], "done": row["done"], "total": row["total"],
                   "updated_at": _iso(row["updated_at_ms"])},
    }  # fmt: skip


@router.put("/segments/{key}")
async def put_segment(request: Request, token: Admin, key: KeyPath) -> dict[str, Any]:
    """Apply a segment definition (JSON or YAML body; docs/SEGMENTS.md)."""
    return await _put(request, token.workspace_id, "segment", key)


@router.put("/scores/{key}")
async def put_score(request: Request, token: Admin, key: KeyPath) -> dict[str, Any]:
    """Apply a score model (JSON or YAML body; docs/SEGMENTS.md)."""
    return await _put(request, token.workspace_id, "score", key)


@router.get("/segments")
async def list_segments(request: Request, token: Read) -> dict[str, Any]:
    svc = _services(request)
    rows = await run_in_threadpool(svc.definitions.latest, token.workspace_id, "segment")
    sizes = await run_in_threadpool(svc.definitions.sizes, token.workspace_id)
    return {"segments": [{**_summary(r), "size": sizes.get(r["key"], 0)} for r in rows]}


@router.get("/scores")
async def list_scores(request: Request, token: Read) -> dict[str, Any]:
    rows = await run_in_threadpool(_services(request).definitions.latest, token.workspace_id,
                                   "score")  # fmt: skip
    return {"scores": [_summary(r) for r in rows]}


@router.post("/segments/preview")
async def preview_segment(
    request: Request, token: Read, sample: Annotated[int, Query(ge=0, le=100)] = 10
) -> dict[str, Any]:
    """How many people a segment definition would hold now, without activating it: evaluated
    over every committed profile and, for behaviours no active segment counts yet, the log."""
    svc = _services(request)
    raw = await _document(request)
    if isinstance(raw, dict):
        raw.setdefault("key", "preview")  # a key is needed only to read its current members
    try:
        document = validate(raw, "segment", None)
    except DefinitionError as exc:
        raise _invalid(exc) from None
    if document["kind"] != "segment":
        raise ApiError(422, "invalid_definition", "kind: a preview takes a segment")
    started = time.perf_counter()
    result = await run_in_threadpool(_preview, svc, token.workspace_id, document, sample)
    result["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _preview(svc: Services, workspace_id: str, document: dict[str, Any],
             sample: int) -> dict[str, Any]:  # fmt: skip
    profiles, engine = svc.profiles, svc.store.engine
    states = profiles.processor_states()
    partitions = sorted(states) or [0]
    until = min((s.offset for s in states.values()), default=0)
    now = max((s.stream_time_ms for s in states.values()), default=0)
    types = identity_types(svc.store.settings(workspace_id).get("identity_types"))

    def history_of(todo: backfill.Change, _: Definitions) -> dict[str, list[backfill.Past]]:
        def read_log(after: int, limit: int) -> list[LogEntry]:
            return read_entries(engine, after, limit)

        return backfill.collect(
            read_log,
            until,
            partitions,
            workspace_id,
            todo.names,
            profiles.lookup_identities,
            types,
            svc.segment.catalogue,
        )

    def pages() -> Any:
        after = ""
        while ids := profiles.profile_ids(workspace_id, partitions, after, 2000):
            found = profiles.load_profiles(ids)
            yield [p for p in found.values() if not isinstance(p, str)]
            after = ids[-1]

    active = profiles.active_definitions(workspace_id)
    try:
        result = backfill.preview(document, workspace_id, active, history_of, pages(), now,
                                  sample)  # fmt: skip
    except DefinitionError as exc:
        raise _invalid(exc) from None
    result["as_of"] = _iso(now) if now else None
    return result


@router.get("/segments/{key}")
async def get_segment(request: Request, token: Read, key: KeyPath) -> dict[str, Any]:
    """A segment: its definition, versions, status, size now and size over time."""
    return await _get(request, token.workspace_id, "segment", key)


@router.get("/segments/{key}/members")
async def segment_members(
    request: Request,
    token: Read,
    key: KeyPath,
    after: Annotated[str, Query(max_length=40, description="profile ids after this one")] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Who is in a segment, by profile id, with when they entered."""
    rows = await run_in_threadpool(_services(request).definitions.members, token.workspace_id,
                                   key, after, limit)  # fmt: skip
    return {"members": [{"profile_id": pid, "since": _iso(since)} for pid, since in rows],
            "next_after": rows[-1][0] if rows else None}  # fmt: skip


@router.get("/scores/{key}")
async def get_score(request: Request, token: Read, key: KeyPath) -> dict[str, Any]:
    return await _get(request, token.workspace_id, "score", key)
