"""The store on SQLAlchemy Core: one implementation for SQLite and PostgreSQL.

Calls are synchronous; the web layer runs them in a worker thread. The hot ingest path does
not come here per request: keys are cached by :class:`worldflow.collect.auth.KeyCache`, and
events are written by the log writer on its own connection.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from worldflow.store.schema import api_tokens, quarantine, sources, workspaces

SCOPES = frozenset({"ingest", "read", "admin"})
DEFAULT_WORKSPACE = "default"


class StoreError(Exception):
    """A store operation was refused; the message says why."""


class NotFoundError(StoreError, LookupError):
    """The record asked for does not exist in this workspace."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(24)}"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class SourceRef:
    workspace_id: str
    source_id: str
    world: str | None = None  # a world's key: its events and push channel are that world's


@dataclass(frozen=True, slots=True)
class TokenRef:
    workspace_id: str
    token_id: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """What the first start created; secrets are only known here, in clear, once."""

    workspace_id: str
    write_key: str | None
    admin_token: str | None


def create_store_engine(url: str, derived_only: bool = False) -> Engine:
    """An engine for the store. ``derived_only``: this engine writes only state that replay can
    rebuild from the log (the processor), so on SQLite its commits need not wait for fsync: a
    power cut loses at most its last commits, state and offset together, and it re-reads them."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Enough pooled connections for the threads that read at once (decisions, lookups):
        # an overflow connection is opened (file, pragmas) and closed again for each use.
        engine = sa.create_engine(
            url,
            pool_size=16,
            max_overflow=16,
            connect_args={"check_same_thread": False, "timeout": 30},
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: every commit is fsynced, so an acknowledged event survives power loss too.
            cursor.execute("PRAGMA synchronous=" + ("NORMAL" if derived_only else "FULL"))
            if derived_only:  # the log writer checkpoints the WAL on a thread of its own
                cursor.execute("PRAGMA wal_autocheckpoint=0")
                cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB: profile and identity pages
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    if derived_only:  # the same trade on PostgreSQL, for this engine's sessions only
        return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2,
                                connect_args={"options": "-c synchronous_commit=off"})  # fmt: skip
    return sa.create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)


class SqlStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_store_engine(url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ---------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent)."""
        ini = resources.files("worldflow.store") / "alembic.ini"
        with resources.as_file(ini) as ini_path:
            config = Config(str(ini_path))
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")

    # -- workspaces, sources, tokens ------------------------------------------------------

    def bootstrap(self, write_key: str = "", admin_token: str = "") -> Bootstrap:
        """Create the ``default`` workspace with one source and one admin token on first start.

        Given secrets (tests, scripts) are registered even when the workspace exists, so a
        restarted server keeps accepting them.
        """
        created_key: str | None = None
        created_token: str | None = None
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(workspaces.c.id).where(workspaces.c.id == DEFAULT_WORKSPACE)
            ).first()
            if not exists:
                conn.execute(
                    workspaces.insert().values(
                        id=DEFAULT_WORKSPACE, name="Default workspace", created_at_ms=now_ms()
                    )
                )
                created_key = write_key or new_secret("wk")
                created_token = admin_token or new_secret("wat")
                self._insert_source(conn, DEFAULT_WORKSPACE, "default", "http", created_key)
                self._insert_token(conn, DEFAULT_WORKSPACE, "bootstrap", SCOPES, created_token)
            else:
                if write_key and not self._has(conn, sources.c.write_key_hash, write_key):
                    self._insert_source(conn, DEFAULT_WORKSPACE, "from-env", "http", write_key)
                if admin_token and not self._has(conn, api_tokens.c.token_hash, admin_token):
                    self._insert_token(conn, DEFAULT_WORKSPACE, "from-env", SCOPES, admin_token)
        return Bootstrap(
            DEFAULT_WORKSPACE,
            created_key if created_key and not write_key else None,
            created_token if created_token and not admin_token else None,
        )

    @staticmethod
    def _has(conn: sa.Connection, column: sa.Column[str], secret: str) -> bool:
        return (
            conn.execute(sa.select(column).where(column == hash_secret(secret))).first() is not None
        )

    @staticmethod
    def _insert_source(
        conn: sa.Connection,
        workspace_id: str,
        name: str,
        kind: str,
        write_key: str,
        world: str | None = None,
    ) -> str:
        source_id = new_id("src")
        conn.execute(
            sources.insert().values(
                id=source_id,
                workspace_id=workspace_id,
                name=name,
                kind=kind,
                write_key_hash=hash_secret(write_key),
                created_at_ms=now_ms(),
                disabled=False,
                world=world,
            )
        )
        return source_id

    @staticmethod
    def _insert_token(
        conn: sa.Connection, workspace_id: str, name: str, scopes: frozenset[str], token: str
    ) -> str:
        unknown = set(scopes) - SCOPES
        if unknown:
            raise StoreError(
                f"scopes: unknown scope(s) {', '.join(sorted(unknown))}; "
                f"use {', '.join(sorted(SCOPES))}"
            )
        token_id = new_id("tok")
        conn.execute(
            api_tokens.insert().values(
                id=token_id,
                workspace_id=workspace_id,
                name=name,
                token_hash=hash_secret(token),
                scopes=" ".join(sorted(scopes)),
                created_at_ms=now_ms(),
            )
        )
        return token_id

    def create_source(self, workspace_id: str, name: str, kind: str = "http",
                      world: str | None = None) -> dict[str, Any]:  # fmt: skip
        write_key = new_secret("wk")
        with self.engine.begin() as conn:
            source_id = self._insert_source(conn, workspace_id, name, kind, write_key, world)
        return {"id": source_id, "name": name, "kind": kind, "world": world,
                "write_key": write_key}  # fmt: skip

    def settings(self, workspace_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            raw = conn.execute(
                sa.select(workspaces.c.settings).where(workspaces.c.id == workspace_id)
            ).scalar()
        value = json.loads(raw) if raw else {}
        return value if isinstance(value, dict) else {}

    def set_settings(self, workspace_id: str, settings: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(workspaces)
                .where(workspaces.c.id == workspace_id)
                .values(settings=json.dumps(settings, sort_keys=True))
            )

    def list_sources(self, workspace_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    sources.c.id,
                    sources.c.name,
                    sources.c.kind,
                    sources.c.created_at_ms,
                    sources.c.disabled,
                    sources.c.world,
                )
                .where(sources.c.workspace_id == workspace_id)
                .order_by(sources.c.created_at_ms, sources.c.id)
            )
            return [dict(row._mapping) for row in rows]

    def create_token(self, workspace_id: str, name: str, scopes: frozenset[str]) -> dict[str, Any]:
        token = new_secret("wat")
        with self.engine.begin() as conn:
            token_id = self._insert_token(conn, workspace_id, name, scopes, token)
        return {"id": token_id, "name": name, "scopes": sorted(scopes), "token": token}

    def revoke_token(self, workspace_id: str, token_id: str) -> None:
        with self.engine.begin() as conn:
            result = conn.execute(
                api_tokens.update()
                .where(api_tokens.c.id == token_id, api_tokens.c.workspace_id == workspace_id)
                .values(revoked_at_ms=now_ms())
            )
            if result.rowcount == 0:
                raise NotFoundError(f"token {token_id!r} does not exist in this workspace")

    def source_for_write_key(self, write_key: str) -> SourceRef | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(sources.c.workspace_id, sources.c.id, sources.c.world).where(
                    sources.c.write_key_hash == hash_secret(write_key),
                    sources.c.disabled.is_(False),
                )
            ).first()
        return SourceRef(row.workspace_id, row.id, row.world) if row else None

    def token(self, token: str) -> TokenRef | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(api_tokens.c.workspace_id, api_tokens.c.id, api_tokens.c.scopes).where(
                    api_tokens.c.token_hash == hash_secret(token),
                    api_tokens.c.revoked_at_ms.is_(None),
                )
            ).first()
        return TokenRef(row.workspace_id, row.id, frozenset(row.scopes.split())) if row else None

    # -- quarantine -----------------------------------------------------------------------

    def list_quarantine(
        self, workspace_id: str, after_id: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(quarantine)
                .where(quarantine.c.workspace_id == workspace_id, quarantine.c.id > after_id)
                .order_by(quarantine.c.id)
                .limit(limit)
            )
            out = []
            for row in rows:
                item = dict(row._mapping)
                item["errors"] = json.loads(item["errors"])
                payload: bytes = item.pop("payload")
                item["payload"] = payload.decode("utf-8", "replace")
                out.append(item)
            return out

    def count_quarantine(self, workspace_id: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(quarantine)
                    .where(quarantine.c.workspace_id == workspace_id)
                ).scalar_one()
            )
