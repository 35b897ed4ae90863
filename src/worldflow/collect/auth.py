"""Who is calling: write keys for ingestion (per source), bearer tokens for the admin API.

Write keys arrive the ways Segment-compatible libraries send them: HTTP Basic with the key as
user name (password empty or absent), a bearer token, or ``writeKey`` in the body. Lookups are
cached so the hot path does not query the store per request.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from worldflow.collect.errors import ApiError, unauthorized
from worldflow.store.sql import SourceRef, SqlStore, TokenRef


def credential_from_header(value: str | None) -> str | None:
    """The secret in an ``Authorization`` header (Basic user name, or Bearer token)."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer":
        return rest or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise unauthorized(
                "invalid_authorization", "Authorization: Basic credentials are not valid base64"
            ) from exc
        user, _, _password = decoded.partition(":")
        return user or None
    raise unauthorized(
        "invalid_authorization",
        f"Authorization: scheme {scheme!r} is not supported; use Basic (write key as user "
        "name) or Bearer",
    )


T = TypeVar("T")


class _TtlCache(Generic[T]):
    def __init__(self, ttl_s: float, negative_ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, T | None]] = {}

    async def get(self, key: str, load: Callable[[], Awaitable[T | None]]) -> T | None:
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = await load()
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # bounded: a flood of wrong keys cannot grow memory
        self._entries[key] = (now + (self.ttl_s if value else self.negative_ttl_s), value)
        return value

    def clear(self) -> None:
        self._entries.clear()


class Authenticator:
    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._sources = _TtlCache[SourceRef](ttl_s=60, negative_ttl_s=2)
        self._tokens = _TtlCache[TokenRef](ttl_s=10, negative_ttl_s=2)

    async def source(self, write_key: str | None) -> SourceRef:
        if not write_key:
            raise unauthorized(
                "missing_write_key",
                "no write key: send it as HTTP Basic user name (Authorization: Basic "
                "base64(<writeKey>:)) or as writeKey in the body",
            )
        ref = await self._sources.get(
            write_key, lambda: run_in_threadpool(self.store.source_for_write_key, write_key)
        )
        if ref is None:
            raise unauthorized("invalid_write_key", "the write key is not valid for any source")
        return ref

    async def token(self, conn: HTTPConnection, scope: str) -> TokenRef:
        header = conn.headers.get("authorization")
        if not header or not header.lower().startswith("bearer "):
            raise unauthorized(
                "missing_token", "admin API: send Authorization: Bearer <admin token>"
            )
        secret = header[7:].strip()
        ref = await self._tokens.get(secret, lambda: run_in_threadpool(self.store.token, secret))
        if ref is None:
            raise unauthorized("invalid_token", "the token is not valid or was revoked")
        if scope not in ref.scopes and "admin" not in ref.scopes:
            raise ApiError(
                403, "insufficient_scope", f"this call needs the {scope!r} scope on the token"
            )
        return ref

    def forget(self) -> None:
        self._sources.clear()
        self._tokens.clear()
