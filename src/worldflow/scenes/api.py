"""The scene registry API: register a scene file, list scenes, read a scene's entries and one
object.

``PUT /v1/scenes/{key}`` takes the file itself as the body: ``model/gltf+json``,
``model/gltf-binary`` or ``model/x3d+xml`` (another or no Content-Type: the first bytes tell).
Of a GLB only the header and the JSON chunk are kept in memory; the binary chunk is read past.
A new version replaces the scene's entries; this worker's ingestion sees them at once, other
workers within seconds (``scenes/enrich.py``).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from worldflow.admin import Admin, Read, _services
from worldflow.collect.errors import ApiError
from worldflow.profiles.api import _iso
from worldflow.scenes.gltf import GLB_MAGIC, glb_prefix_length
from worldflow.scenes.registry import SCENE_KEY, Scene, SceneError, parse_scene, sniff
from worldflow.store.scenes import SceneConflictError, SqlSceneStore

router = APIRouter(prefix="/v1", tags=["scenes"])
KeyPath = Annotated[str, Path(pattern=f"^{SCENE_KEY.pattern}$", description="the scene's key")]
WorldQuery = Annotated[
    str | None,
    Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$", description="the world it is a scene of"),
]

MAX_SCENE_BYTES: Final = 256 * 1024 * 1024  # a whole file; a GLB's binary chunk is not kept
MAX_DOCUMENT_BYTES: Final = 32 * 1024 * 1024  # what is kept: a .gltf, an X3D, a GLB's JSON
MEDIA_TYPES: Final = {
    "model/gltf+json": "gltf",
    "model/gltf-binary": "glb",
    "model/x3d+xml": "x3d",
}


def _store(request: Request) -> SqlSceneStore:
    return SqlSceneStore(_services(request).store.engine)


def _too_large(what: str, limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"{what} exceeds the limit of {limit} bytes "
                    f"({limit // (1024 * 1024)} MB)")  # fmt: skip


async def read_scene(request: Request) -> tuple[bytes, str, int]:
    """(what is kept of the body, its format, the body's size)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_SCENE_BYTES:
        raise _too_large(f"a scene file of {length} bytes", MAX_SCENE_BYTES)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(415, "unsupported_encoding",
                       f"Content-Encoding {encoding!r}: send scene files uncompressed")  # fmt: skip
    kept = bytearray()
    want = MAX_DOCUMENT_BYTES  # bytes to keep: all of a text file, a GLB's JSON chunk
    glb: bool | None = None
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_SCENE_BYTES:
            raise _too_large("a scene file", MAX_SCENE_BYTES)
        if len(kept) < want:
            kept += chunk[: want - len(kept)]
            if glb is None and (prefix := glb_prefix_length(bytes(kept[:20]))) is not None:
                glb = kept[:4] == GLB_MAGIC
                if glb:
                    if prefix > MAX_DOCUMENT_BYTES:
                        raise _too_large("a GLB's JSON chunk", MAX_DOCUMENT_BYTES)
                    want = prefix
                    del kept[want:]
        if not glb and size > MAX_DOCUMENT_BYTES:
            raise _too_large("a glTF JSON or X3D file", MAX_DOCUMENT_BYTES)
    data = bytes(kept)
    fmt = MEDIA_TYPES.get(media) or sniff(data)
    if fmt is None:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {media or 'missing'!r}, and the body is neither glTF (JSON "
                       "or GLB) nor X3D; send model/gltf+json, model/gltf-binary or "
                       "model/x3d+xml")  # fmt: skip
    return data, fmt, size


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in ("key", "version", "world", "format", "objects", "products",
                               "zones", "placements")}  # fmt: skip
    out["updated_at"] = _iso(row["updated_ms"])
    return out


@router.put("/scenes/{key}")
async def put_scene(request: Request, token: Admin, key: KeyPath,
                    world: WorldQuery = None) -> dict[str, Any]:  # fmt: skip
    """Register a scene file (glTF 2.0 JSON or GLB, X3D) as the scene's next version: its
    tagged nodes replace the scene's entries (docs/SCENES.md)."""
    data, fmt, size = await read_scene(request)
    try:
        scene: Scene = await run_in_threadpool(parse_scene, data, key, fmt,
                                               size if fmt == "glb" else None)  # fmt: skip
    except SceneError as exc:
        raise ApiError(422, "invalid_scene", str(exc)) from None
    now = time.time_ns() // 1_000_000
    try:
        result = await run_in_threadpool(_store(request).put, token.workspace_id, scene, world,
                                         now)  # fmt: skip
    except SceneConflictError as exc:
        raise ApiError(409, "object_id_conflict", str(exc)) from None
    objects = _services(request).ingestor.objects
    if objects is not None and result.changed:
        objects.invalidate(token.workspace_id)
    return {"key": key, "version": result.version, "changed": result.changed, "world": world,
            "format": fmt, **scene.counts(), "added": result.added,
            "removed": result.removed}  # fmt: skip


@router.get("/scenes")
async def list_scenes(request: Request, token: Read) -> dict[str, Any]:
    """Every registered scene, with its entries counted by kind."""
    rows = await run_in_threadpool(_store(request).list_scenes, token.workspace_id)
    return {"scenes": [_summary(r) for r in rows]}


@router.get("/scenes/{key}")
async def get_scene(request: Request, token: Read, key: KeyPath) -> dict[str, Any]:
    """A scene and its entries (objects, products, zones, placements), by node path."""
    found = await run_in_threadpool(_store(request).get_scene, token.workspace_id, key)
    if found is None:
        raise ApiError(404, "scene_not_found", f"no scene {key!r} in this workspace")
    return {**_summary(found), "entries": found["entries"]}


@router.delete("/scenes/{key}", status_code=204)
async def delete_scene(request: Request, token: Admin, key: KeyPath) -> Response:
    """Remove a scene and its entries."""
    if not await run_in_threadpool(_store(request).delete, token.workspace_id, key):
        raise ApiError(404, "scene_not_found", f"no scene {key!r} in this workspace")
    objects = _services(request).ingestor.objects
    if objects is not None:
        objects.invalidate(token.workspace_id)
    return Response(status_code=204)


@router.get("/objects/{object_id:path}")
async def get_object(request: Request, token: Read, object_id: str) -> dict[str, Any]:
    """One registered object, product, zone or placement, with its scene."""
    found = await run_in_threadpool(_store(request).get_object, token.workspace_id, object_id)
    if found is None:
        raise ApiError(404, "object_not_found", f"no object {object_id!r} in this workspace's "
                       "scene registry")  # fmt: skip
    return found
